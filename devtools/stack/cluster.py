"""The cluster stack: three Cassandra 5.0 nodes and three Kafka brokers on 127.0.0.11-13.

Beside the single-node stack, not instead of it: its data lives in `<repo>/.stack-cluster/`
(one folder per node: cassandra-1..3, kafka-1..3; `tls/` for the certificates), and every
node listens on its own loopback address, so both stacks can run at once.

    Cassandra  dc1, a rack per node; CQL on <address>:9042 over TLS only, storage on :7000;
               system_auth, system_distributed and system_traces at {'dc1': 3}
    Kafka      KRaft, each broker also a voter of the three-controller quorum (:9093);
               clients on PLAINTEXT :9092 (no login) or SASL_SSL :9094 (the secure
               stack's Kafka login); brokers replicate over their own listener (:9091);
               topics, and the internal ones, with 3 replicas and min.insync.replicas=2

`up` starts what is not running and returns once the whole cluster is healthy (`healthy`);
a restarted node keeps its data, so the same call restores a cluster after a node was
killed. The pipeline is pointed at it with the variables in CLUSTER_DEFAULTS (docs/deploying.md).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from programuser_dagster.settings import DEAD_LETTER_MAX_MESSAGE_BYTES, Settings

from . import launcher
from .launcher import (
    CASSANDRA_SUPERUSER,
    SECURE_DEFAULTS,
    Echo,
    StackError,
    cassandra_cluster,
    cassandra_java,
    check_ports_free,
    ensure_cassandra_role,
    ensure_libs,
    ensure_schema,
    ensure_topics,
    find_java17,
    kafka_java,
    log_file,
    stack_lock,
)
from .tls import Tls, ensure_tls

ADDRESSES: tuple[str, ...] = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
DATA_CENTRE = "dc1"
REPLICATION = f"{{'class': 'NetworkTopologyStrategy', '{DATA_CENTRE}': 3}}"
CQL_PORT = 9042
STORAGE_PORT = 7000
KAFKA_PORT = 9092  # PLAINTEXT, no login
KAFKA_TLS_PORT = 9094  # SASL_SSL
KAFKA_CONTROLLER_PORT = 9093
KAFKA_REPLICATION_PORT = 9091
# Six JVMs and the pipeline share 2 cores and 24 GB: a node measured ~1.6 GB RSS with a 1 GB
# heap, a broker ~0.75 GB with 512 MB.
CASSANDRA_HEAP = "768m"
KAFKA_HEAP = "384m"
# One token per node, evenly spaced over Murmur3's range: a fresh ring forms in one go.
TOKENS: tuple[int, ...] = tuple(-(2**63) + i * (2**64 // 3) for i in range(3))
DEFAULT_TIMEOUT = 600.0  # three nodes booting at once on 2 cores take minutes, not seconds
_SYSTEM_KEYSPACES = ("system_auth", "system_distributed", "system_traces")
_CANARY_KEYSPACE = "programuser_stack"

PLAINTEXT_BOOTSTRAP = ",".join(f"{a}:{KAFKA_PORT}" for a in ADDRESSES)
TLS_BOOTSTRAP = ",".join(f"{a}:{KAFKA_TLS_PORT}" for a in ADDRESSES)


def cluster_dir() -> Path:
    return launcher.repo_root() / ".stack-cluster"


def tls_dir() -> Path:
    return cluster_dir() / "tls"


# The pipeline's settings for the cluster (its CA is made by the first `up`); variables
# already set win. TLS_DEFAULTS moves Kafka to the SASL_SSL listener.
CLUSTER_DEFAULTS: dict[str, str] = {
    "PROGRAMUSER_STACK_DIR": str(cluster_dir()),
    "KAFKA_BOOTSTRAP_SERVERS": PLAINTEXT_BOOTSTRAP,
    "CASSANDRA_HOSTS": ",".join(ADDRESSES),
    "CASSANDRA_PORT": str(CQL_PORT),
    "CASSANDRA_LOCAL_DC": DATA_CENTRE,
    "CASSANDRA_REPLICATION": REPLICATION,
    "CASSANDRA_SSL_CA": str(tls_dir() / "ca.pem"),
}
TLS_DEFAULTS: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": TLS_BOOTSTRAP,
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "PLAIN",
    "KAFKA_SASL_USERNAME": SECURE_DEFAULTS["KAFKA_SASL_USERNAME"],
    "KAFKA_SASL_PASSWORD": SECURE_DEFAULTS["KAFKA_SASL_PASSWORD"],
    "KAFKA_SSL_CA_LOCATION": str(tls_dir() / "ca.pem"),
}


def cluster_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings the environment gives, with the cluster's defaults where unset."""
    env = dict(os.environ if environ is None else environ)
    apply_cluster_defaults(env)
    return Settings.from_env(env)


