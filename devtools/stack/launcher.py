"""Start, stop and inspect the local Kafka and Cassandra servers (real ones, from Maven jars).

Everything lives under one git-ignored directory, ``<repo>/.stack`` (override with the
environment variable ``PROGRAMUSER_STACK_DIR``)::

    .stack/lib/kafka/*.jar, .stack/lib/cassandra/*.jar     Maven Central jars, one folder each
    .stack/kafka/{server.properties,cluster.id,data/,kafka.log,kafka.pid}
    .stack/cassandra/{cassandra.yaml,logback.xml,data/,...,cassandra.log,cassandra.pid}

Servers run in the background in their own session, so they outlive the command that started
them; ``down`` stops only processes recorded in our pid files whose command line proves they
are the java process we launched.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from programuser_dagster.cassandra.schema import schema_statements
from programuser_dagster.settings import (
    DEAD_LETTER_MAX_MESSAGE_BYTES,
    DEFAULTS,
    INPUT_MAX_MESSAGE_BYTES,
    Settings,
    check_identifier,
)

SERVERS: tuple[str, ...] = ("kafka", "cassandra")
KAFKA_MAIN = "kafka.Kafka"
CASSANDRA_MAIN = "org.apache.cassandra.service.CassandraDaemon"
_MAIN_CLASS = {"kafka": KAFKA_MAIN, "cassandra": CASSANDRA_MAIN}

# The input topic takes what our producer does; the dead-letter topic that plus the letters'
# headers, so that the letter of the largest input record fits (programuser_dagster/settings.py).
# The pipeline measures event age from record timestamps; LogAppendTime makes them the broker's.
INPUT_TOPIC_CONFIG: Mapping[str, str] = {
    "max.message.bytes": str(INPUT_MAX_MESSAGE_BYTES),
    "message.timestamp.type": "LogAppendTime",
}
DEAD_LETTER_TOPIC_CONFIG: Mapping[str, str] = {
    "max.message.bytes": str(DEAD_LETTER_MAX_MESSAGE_BYTES),
    "message.timestamp.type": "LogAppendTime",
}

DEFAULT_TIMEOUT = 180.0  # a cold Cassandra start takes 30-90 s on a 2-core machine
LOG_TAIL_LINES = 30

# Cassandra logins (see cassandra.yaml: guardrails only bind ordinary roles). The superuser is
# Cassandra's built-in default and is used only to create the application role; clients log in
# as the application role, overridable with CASSANDRA_USERNAME / CASSANDRA_PASSWORD.
CASSANDRA_SUPERUSER: tuple[str, str] = ("cassandra", "cassandra")
DEFAULT_CASSANDRA_ROLE: tuple[str, str] = ("programuser", "programuser")

KAFKA_HEAP = "512m"
CASSANDRA_HEAP = "1G"

# Cassandra 5.0 needs these on JDK 17 (its conf/jvm17-server.options); without them it dies
# with IllegalAccessException in FileUtils.<clinit>.
_CASSANDRA_JDK17_FLAGS: tuple[str, ...] = (
    "-Djdk.attach.allowAttachSelf=true",
    *(
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "java.base/java.lang.ref",
            "jdk.unsupported/sun.misc",
            "jdk.compiler/com.sun.tools.javac.file",
            "jdk.attach/sun.tools.attach",
        )
    ),
    *(
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.lang.reflect",
            "jdk.compiler/com.sun.tools.javac",
            "java.base/java.lang",
            "java.base/java.util",
            "java.base/java.nio",
            "java.base/java.util.concurrent",
            "java.base/java.util.concurrent.atomic",
        )
    ),
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
)

# From Cassandra's jvm-server.options / jvm17-server.options (GC and threads).
_CASSANDRA_JVM_FLAGS: tuple[str, ...] = (
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1HeapRegionSize=16m",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-Xss256k",
    "-XX:+UseThreadPriorities",
    "-XX:+ExitOnOutOfMemoryError",  # a dead process is reported truthfully; a sick one is not
    "-XX:+UseTLAB",
    "-XX:+ResizeTLAB",
    "-XX:+PerfDisableSharedMem",
    "-XX:StringTableSize=1000003",
    "-Djava.net.preferIPv4Stack=true",
)

# From kafka-run-class.sh.
_KAFKA_JVM_FLAGS: tuple[str, ...] = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# Popen objects of servers started by this Python process: polling them reaps a dead child
# (otherwise it lingers as a zombie whose /proc entry still exists).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """A problem the user can act on; the message says what to do."""


@dataclass(frozen=True)
class ServerStatus:
    name: str
    pid: int | None  # our running java process, or None
    address: str  # host:port clients use
    answering: bool  # a real client request succeeded just now
    log: Path


@dataclass(frozen=True)
class Ports:
    kafka: int
    kafka_controller: int
    cql: int
    storage: int


Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ----------------------------------------------------------------------------- locations


# The stack's configs (pom.xml, cassandra.yaml, ...) sit beside this file: devtools/ is not
# packaged, it runs from the checkout.
HERE = Path(__file__).resolve().parent


def repo_root() -> Path:
    """The checkout this package runs from (parent of the package dir), else the cwd."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "programuser_dagster").is_dir():
        return root
    return Path.cwd()