def apply_cluster_defaults(
    environ: MutableMapping[str, str] = os.environ, *, tls: bool = False
) -> None:
    for name, value in {**CLUSTER_DEFAULTS, **(TLS_DEFAULTS if tls else {})}.items():
        environ.setdefault(name, value)


@dataclass(frozen=True)
class Node:
    server: str  # "kafka" or "cassandra"
    number: int  # 1..3

    @property
    def name(self) -> str:
        return f"{self.server}-{self.number}"

    @property
    def address(self) -> str:
        return ADDRESSES[self.number - 1]

    @property
    def port(self) -> int:
        return KAFKA_PORT if self.server == "kafka" else CQL_PORT


KAFKA_NODES: tuple[Node, ...] = tuple(Node("kafka", n) for n in (1, 2, 3))
CASSANDRA_NODES: tuple[Node, ...] = tuple(Node("cassandra", n) for n in (1, 2, 3))
NODES: tuple[Node, ...] = KAFKA_NODES + CASSANDRA_NODES


def node(name: str) -> Node:
    for n in NODES:
        if n.name == name:
            return n
    raise StackError(f"unknown node {name!r}: choose from {', '.join(n.name for n in NODES)}")


def pid(n: Node) -> int | None:
    """The node's running java process, or None."""
    return launcher._running_pid(n.name)