def stack_dir() -> Path:
    override = os.environ.get("PROGRAMUSER_STACK_DIR", "").strip()
    return Path(override).resolve() if override else repo_root() / ".stack"


def _server_dir(name: str) -> Path:
    return stack_dir() / name


def _pid_file(name: str) -> Path:
    return _server_dir(name) / f"{name}.pid"


def log_file(name: str) -> Path:
    return _server_dir(name) / f"{name}.log"


def _resource(name: str) -> str:
    return (HERE / name).read_text()


def _split_host_port(address: str, default_port: int) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep:
        return address.strip(), default_port
    return host.strip("[]"), int(port)


def ports(settings: Settings) -> Ports:
    """Ports of the local servers, derived from the settings the clients use."""
    first = settings.kafka_bootstrap_servers.split(",")[0]
    kafka_host, kafka_port = _split_host_port(first, 9092)
    if kafka_host not in _LOOPBACK:
        raise StackError(
            f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers!r} is not local: the "
            "local stack only serves 127.0.0.1 (unset it, or set it to 127.0.0.1:9092)."
        )
    if not set(settings.cassandra_hosts) <= _LOOPBACK:
        raise StackError(
            f"CASSANDRA_HOSTS={','.join(settings.cassandra_hosts)!r} is not local: the local "
            "stack only serves 127.0.0.1 (unset it, or set it to 127.0.0.1)."
        )
    env = os.environ
    return Ports(
        kafka=kafka_port,
        kafka_controller=int(env.get("PROGRAMUSER_KAFKA_CONTROLLER_PORT") or kafka_port + 1),
        cql=settings.cassandra_port,
        storage=int(env.get("PROGRAMUSER_CASSANDRA_STORAGE_PORT") or 7000),
    )


def _address(name: str, settings: Settings) -> str:
    if name == "kafka":
        return settings.kafka_bootstrap_servers
    return f"{settings.cassandra_hosts[0]}:{settings.cassandra_port}"


def _check_which(which: Sequence[str] | str) -> list[str]:
    names = [which] if isinstance(which, str) else list(which)
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        raise StackError(f"unknown server {', '.join(unknown)}: choose from {', '.join(SERVERS)}")
    # Fixed order (kafka first) whatever the caller passed, without duplicates.
    return [n for n in SERVERS if n in names]


_held_locks: dict[Path, int] = {}


@contextlib.contextmanager
def stack_lock() -> Iterator[None]:
    """Serialise up/down between processes (e.g. `make run` and test sessions).

    Re-entrant within one process (a second flock on a new file handle would deadlock).
    """
    root = stack_dir()
    if _held_locks.get(root):
        _held_locks[root] += 1
        try:
            yield
        finally:
            _held_locks[root] -= 1
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "stack.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held_locks[root] = 1
        try:
            yield
        finally:
            _held_locks.pop(root, None)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _temporary_marker(name: str) -> Path:
    return _server_dir(name) / "temporary"


def temporary_servers() -> list[str]:
    """Servers started by `up(..., temporary=True)` (test sessions) and not adopted since."""
    return [n for n in SERVERS if _temporary_marker(n).exists() and _running_pid(n)]


# ----------------------------------------------------------------------------- tools


def _java_major(java_home: Path) -> int | None:
    release = java_home / "release"
    if release.is_file():
        match = re.search(r'^JAVA_VERSION="(\d+)', release.read_text(), re.M)
        if match:
            return int(match.group(1))
    try:
        out = subprocess.run(
            [str(java_home / "bin" / "java"), "-version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stderr
    except OSError:
        return None
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else None


@functools.cache
def find_java17() -> Path:
    """JAVA_HOME of a JDK 17: Cassandra 5.0 refuses JDK 24+, so never take "whatever java"."""
    candidates: list[Path] = []
    for var in ("PROGRAMUSER_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    candidates += sorted(Path("/usr/lib/jvm").glob("*17*"))
    for home in candidates:
        if (home / "bin" / "java").is_file() and _java_major(home) == 17:
            return home.resolve()
    raise StackError(
        "No JDK 17 found (looked at $PROGRAMUSER_JAVA_HOME, $JAVA_HOME and /usr/lib/jvm/*17*). "
        "Install it with: apt-get install -y openjdk-17-jdk-headless "
        "(or point PROGRAMUSER_JAVA_HOME at a JDK 17)."
    )


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:]) or f"({path} is empty)"


def ensure_libs(name: str, echo: Echo = _quiet) -> Path:
    """Copy the server's jars from Maven (cached in ~/.m2) into .stack/lib/<name>, once."""
    lib = stack_dir() / "lib" / name
    pom = (HERE / "pom.xml").read_bytes()
    # The stamp ties the folder to the pom: editing a version re-resolves, nothing else does.
    key = hashlib.sha256(pom + name.encode()).hexdigest()
    stamp = lib / ".complete"
    if stamp.is_file() and stamp.read_text().strip() == key:
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) not found; install it with: apt-get install -y maven")
    echo(f"{name}: resolving jars with Maven into {lib} (first time only)...")
    tmp = lib.with_name(f"{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pom_path = tmp / "pom.xml"  # a real file even when the package is zipped/installed
    pom_path.write_bytes(pom)
    env = {**os.environ, "JAVA_HOME": str(find_java17())}
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom_path),
            "-P",
            name,
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    pom_path.unlink()
    if result.returncode != 0 or not any(tmp.glob("*.jar")):
        output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
        raise StackError(
            f"Maven could not resolve the {name} jars (exit {result.returncode}); it needs "
            f"https://repo1.maven.org or a filled ~/.m2. Last lines:\n{output}"
        )
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    stamp.write_text(key + "\n")
    return lib