def cgroup_root() -> Path | None:
    """Where cgroup v2 is mounted, or None (then nodes run in the caller's group)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    return None


def node_cgroup_path(n: Node) -> Path | None:
    """Where the node's own cgroup v2 group goes: inside this process's group, so the limits
    it runs under still apply (nothing is made)."""
    root = cgroup_root()
    if root is None:
        return None
    own = "/"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:] or "/"
    return root / own.lstrip("/") / f"programuser-{n.name}"


def node_cgroup(n: Node) -> Path | None:
    """The node's own group, made if missing; None where there is none or a process cannot
    join it. A fault test drops a node's traffic by the group its sockets belong to (nftables
    `socket cgroupv2`), since a node's outgoing connections leave from 127.0.0.1, not its
    address."""
    group = node_cgroup_path(n)
    if group is None:
        return None
    try:
        group.mkdir(exist_ok=True)
    except OSError:
        return None
    # Joining can be refused (cgroup v2 keeps processes out of groups with controllers on).
    probe = subprocess.run(["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs"', str(group)],
                           capture_output=True, check=False)
    return group if probe.returncode == 0 else None


def _remove_cgroup(n: Node) -> None:
    group = node_cgroup_path(n)
    if group is not None:
        with contextlib.suppress(OSError):
            group.rmdir()  # only an empty group goes: a node running there keeps it


_DIR_LOCK = threading.Lock()
_dir_users: list[str | None] = []  # the value to restore, while any block is inside


@contextlib.contextmanager
def _in_cluster_dir() -> Iterator[None]:
    """The launcher's per-server helpers (pid files, logs, locks) work on this stack's dir
    (always .stack-cluster) for the block; blocks may nest and run in several threads, and the
    variable is restored when the last one ends."""
    with _DIR_LOCK:
        if not _dir_users:
            saved = os.environ.get("PROGRAMUSER_STACK_DIR")
            os.environ["PROGRAMUSER_STACK_DIR"] = str(cluster_dir())
        else:
            saved = _dir_users[0]
        _dir_users.append(saved)
    try:
        yield
    finally:
        with _DIR_LOCK:
            _dir_users.pop()
            if not _dir_users:
                if saved is None:
                    os.environ.pop("PROGRAMUSER_STACK_DIR", None)
                else:
                    os.environ["PROGRAMUSER_STACK_DIR"] = saved


# ----------------------------------------------------------------------------- node configs


def _kafka_overrides(n: Node, tls: Tls, login: tuple[str, str]) -> str:
    """server.properties entries after the single-node template's (the last value wins)."""
    a = n.address
    voters = ",".join(f"{m.number}@{m.address}:{KAFKA_CONTROLLER_PORT}" for m in KAFKA_NODES)
    user, password = login
    jaas = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{user}="{password}";')
    store = "listener.name.sasl_ssl.ssl"
    return "\n".join([
        "",
        f"# {n.name} of the cluster stack (cluster.py).",
        f"node.id={n.number}",
        f"controller.quorum.voters={voters}",
        f"listeners=PLAINTEXT://{a}:{KAFKA_PORT},SASL_SSL://{a}:{KAFKA_TLS_PORT},"
        f"REPLICATION://{a}:{KAFKA_REPLICATION_PORT},CONTROLLER://{a}:{KAFKA_CONTROLLER_PORT}",
        f"advertised.listeners=PLAINTEXT://{a}:{KAFKA_PORT},SASL_SSL://{a}:{KAFKA_TLS_PORT},"
        f"REPLICATION://{a}:{KAFKA_REPLICATION_PORT}",
        "inter.broker.listener.name=REPLICATION",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,REPLICATION:PLAINTEXT,"
        "PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
        "listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}",
        f"{store}.keystore.type=PKCS12",
        f"{store}.keystore.location={tls.keystore(a)}",
        f"{store}.keystore.password={tls.password()}",
        f"{store}.key.password={tls.password()}",
        # Three copies, two in sync for a write: one broker may be down without a write lost
        # or refused.
        "default.replication.factor=3",
        "min.insync.replicas=2",
        "offsets.topic.replication.factor=3",
        "transaction.state.log.replication.factor=3",
        "transaction.state.log.min.isr=2",
        "share.coordinator.state.topic.replication.factor=3",
        "share.coordinator.state.topic.min.isr=2",
        "unclean.leader.election.enable=false",
        "",
    ])


def _node_dir(n: Node) -> Path:
    """The node's folder, its owner's only: its config holds the keystore's password."""
    directory = launcher._server_dir(n.name)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory


def _kafka_command(n: Node, tls: Tls, java_home: Path, lib: Path) -> list[str]:
    directory = _node_dir(n)
    props = directory / "server.properties"
    login = (os.environ.get("KAFKA_SASL_USERNAME") or SECURE_DEFAULTS["KAFKA_SASL_USERNAME"],
             os.environ.get("KAFKA_SASL_PASSWORD") or SECURE_DEFAULTS["KAFKA_SASL_PASSWORD"])
    launcher.check_identifier(login[0], "KAFKA_SASL_USERNAME")
    if any(c in login[1] for c in '"\\;'):
        raise StackError("KAFKA_SASL_PASSWORD must be free of quotes, backslashes and ';' for "
                         "the cluster's brokers.")
    props.write_text(
        launcher._render("kafka.properties", {
            "BROKER_PORT": KAFKA_PORT,
            "CONTROLLER_PORT": KAFKA_CONTROLLER_PORT,
            "LOG_DIRS": directory / "data",
            "MAX_MESSAGE_BYTES": DEAD_LETTER_MAX_MESSAGE_BYTES,
        })
        + _kafka_overrides(n, tls, login)
    )
    return kafka_java(n.name, props, java_home, lib, KAFKA_HEAP,
                      cluster_dir() / "kafka.cluster.id")