# ----------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _marker(name: str) -> str:
    return f"-Dprogramuser.stack={name}"


def _is_ours(pid: int, name: str) -> bool:
    """True if pid is alive and is the java process we launched for this server."""
    child = _CHILDREN.get(pid)
    if child is not None:
        # Our own child: poll() also reaps it. (Its /proc cmdline is still Python's until
        # exec, so right after the spawn only poll() tells the truth.)
        return child.poll() is None
    args = _cmdline(pid)  # empty for a zombie or a vanished pid
    # A cluster node's name is its server's, numbered: "cassandra-2".
    return _marker(name) in args and _MAIN_CLASS[name.split("-")[0]] in args


def _running_pid(name: str) -> int | None:
    try:
        pid = int(_pid_file(name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_ours(pid, name) else None


def _foreign_stack(name: str) -> str:
    """Describe a programuser stack server started from another directory, if any."""
    for proc in Path("/proc").glob("[0-9]*"):
        args = _cmdline(int(proc.name))
        if _marker(name) in args:
            dirs = [a.split("=", 1)[1] for a in args if a.startswith("-Dprogramuser.stack.dir=")]
            where = dirs[0] if dirs else "another directory"
            return (
                f" It is a programuser {name} (pid {proc.name}) started from {where}: reuse it "
                f"with PROGRAMUSER_STACK_DIR={where}, or stop it there."
            )
    return ""


def _port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_ports_free(name: str, wanted: Mapping[str, int], host: str = "127.0.0.1") -> None:
    for what, port in wanted.items():
        if _port_open(port, host):
            raise StackError(
                f"Cannot start {name}: port {port} on {host} ({what}) is already taken by a "
                f"process that is not ours. Find it with: ss -ltnp 'sport = :{port}' and stop "
                f"it, or change the port.{_foreign_stack(name)}"
            )


def _spawn(name: str, cmd: list[str], java_home: Path, cgroup: Path | None = None) -> int:
    """Start the server's process in the background; with `cgroup` (a cgroup v2 folder), in
    that group before the JVM starts, so every socket it opens belongs to the group (a shell
    joins it, then execs the command: no Python runs between fork and exec)."""
    directory = _server_dir(name)
    log = log_file(name)
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))  # keep the previous run's log
    env = {**os.environ, "JAVA_HOME": str(java_home)}
    if cgroup is not None:
        cmd = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *cmd]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session: survives our exit and our Ctrl-C
        )
    _CHILDREN[proc.pid] = proc
    _pid_file(name).write_text(f"{proc.pid}\n")
    _temporary_marker(name).unlink(missing_ok=True)  # up() sets it again if asked
    return proc.pid


def _render(template: str, values: Mapping[str, str | int]) -> str:
    text = _resource(template)
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    leftover = re.search(r"@[A-Z_]+@", text)
    if leftover:
        raise StackError(f"template {template} has an unfilled placeholder {leftover.group()}")
    return text


def _new_cluster_id() -> str:
    # Kafka's own format: 16 random bytes, URL-safe base64 without padding, not starting '-'.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _kafka_command(p: Ports, java_home: Path, lib: Path) -> list[str]:
    directory = _server_dir("kafka")
    props = directory / "server.properties"
    props.write_text(
        _render(
            "kafka.properties",
            {
                "BROKER_PORT": p.kafka,
                "CONTROLLER_PORT": p.kafka_controller,
                "LOG_DIRS": directory / "data",
                "MAX_MESSAGE_BYTES": DEAD_LETTER_MAX_MESSAGE_BYTES,
            },
        )
        + (_kafka_sasl_properties(p, directory) if "SASL" in kafka_security().get(
            "security.protocol", "").upper() else "")
    )
    return kafka_java("kafka", props, java_home, lib, KAFKA_HEAP, directory / "cluster.id")