def _cassandra_extra(n: Node, tls: Tls) -> str:
    return "\n".join([
        f"initial_token: {TOKENS[n.number - 1]}",
        # Seeds never bootstrap: with every node a seed and its token set, the three start
        # together and the ring forms in one go.
        "auto_bootstrap: false",
        "client_encryption_options:",
        "  enabled: true",
        "  optional: false",  # a client without TLS is refused, never served in clear
        f"  keystore: {tls.keystore(n.address)}",
        f"  keystore_password: {tls.password()}",
        "  store_type: PKCS12",
        "  require_client_auth: false",
        "",
    ])


def _cassandra_command(n: Node, tls: Tls, java_home: Path, lib: Path) -> list[str]:
    directory = _node_dir(n)
    (directory / "cassandra-rackdc.properties").write_text(
        f"dc={DATA_CENTRE}\nrack=rack{n.number}\n")
    values = {
        "CLUSTER_NAME": "programuser-cluster",
        "ADDRESS": n.address,
        "SEEDS": ",".join(f"{a}:{STORAGE_PORT}" for a in ADDRESSES),
        "SNITCH": "GossipingPropertyFileSnitch",
        "STORAGE_PORT": STORAGE_PORT,
        "CQL_PORT": CQL_PORT,
        "EXTRA": _cassandra_extra(n, tls),
    }
    # The snitch reads its data centre and rack from the file this property names.
    return cassandra_java(n.name, values, java_home, lib, CASSANDRA_HEAP,
                          (f"-Dcassandra-rackdc.properties={directory.as_uri()}"
                           "/cassandra-rackdc.properties",))


# ----------------------------------------------------------------------------- health


def _cql(tls: Tls, *, only: str | None = None, superuser: bool = True,
         timeout: float = 10.0) -> Any:
    login = CASSANDRA_SUPERUSER if superuser else launcher.cassandra_credentials()
    return cassandra_cluster(ADDRESSES, CQL_PORT, timeout=timeout, credentials=login,
                             ssl_ca=tls.ca, only=only)


def _cassandra_node_problem(n: Node, tls: Tls) -> str | None:
    """None when the node answers CQL and sees the other two nodes up, else why not."""
    problem = launcher._cassandra_probe([n.address], CQL_PORT, ssl_ca=tls.ca, only=n.address)
    if problem:
        return problem
    cluster = _cql(tls, only=n.address)
    try:
        session = cluster.connect()
        peers = {str(r.peer) for r in session.execute("SELECT peer FROM system.peers_v2")}
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        cluster.shutdown()
    others = set(ADDRESSES) - {n.address}
    missing = others - peers
    return f"does not list {', '.join(sorted(missing))} in system.peers" if missing else None


def _kafka_problem(timeout: float = 5.0) -> str | None:
    """None when the three brokers are in the metadata and every partition (the internal
    topics' too) has all its replicas in sync, else why not."""
    from confluent_kafka import KafkaException

    try:
        md = launcher._kafka_admin(PLAINTEXT_BOOTSTRAP, {}).list_topics(timeout=timeout)
    except KafkaException as exc:
        return f"metadata request failed: {exc}"
    brokers = sorted(md.brokers)
    if brokers != [1, 2, 3]:
        return f"brokers {brokers} in the metadata, not [1, 2, 3]"
    for topic in md.topics.values():
        for p in topic.partitions.values():
            if p.leader < 0 or len(p.isrs) < len(p.replicas):
                return (f"{topic.topic}[{p.id}]: leader {p.leader}, in sync {sorted(p.isrs)} of "
                        f"{sorted(p.replicas)}")
    return None


def _canary(tls: Tls) -> str | None:
    """None when a write and a read at consistency ALL succeed with each node as coordinator
    (every replica up and answering, as every node sees it), else why not."""
    for address in ADDRESSES:
        problem = _canary_through(tls, address)
        if problem:
            return f"through {address}: {problem}"
    return None


def _canary_through(tls: Tls, address: str) -> str | None:
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    cluster = _cql(tls, only=address)
    try:
        session = cluster.connect()
        session.execute(f"CREATE KEYSPACE IF NOT EXISTS {_CANARY_KEYSPACE} WITH replication = "
                        f"{REPLICATION}", timeout=60)
        session.execute(f"CREATE TABLE IF NOT EXISTS {_CANARY_KEYSPACE}.canary "
                        "(k text PRIMARY KEY, at timestamp)", timeout=60)
        at = int(time.time() * 1000)
        session.execute(SimpleStatement(
            f"INSERT INTO {_CANARY_KEYSPACE}.canary (k, at) VALUES (%s, %s)",
            consistency_level=ConsistencyLevel.ALL), (address, at))
        row = session.execute(SimpleStatement(
            f"SELECT at FROM {_CANARY_KEYSPACE}.canary WHERE k = %s",
            consistency_level=ConsistencyLevel.ALL), (address,)).one()
        if row is None:
            return "the canary row written at ALL was not read back"
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        cluster.shutdown()


def _replicate_system_keyspaces(tls: Tls) -> None:
    """{'dc1': 3} for the keyspaces logins and repairs read, before any role is made: with
    one replica, a login fails whenever that node is down."""
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    cluster = _cql(tls, timeout=60.0)
    try:
        session = cluster.connect()
        for keyspace in _SYSTEM_KEYSPACES:
            session.execute(f"ALTER KEYSPACE {keyspace} WITH replication = {REPLICATION}",
                            timeout=60)
        # The default superuser was written when its keyspace had one replica: a read at ALL
        # repairs its row onto the two new replicas (QUORUM logins then find it anywhere).
        session.execute(SimpleStatement("SELECT * FROM system_auth.roles",
                                        consistency_level=ConsistencyLevel.ALL), timeout=60)
    finally:
        cluster.shutdown()


def _wait(what: str, problem: Callable[[], str | None], deadline: float,
          dead: Callable[[], str | None] = lambda: None) -> None:
    """Poll `problem` until it returns None; fail after the deadline, or when `dead` names a
    node that exited."""
    last = "not checked yet"
    while True:
        gone = dead()
        if gone:
            raise StackError(f"{gone} exited while waiting for {what}. Last lines of "
                             f"{log_file(gone)}:\n{launcher._tail(log_file(gone))}")
        last = problem() or ""
        if not last:
            return
        if time.monotonic() > deadline:
            raise StackError(f"timed out waiting for {what} (last: {last}); the nodes are left "
                             "running: see `stack status --cluster`, stop them with "
                             "`stack down --cluster`.")
        time.sleep(1.0)


def _first_dead(nodes: Sequence[Node]) -> str | None:
    for n in nodes:
        if pid(n) is None:
            return n.name
    return None


# ----------------------------------------------------------------------------- up/down/status