def kafka_java(
    name: str, props: Path, java_home: Path, lib: Path, heap: str, id_file: Path
) -> list[str]:
    """The broker's command line; its KRaft storage (log.dirs = <server dir>/data) is
    formatted first if new, with the cluster id kept in `id_file` (one for a whole cluster)."""
    directory = _server_dir(name)
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    props.chmod(0o600)  # may hold SASL passwords and the keystore's
    log4j = directory / "log4j2.xml"
    log4j.write_text(_resource("kafka-log4j2.xml"))
    java = str(java_home / "bin" / "java")
    common = [f"-Dlog4j2.configurationFile={log4j.as_uri()}", "-cp", f"{lib}/*"]
    if not (data / "meta.properties").is_file():
        # KRaft storage is formatted once; the cluster id is kept so a re-format matches.
        cluster_id = id_file.read_text().strip() if id_file.is_file() else _new_cluster_id()
        id_file.write_text(cluster_id + "\n")
        result = subprocess.run(
            [
                java,
                *common,
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                cluster_id,
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"Formatting Kafka storage in {data} failed (exit {result.returncode}):\n"
                + (result.stdout + result.stderr)[-3000:]
            )
    return [
        java,
        f"-Xms{heap}",
        f"-Xmx{heap}",
        *_KAFKA_JVM_FLAGS,
        _marker(name),
        f"-Dprogramuser.stack.dir={stack_dir()}",
        f"-Dkafka.logs.dir={directory}",
        *common,
        KAFKA_MAIN,
        str(props),
    ]


def _cassandra_command(p: Ports, java_home: Path, lib: Path) -> list[str]:
    values = {
        "CLUSTER_NAME": "programuser-local",
        "ADDRESS": "127.0.0.1",
        "SEEDS": f"127.0.0.1:{p.storage}",
        # One node: one token (nothing to balance, and it starts faster), the simplest snitch.
        "SNITCH": "SimpleSnitch",
        "STORAGE_PORT": p.storage,
        "CQL_PORT": p.cql,
        "EXTRA": "",
    }
    # One node: nobody to gossip with, so do not wait for gossip to settle.
    return cassandra_java("cassandra", values, java_home, lib, CASSANDRA_HEAP,
                          ("-Dcassandra.skip_wait_for_gossip_to_settle=0",))


def cassandra_java(
    name: str,
    values: Mapping[str, str | int],
    java_home: Path,
    lib: Path,
    heap: str,
    flags: Sequence[str] = (),
) -> list[str]:
    """The node's command line, with its cassandra.yaml rendered from `values` (the template's
    placeholders but DATA_DIR and AUTHENTICATOR) and its data under <server dir>/data."""
    directory = _server_dir(name)
    data = directory / "data"
    for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "triggers"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    yaml = directory / "cassandra.yaml"
    yaml.write_text(
        _render(
            "cassandra.yaml",
            {
                **values,
                "DATA_DIR": data,
                "AUTHENTICATOR": "PasswordAuthenticator"
                if cassandra_auth_enabled()
                else "AllowAllAuthenticator",
            },
        )
    )
    yaml.chmod(0o600)  # may hold the keystore's password
    logback = directory / "logback.xml"
    logback.write_text(_resource("logback.xml"))
    jamm = sorted(lib.glob("jamm-*.jar"))
    return [
        str(java_home / "bin" / "java"),
        f"-Xms{heap}",
        f"-Xmx{heap}",
        *_CASSANDRA_JVM_FLAGS,
        *_CASSANDRA_JDK17_FLAGS,
        # jamm measures object sizes for memtable accounting, as the stock script does.
        *(f"-javaagent:{j}" for j in jamm[:1]),
        _marker(name),
        f"-Dprogramuser.stack.dir={stack_dir()}",
        f"-Dcassandra.config={yaml.as_uri()}",
        f"-Dcassandra.storagedir={data}",
        f"-Dcassandra.logdir={directory}",
        f"-Dcassandra.triggers_dir={data / 'triggers'}",
        f"-Dlogback.configurationFile={logback}",
        "-Dcassandra-foreground=yes",
        # Create the default superuser (used once, to create our role) without the 10 s delay.
        "-Dcassandra.superuser_setup_delay_ms=0",
        *flags,
        "-cp",
        f"{lib}/*",
        CASSANDRA_MAIN,
    ]


def _wait_until_answering(
    name: str, pid: int, address: str, probe: Callable[[], str | None], timeout: float
) -> None:
    """Poll `probe` (None = answering, else why not) until it answers, the process dies, or
    `timeout` passes."""
    deadline = time.monotonic() + timeout
    reason = "not probed yet"
    while True:
        if not _is_ours(pid, name):
            child = _CHILDREN.get(pid)
            code = f" with exit code {child.returncode}" if child is not None else ""
            with contextlib.suppress(OSError):
                _pid_file(name).unlink()
            raise StackError(
                f"{name} (pid {pid}) exited{code} before answering on {address}. "
                f"Last lines of {log_file(name)}:\n{_tail(log_file(name))}"
            )
        reason = probe()
        if reason is None:
            return
        if time.monotonic() > deadline:
            raise StackError(
                f"{name} (pid {pid}) did not answer on {address} within {timeout:.0f} s (last "
                f"attempt: {reason}); it is "
                f"left running (check again with `stack status`, stop it with `stack down "
                f"{name}`). Last lines of {log_file(name)}:\n{_tail(log_file(name))}"
            )
        time.sleep(0.5)


# ----------------------------------------------------------------------------- clients


def _kafka_admin(bootstrap: str, security: Mapping[str, str] | None = None) -> Any:
    """An AdminClient; logs in as `security` says, by default as the environment does."""
    from confluent_kafka.admin import AdminClient

    # librdkafka logs connection failures to stderr; route them to a silent Python logger.
    quiet = logging.getLogger("programuser_dagster.stack.librdkafka")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    login = kafka_security() if security is None else security
    return AdminClient({"bootstrap.servers": bootstrap, "logger": quiet, **login})


# `stack up --secure`: its own ports and data folder, and logins on both servers.
SECURE_DEFAULTS: dict[str, str] = {
    "PROGRAMUSER_STACK_DIR": str(repo_root() / ".stack-secure"),
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9192",
    "PROGRAMUSER_KAFKA_CONTROLLER_PORT": "9193",
    "CASSANDRA_PORT": "9142",
    "PROGRAMUSER_CASSANDRA_STORAGE_PORT": "7100",
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_MECHANISM": "PLAIN",
    "KAFKA_SASL_USERNAME": "programuser",
    "KAFKA_SASL_PASSWORD": "programuser-kafka",
}


def apply_secure_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Point this process at the secure stack (variables already set win)."""
    for name, value in SECURE_DEFAULTS.items():
        environ.setdefault(name, value)


def kafka_security() -> dict[str, str]:
    """librdkafka login settings from the environment, as the pipeline's resource takes them."""
    env = os.environ
    conf = {
        "security.protocol": env.get("KAFKA_SECURITY_PROTOCOL", ""),
        "sasl.mechanism": env.get("KAFKA_SASL_MECHANISM", ""),
        "sasl.username": env.get("KAFKA_SASL_USERNAME", ""),
        "sasl.password": env.get("KAFKA_SASL_PASSWORD", ""),
    }
    return {k: v for k, v in conf.items() if v}


def _kafka_sasl_properties(p: Ports, directory: Path) -> str:
    """server.properties overrides (the last value of a key wins) for a SASL/PLAIN listener."""
    user = os.environ.get("KAFKA_SASL_USERNAME", "")
    password = os.environ.get("KAFKA_SASL_PASSWORD", "")
    check_identifier(user, "KAFKA_SASL_USERNAME")
    if not password or any(c in password for c in '"\\;'):
        raise StackError(
            "KAFKA_SASL_PASSWORD must be set and free of quotes, backslashes and ';' for the "
            "secure local broker."
        )
    # The broker's own login for inter-broker traffic: random, kept with the data.
    broker_file = directory / "broker.password"
    if not broker_file.is_file():
        broker_file.write_text(uuid.uuid4().hex + "\n")
        broker_file.chmod(0o600)
    broker = broker_file.read_text().strip()
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="broker" password="{broker}" user_broker="{broker}" '
        f'user_{user}="{password}";'
    )
    return "\n".join(
        [
            "",
            "# stack up --secure: clients log in with SASL/PLAIN.",
            f"listeners=SASL_PLAINTEXT://127.0.0.1:{p.kafka},CONTROLLER://127.0.0.1:"
            f"{p.kafka_controller}",
            f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{p.kafka}",
            "inter.broker.listener.name=SASL_PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}",
            "",
        ]
    )