def up(
    settings: Settings | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    echo: Echo = launcher._quiet,
    temporary: bool = False,
    adopt: bool = True,
) -> list[str]:
    """Start the nodes that are not running and wait until the cluster is healthy; return the
    nodes started. Creates the settings' topics (3 replicas) and keyspace ({'dc1': 3}).

    Healthy: every Cassandra node answers CQL over TLS and lists the other two as peers, a
    write and a read at ALL succeed, the three brokers are in the metadata and every
    partition has all its replicas in sync. `temporary` marks the nodes it starts as a test
    session's; a plain `up` adopts every running node (clears the mark), as in the single-node
    stack, unless `adopt` is False. A node restarted keeps the mark it had.
    """
    with _in_cluster_dir(), stack_lock():
        t0 = time.monotonic()
        deadline = t0 + timeout
        tls = ensure_tls(tls_dir(), ADDRESSES)
        settings = settings or cluster_settings()
        java_home = find_java17()
        libs = {server: ensure_libs(server, echo) for server in ("kafka", "cassandra")}
        started: list[str] = []
        for n in NODES:
            if pid(n) is None:
                spawned = _start(n, tls, java_home, libs[n.server], temporary)
                started.append(n.name)
                echo(f"{n.name}: started (pid {spawned}) on {n.address}")
            elif adopt and not temporary:
                launcher._temporary_marker(n.name).unlink(missing_ok=True)
        _ready(settings, tls, deadline, echo, t0)
        return started


def _start(n: Node, tls: Tls, java_home: Path, lib: Path, temporary: bool = False) -> int:
    """Spawn a node that is not running, with its data; it keeps a test session's mark."""
    marker = launcher._temporary_marker(n.name)
    was_temporary = marker.exists()
    launcher._pid_file(n.name).unlink(missing_ok=True)
    check_ports_free(n.name, _ports(n), n.address)
    build = _kafka_command if n.server == "kafka" else _cassandra_command
    spawned = launcher._spawn(n.name, build(n, tls, java_home, lib), java_home, node_cgroup(n))
    if temporary or was_temporary:
        marker.touch()
    return spawned