def _kafka_probe(
    bootstrap: str, timeout: float = 5.0, security: Mapping[str, str] | None = None
) -> str | None:
    host, port = _split_host_port(bootstrap.split(",")[0], 9092)
    if not _port_open(port, host):
        return f"nothing listening on {host}:{port}"
    from confluent_kafka import KafkaException

    try:
        metadata = _kafka_admin(bootstrap, security).list_topics(timeout=timeout)
    except KafkaException as exc:
        return f"metadata request failed: {exc}"
    return None if metadata.brokers else "metadata lists no broker yet"


def kafka_answers(bootstrap: str, timeout: float = 5.0) -> bool:
    """True if a broker at `bootstrap` returns cluster metadata with at least one broker."""
    return _kafka_probe(bootstrap, timeout) is None


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    dead_letter: Collection[str] = (),
    correct: bool = False,
    timeout: float = 60.0,
    replicas: int = 1,
    security: Mapping[str, str] | None = None,
) -> list[str]:
    """Create the missing topics (name -> partitions) with `replicas` replicas each; return
    those created.

    Topics named in `dead_letter` get DEAD_LETTER_TOPIC_CONFIG, the others INPUT_TOPIC_CONFIG;
    with more than one replica, writes need all but one in sync (min.insync.replicas), so
    acks=all survives one broker down and never rests on a single copy.
    With `correct`, an existing topic is brought to its config (a machine whose topics an older
    version created): max.message.bytes raised where lower, message.timestamp.type set where
    different. Returns once every partition has a leader, so a producer can write immediately.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _kafka_admin(bootstrap, security)

    def config(name: str) -> Mapping[str, str]:
        base = DEAD_LETTER_TOPIC_CONFIG if name in dead_letter else INPUT_TOPIC_CONFIG
        return {**base, "min.insync.replicas": str(replicas - 1)} if replicas > 1 else base

    existing = admin.list_topics(timeout=timeout).topics
    new = [
        NewTopic(name, num_partitions=n, replication_factor=replicas, config=dict(config(name)))
        for name, n in topics.items()
        if name not in existing
    ]
    if correct:
        _correct_topic_configs(
            admin, {name: config(name) for name in topics if name in existing}, timeout
        )
    created: list[str] = []
    if new:
        futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise StackError(f"could not create Kafka topic {name!r}: {exc}") from exc
    _wait_for_leaders(admin, topics, timeout)
    return created


def _correct_topic_configs(
    admin: Any, configs: Mapping[str, Mapping[str, str]], timeout: float
) -> None:
    """Bring existing topics to their configs, touching only the entries that differ.

    max.message.bytes is only raised, never lowered (a topic raised by hand keeps its limit);
    every other entry (message.timestamp.type) is set where its value differs.
    """
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    if not configs:
        return
    described = admin.describe_configs(
        [ConfigResource("TOPIC", name) for name in configs], request_timeout=timeout
    )
    changes: dict[str, list[str]] = {}
    for resource, future in described.items():
        current = future.result()
        keys = [
            key
            for key, wanted in configs[resource.name].items()
            if _needs_change(key, current[key].value if key in current else None, wanted)
        ]
        if keys:
            changes[resource.name] = keys
    if not changes:
        return
    resources = [
        ConfigResource("TOPIC", name, incremental_configs=[
            ConfigEntry(key, configs[name][key], incremental_operation=AlterConfigOpType.SET)
            for key in keys
        ])
        for name, keys in changes.items()
    ]
    for resource, future in admin.incremental_alter_configs(resources).items():
        try:
            future.result()
        except Exception as exc:
            raise StackError(
                f"could not set {', '.join(changes[resource.name])} of Kafka topic "
                f"{resource.name!r}: {exc}"
            ) from exc


def _needs_change(key: str, current: str | None, wanted: str) -> bool:
    if current is None:
        return True
    if key == "max.message.bytes":
        return int(current) < int(wanted)
    return current != wanted


def _wait_for_leaders(admin: Any, topics: Mapping[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(topics)
    while pending:
        metadata = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
        for name in list(pending):
            topic = metadata.topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and topic.partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                del pending[name]
        if pending:
            if time.monotonic() > deadline:
                raise StackError(f"Kafka topics {sorted(pending)} have no leader after {timeout} s")
            time.sleep(0.2)


def delete_topics(bootstrap: str, names: Sequence[str], *, timeout: float = 60.0) -> None:
    """Delete topics; a topic that does not exist is not an error."""
    from confluent_kafka import KafkaError, KafkaException

    if not names:
        return
    admin = _kafka_admin(bootstrap)
    futures = admin.delete_topics(list(names), operation_timeout=timeout, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise StackError(f"could not delete Kafka topic {name!r}: {exc}") from exc


def cassandra_auth_enabled() -> bool:
    """PasswordAuthenticator on (default); PROGRAMUSER_CASSANDRA_AUTH=0 turns it off (then
    the items_per_collection guardrail no longer refuses anything). Read at `stack up`."""
    flag = os.environ.get("PROGRAMUSER_CASSANDRA_AUTH", "1").strip().lower()
    return flag not in ("0", "false", "no", "off")


def cassandra_credentials() -> tuple[str, str] | None:
    """(username, password) clients should log in with, or None when auth is off."""
    if not cassandra_auth_enabled():
        return None
    user, password = DEFAULT_CASSANDRA_ROLE
    return (
        os.environ.get("CASSANDRA_USERNAME", "").strip() or user,
        os.environ.get("CASSANDRA_PASSWORD", "") or password,
    )


_DEFAULT_LOGIN: Any = object()


def cassandra_cluster(
    hosts: Sequence[str] = ("127.0.0.1",),
    port: int = 9042,
    *,
    timeout: float = 10.0,
    credentials: tuple[str, str] | None = _DEFAULT_LOGIN,
    ssl_ca: str | Path | None = None,
    only: str | None = None,
) -> Any:
    """A cassandra-driver Cluster for the local node(s) (call .connect(), then .shutdown()).

    Logs in with `credentials`, by default `cassandra_credentials()` (the ordinary role); with
    `ssl_ca`, over TLS verified against that CA; with `only`, every request goes to that node.
    """
    from cassandra import ProtocolVersion
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy, WhiteListRoundRobinPolicy

    login = cassandra_credentials() if credentials is _DEFAULT_LOGIN else credentials
    auth = PlainTextAuthProvider(username=login[0], password=login[1]) if login else None
    # An explicit policy and protocol version keep the driver from warning on every connect.
    policy = WhiteListRoundRobinPolicy([only]) if only else RoundRobinPolicy()
    profile = ExecutionProfile(load_balancing_policy=policy, request_timeout=timeout)
    tls: dict[str, Any] = {}
    if ssl_ca:
        import ssl

        tls["ssl_context"] = ssl.create_default_context(cafile=str(ssl_ca))
    return Cluster(
        contact_points=[only] if only else list(hosts),
        port=port,
        protocol_version=ProtocolVersion.V5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=timeout,
        auth_provider=auth,
        **tls,
    )


def _superuser() -> tuple[str, str] | None:
    return CASSANDRA_SUPERUSER if cassandra_auth_enabled() else None


def _cassandra_probe(
    hosts: Sequence[str],
    port: int,
    timeout: float = 5.0,
    ssl_ca: str | Path | None = None,
    only: str | None = None,
) -> str | None:
    host = only or hosts[0]
    if not _port_open(port, host):
        return f"nothing listening on {host}:{port}"
    cluster = cassandra_cluster(hosts, port, timeout=timeout, credentials=_superuser(),
                                ssl_ca=ssl_ca, only=only)
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local").one()
        return None if row is not None else "system.local is empty"
    except Exception as exc:  # the driver raises many types while the node is starting
        return f"{type(exc).__name__}: {exc}"
    finally:
        cluster.shutdown()


def cassandra_answers(hosts: Sequence[str], port: int, timeout: float = 5.0) -> bool:
    """True if `SELECT release_version FROM system.local` succeeds."""
    return _cassandra_probe(hosts, port, timeout) is None


def ensure_cassandra_role(
    hosts: Sequence[str], port: int = 9042, *, ssl_ca: str | Path | None = None
) -> None:
    """Create the ordinary login role clients use (no-op when auth is off)."""
    login = cassandra_credentials()
    if login is None:
        return
    check_identifier(login[0], "CASSANDRA_USERNAME")
    cluster = cassandra_cluster(hosts, port, credentials=CASSANDRA_SUPERUSER, ssl_ca=ssl_ca)
    try:
        session = cluster.connect()
        # Not a superuser on purpose: guardrails (items_per_collection) only bind ordinary roles.
        session.execute(
            f"CREATE ROLE IF NOT EXISTS {login[0]} WITH PASSWORD = %s AND LOGIN = true "
            "AND SUPERUSER = false",
            (login[1],),
            timeout=60,
        )
    finally:
        cluster.shutdown()


def ensure_schema(
    session_or_hosts: Any,
    keyspace: str,
    table: str,
    replication: str = DEFAULTS.cassandra_replication,
    *,
    port: int = 9042,
) -> None:
    """Create the keyspace and its tables (IF NOT EXISTS) from schema.cql.

    `session_or_hosts` is a cassandra-driver Session, or a sequence of contact hosts
    (a temporary connection on `port` is then used).
    """
    from cassandra.cluster import Session

    statements = schema_statements(keyspace, table, replication)
    if isinstance(session_or_hosts, Session):
        for statement in statements:
            session_or_hosts.execute(statement, timeout=60)
        return
    cluster = cassandra_cluster(list(session_or_hosts), port)
    try:
        session = cluster.connect()
        for statement in statements:
            session.execute(statement, timeout=60)
    finally:
        cluster.shutdown()


def drop_keyspace(session: Any, keyspace: str) -> None:
    check_identifier(keyspace, "keyspace")
    session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)


# ----------------------------------------------------------------------------- up/down/status


def up(
    settings: Settings | None = None,
    which: Sequence[str] = SERVERS,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    echo: Echo = _quiet,
    temporary: bool = False,
) -> list[str]:
    """Start the servers that are not running; return the names of those started.

    Idempotent: a server already running from our pid file is left alone. Waits until each
    answers a real client request, then creates the settings' topics and keyspace/table.
    `temporary=True` (test sessions) marks the servers it starts as temporary; a plain `up`
    (the CLI, `make run`) adopts running servers by clearing that mark, so that test sessions
    never stop a server somebody started by hand (see `temporary_servers`).
    """
    settings = settings or Settings.from_env()
    names = _check_which(which)
    p = ports(settings)
    started: list[str] = []
    with stack_lock():
        waiting: list[tuple[str, int]] = []
        for name in names:
            pid = _running_pid(name)
            if pid is None:
                _pid_file(name).unlink(missing_ok=True)  # stale: the process is gone
                if name == "kafka":
                    wanted = {"Kafka broker": p.kafka, "Kafka controller": p.kafka_controller}
                else:
                    wanted = {"Cassandra CQL": p.cql, "Cassandra storage": p.storage}
                check_ports_free(name, wanted)
                java_home = find_java17()
                lib = ensure_libs(name, echo)
                _server_dir(name).mkdir(parents=True, exist_ok=True)
                build = _kafka_command if name == "kafka" else _cassandra_command
                pid = _spawn(name, build(p, java_home, lib), java_home)
                started.append(name)
                if temporary:
                    _temporary_marker(name).touch()
                echo(f"{name}: started (pid {pid}), log {log_file(name)}")
            else:
                echo(f"{name}: already running (pid {pid})")
            if not temporary:
                _temporary_marker(name).unlink(missing_ok=True)
            waiting.append((name, pid))
        # Both JVMs boot in parallel; wait for each in turn.
        for name, pid in waiting:
            address = _address(name, settings)
            probe: Callable[[], str | None] = (
                functools.partial(_kafka_probe, settings.kafka_bootstrap_servers)
                if name == "kafka"
                else functools.partial(
                    _cassandra_probe, settings.cassandra_hosts, settings.cassandra_port
                )
            )
            t0 = time.monotonic()
            _wait_until_answering(name, pid, address, probe, timeout)
            echo(f"{name}: answering on {address} ({time.monotonic() - t0:.1f} s)")
        if "kafka" in names:
            n = settings.kafka_partitions
            topics = {settings.kafka_input_topic: n, settings.kafka_dlq_topic: n}
            ensure_topics(settings.kafka_bootstrap_servers, topics,
                          dead_letter={settings.kafka_dlq_topic}, correct=True)
            echo(f"kafka: topics {', '.join(topics)} ready ({n} partitions)")
        if "cassandra" in names:
            ensure_cassandra_role(settings.cassandra_hosts, settings.cassandra_port)
            ensure_schema(
                settings.cassandra_hosts,
                settings.cassandra_keyspace,
                settings.cassandra_table,
                settings.cassandra_replication,
                port=settings.cassandra_port,
            )
            echo(f"cassandra: table {settings.cassandra_keyspace}.{settings.cassandra_table} ready")
    return started


def down(
    which: Sequence[str] = SERVERS, *, timeout: float = 60.0, echo: Echo = _quiet
) -> list[str]:
    """Stop the servers we started (pid file + command-line check); return those stopped.

    SIGTERM lets Kafka and Cassandra shut down cleanly; SIGKILL only after `timeout` seconds.
    """
    names = _check_which(which)
    stopped: list[str] = []
    with stack_lock():
        signalled: list[tuple[str, int]] = []
        for name in names:
            pid = _running_pid(name)
            if pid is None:
                _pid_file(name).unlink(missing_ok=True)
                echo(f"{name}: not running")
                continue
            os.kill(pid, signal.SIGTERM)
            signalled.append((name, pid))
        for name, pid in signalled:
            deadline = time.monotonic() + timeout
            while _is_ours(pid, name) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _is_ours(pid, name):
                echo(f"{name}: no exit {timeout:.0f} s after SIGTERM, sending SIGKILL")
                os.kill(pid, signal.SIGKILL)
                while _is_ours(pid, name):
                    time.sleep(0.1)
            _CHILDREN.pop(pid, None)
            _pid_file(name).unlink(missing_ok=True)
            _temporary_marker(name).unlink(missing_ok=True)
            stopped.append(name)
            echo(f"{name}: stopped (pid {pid})")
    return stopped


def status(settings: Settings | None = None, which: Sequence[str] = SERVERS) -> list[ServerStatus]:
    """What is running and whether it answers a real request right now (no lock: read-only)."""
    settings = settings or Settings.from_env()
    result = []
    for name in _check_which(which):
        if name == "kafka":
            answering = kafka_answers(settings.kafka_bootstrap_servers, timeout=3.0)
        else:
            answering = cassandra_answers(
                settings.cassandra_hosts, settings.cassandra_port, timeout=3.0
            )
        result.append(
            ServerStatus(
                name=name,
                pid=_running_pid(name),
                address=_address(name, settings),
                answering=answering,
                log=log_file(name),
            )
        )
    return result


# ----------------------------------------------------------------------------- command line


def main_stack(argv: Sequence[str]) -> int:
    """`stack up|down|status [kafka|cassandra ...]` (argv excludes the word "stack").

    Exit codes: 0 ok; 1 a StackError (message on stderr, no traceback); for `status`, 1 also
    when a requested server is not answering.
    """
    parser = argparse.ArgumentParser(
        prog="python -m devtools stack",
        description="Run the local Kafka and Cassandra servers (data under .stack/).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text in (
        ("up", "start the servers (if not running) and create topics and table"),
        ("down", "stop the servers started by `stack up`"),
        ("status", "show pid, address and whether each server answers"),
    ):
        p = sub.add_parser(command, help=text, description=text)
        p.add_argument("servers", nargs="*", metavar="{kafka,cassandra}", help="default: both")
        p.add_argument(
            "--secure",
            action="store_true",
            help="the secure stack: own ports (Kafka 9192, CQL 9142) and data (.stack-secure), "
            "Kafka with SASL/PLAIN logins; set the same variables to use it (see "
            "docs/configuration.md)",
        )
        p.add_argument(
            "--cluster",
            action="store_true",
            help="the cluster stack: three Cassandra nodes and three Kafka brokers on "
            "127.0.0.11-13, TLS, data in .stack-cluster (docs/deploying.md)",
        )
        if command == "up":
            p.add_argument(
                "--timeout",
                type=float,
                default=None,
                help=f"seconds to wait for each server (default {DEFAULT_TIMEOUT:.0f}; with "
                "--cluster, for the whole cluster: cluster.py's DEFAULT_TIMEOUT)",
            )
    args = parser.parse_args(list(argv))
    if args.secure:
        apply_secure_defaults()

    def echo(message: str) -> None:
        print(message, flush=True)

    if args.cluster:
        return _main_cluster(args, echo)
    try:
        which = _check_which(args.servers or SERVERS)
        if args.command == "up":
            up(Settings.from_env(), which, timeout=args.timeout or DEFAULT_TIMEOUT, echo=echo)
            return 0
        if args.command == "down":
            down(which, echo=echo)
            return 0
        rows = status(Settings.from_env(), which)
        for row in rows:
            # Answering without our pid means someone else's server holds the port.
            other = "not ours" if row.answering else "not running"
            pid = f"pid {row.pid}" if row.pid else other
            state = "answering" if row.answering else "NOT answering"
            print(f"{row.name:<10} {row.address:<16} {state:<14} {pid:<18} log {row.log}")
        return 0 if all(row.answering for row in rows) else 1
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _main_cluster(args: argparse.Namespace, echo: Echo) -> int:
    from . import cluster

    if args.servers or args.secure:
        print("error: --cluster takes no server names and no --secure", file=sys.stderr)
        return 2
    try:
        if args.command == "up":
            t0 = time.monotonic()
            cluster.up(timeout=args.timeout or cluster.DEFAULT_TIMEOUT, echo=echo)
            echo(f"cluster: healthy ({time.monotonic() - t0:.1f} s)")
            return 0
        if args.command == "down":
            cluster.down(echo=echo)
            return 0
        rows = cluster.status()
        for row in rows:
            pid = f"pid {row.pid}" if row.pid else "-"
            print(f"{row.name:<12} {row.address:<18} {row.state:<18} {pid:<12} log {row.log}")
        return 0 if all(row.state == "answering" for row in rows) else 1
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a client library's error while nodes start: say it in one line
        print(f"error: {type(exc).__name__}: {exc} (see `stack status --cluster` and the nodes' "
              "logs)", file=sys.stderr)
        return 1