def start_node(name: str, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Start one stopped node with its data and wait until it answers (CQL over TLS, or the
    broker's metadata); the rest of the cluster's health is not waited for. Returns its pid."""
    n = node(name)
    with _in_cluster_dir(), stack_lock():
        running = pid(n)
        if running is None:
            running = _start(n, Tls(tls_dir()), find_java17(), ensure_libs(n.server))
        if n.server == "kafka":
            probe = functools.partial(launcher._kafka_probe, f"{n.address}:{KAFKA_PORT}", 5.0, {})
        else:
            probe = functools.partial(launcher._cassandra_probe, [n.address], CQL_PORT, 5.0,
                                      ssl_ca=tls_dir() / "ca.pem", only=n.address)
        launcher._wait_until_answering(n.name, running, n.address, probe, timeout)
        return running


def restart_node(name: str, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Stop a node gracefully (SIGTERM) and start it again with its data, keeping a test
    session's mark; returns its new pid once it answers (a rolling restart's step)."""
    n = node(name)
    with _in_cluster_dir(), stack_lock():
        marker = launcher._temporary_marker(n.name)
        marked = marker.exists()
        down(only=[name])
        if marked:
            marker.touch()
        return start_node(name, timeout)


def leader(topic: str, partition: int) -> Node:
    """The broker leading a partition now."""
    md = launcher._kafka_admin(PLAINTEXT_BOOTSTRAP, {}).list_topics(topic, timeout=10)
    leading = md.topics[topic].partitions[partition].leader
    if leading < 0:
        raise StackError(f"{topic}[{partition}] has no leader right now")
    return node(f"kafka-{leading}")


def _ports(n: Node) -> dict[str, int]:
    if n.server == "kafka":
        return {"Kafka PLAINTEXT": KAFKA_PORT, "Kafka SASL_SSL": KAFKA_TLS_PORT,
                "Kafka controller": KAFKA_CONTROLLER_PORT,
                "Kafka replication": KAFKA_REPLICATION_PORT}
    return {"Cassandra CQL": CQL_PORT, "Cassandra storage": STORAGE_PORT}


def _ready(settings: Settings, tls: Tls, deadline: float, echo: Echo, t0: float) -> None:
    def stage(text: str) -> None:
        echo(f"{text} ({time.monotonic() - t0:.1f} s)")

    def dead_kafka() -> str | None:
        return _first_dead(KAFKA_NODES)

    def dead_cassandra() -> str | None:
        return _first_dead(CASSANDRA_NODES)

    _wait("three Kafka brokers", lambda: launcher._kafka_probe(PLAINTEXT_BOOTSTRAP, 5.0, {})
          or _brokers_listed(), deadline, dead_kafka)
    stage("kafka: three brokers answering")
    n = settings.kafka_partitions
    topics = {settings.kafka_input_topic: n, settings.kafka_dlq_topic: n}
    ensure_topics(PLAINTEXT_BOOTSTRAP, topics, dead_letter={settings.kafka_dlq_topic},
                  correct=True, replicas=3, security={})
    _create_internal_topics(settings.kafka_input_topic)
    _wait("every Kafka partition in sync", _kafka_problem, deadline, dead_kafka)
    stage(f"kafka: topics {', '.join(topics)} ready ({n} partitions, 3 replicas), all in sync")
    for c in CASSANDRA_NODES:
        _wait(f"{c.name} to answer CQL and see its peers",
              lambda c=c: _cassandra_node_problem(c, tls), deadline, dead_cassandra)
        stage(f"{c.name}: answering on {c.address}:{CQL_PORT}, sees both peers")
    _replicate_system_keyspaces(tls)
    ensure_cassandra_role(ADDRESSES, CQL_PORT, ssl_ca=tls.ca)
    _wait("a write and a read at consistency ALL", lambda: _canary(tls), deadline,
          dead_cassandra)
    cluster = _cql(tls, superuser=False, timeout=60.0)
    try:
        ensure_schema(cluster.connect(), settings.cassandra_keyspace, settings.cassandra_table,
                      REPLICATION)
    finally:
        cluster.shutdown()
    stage(f"cassandra: table {settings.cassandra_keyspace}.{settings.cassandra_table} ready, "
          "canary written and read at ALL")


def _brokers_listed() -> str | None:
    md = launcher._kafka_admin(PLAINTEXT_BOOTSTRAP, {}).list_topics(timeout=5.0)
    return None if sorted(md.brokers) == [1, 2, 3] else f"brokers {sorted(md.brokers)}"


def _create_internal_topics(topic: str) -> None:
    """Kafka creates __consumer_offsets and __transaction_state on first use: make them now,
    so that "every partition in sync" covers them and the first run does not wait."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    quiet = logging.getLogger("programuser_dagster.stack.librdkafka")  # see _kafka_admin
    # A group's committed offsets are asked of its coordinator, which creates the offsets
    # topic. (The AdminClient's list_consumer_group_offsets crashed the process here.)
    consumer = Consumer({"bootstrap.servers": PLAINTEXT_BOOTSTRAP, "logger": quiet,
                         "group.id": "programuser-stack-canary", "enable.auto.commit": False})
    try:
        # NOT_COORDINATOR comes back at once while the new topic's coordinator loads: each
        # retry waits a second, so the brokers get 30 s at least (not 30 answers in a moment).
        for attempt in range(30):
            try:
                consumer.committed([TopicPartition(topic, 0)], timeout=10)
                break
            except KafkaException as exc:
                if attempt == 29:
                    raise StackError(
                        f"the brokers did not set up the offsets topic: {exc}") from exc
                time.sleep(1)
    finally:
        consumer.close()
    producer = Producer({"bootstrap.servers": PLAINTEXT_BOOTSTRAP, "logger": quiet,
                         "transactional.id": "programuser-stack-canary"})
    try:
        producer.init_transactions(60)  # retries while the coordinator loads the new topic
    except KafkaException as exc:
        raise StackError(f"the brokers did not set up their transaction state: {exc}") from exc


def down(*, timeout: float = 60.0, echo: Echo = launcher._quiet,
         only: Sequence[str] | None = None) -> list[str]:
    """Stop the cluster's nodes (SIGTERM, SIGKILL after `timeout`); return those stopped."""
    with _in_cluster_dir(), stack_lock():
        chosen = list(NODES) if only is None else [node(name) for name in only]
        stopped = []
        for n in chosen:
            running = pid(n)
            if running is None:
                echo(f"{n.name}: not running")
                continue
            # A stopped (SIGSTOP) process cannot act on SIGTERM until it runs again.
            os.kill(running, signal.SIGCONT)
            os.kill(running, signal.SIGTERM)
            stopped.append((n, running))
        for n, running in stopped:
            end = time.monotonic() + timeout
            while launcher._is_ours(running, n.name) and time.monotonic() < end:
                time.sleep(0.2)
            if launcher._is_ours(running, n.name):
                echo(f"{n.name}: no exit {timeout:.0f} s after SIGTERM, sending SIGKILL")
                os.kill(running, signal.SIGKILL)
                while launcher._is_ours(running, n.name):
                    time.sleep(0.1)
            launcher._CHILDREN.pop(running, None)
            launcher._pid_file(n.name).unlink(missing_ok=True)
            launcher._temporary_marker(n.name).unlink(missing_ok=True)
            _remove_cgroup(n)
            echo(f"{n.name}: stopped (pid {running})")
        return [n.name for n, _ in stopped]


def temporary_nodes() -> list[str]:
    with _in_cluster_dir():
        return [n.name for n in NODES
                if launcher._temporary_marker(n.name).exists() and pid(n)]


def _process_state(running: int) -> str:
    """'running', or what /proc says otherwise (a SIGSTOPped node is 'stopped')."""
    try:
        state = Path(f"/proc/{running}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
    return {"T": "stopped (SIGSTOP)", "t": "stopped", "Z": "exited"}.get(state, "running")


@dataclass(frozen=True)
class NodeStatus:
    name: str
    address: str
    pid: int | None
    state: str  # "answering", "NOT answering", "stopped (SIGSTOP)", "not running"
    log: Path


def status() -> list[NodeStatus]:
    """Each node's address, process and whether it answers a real request right now."""
    with _in_cluster_dir():
        tls = Tls(tls_dir())
        rows = []
        for n in NODES:
            running = pid(n)
            if running is None:
                state = "not running"
            elif (proc := _process_state(running)) != "running":
                state = proc
            elif n.server == "kafka":
                ok = launcher._kafka_probe(f"{n.address}:{KAFKA_PORT}", 3.0, {}) is None
                state = "answering" if ok else "NOT answering"
            else:
                ok = tls.ca.is_file() and launcher._cassandra_probe(
                    [n.address], CQL_PORT, 3.0, ssl_ca=tls.ca, only=n.address) is None
                state = "answering" if ok else "NOT answering"
            rows.append(NodeStatus(n.name, f"{n.address}:{n.port}", running, state,
                                   log_file(n.name)))
        return rows


def healthy(settings: Settings | None = None, timeout: float = DEFAULT_TIMEOUT,
            echo: Echo = launcher._quiet) -> None:
    """Wait until the running cluster is healthy again (as `up` defines it)."""
    with _in_cluster_dir():
        t0 = time.monotonic()
        _ready(settings or cluster_settings(), Tls(tls_dir()), t0 + timeout, echo, t0)


def signal_node(name: str, sig: signal.Signals) -> int:
    """Send `sig` to a running node; return its pid (fault tests: SIGKILL, SIGSTOP, SIGCONT)."""
    with _in_cluster_dir():
        running = pid(node(name))
        if running is None:
            raise StackError(f"{name} is not running")
        os.kill(running, sig)
        if sig == signal.SIGKILL:
            while launcher._is_ours(running, name):
                time.sleep(0.05)
            launcher._CHILDREN.pop(running, None)
        return running


def admin_session(superuser: bool = False, timeout: float = 30.0) -> Any:
    """A driver Cluster on the three nodes over TLS, as the application role by default."""
    return _cql(Tls(tls_dir()), superuser=superuser, timeout=timeout)
