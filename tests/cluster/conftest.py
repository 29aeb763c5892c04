"""The cluster stack for the `cluster` tests (`make test-cluster`; deselected by `make test`).

- ``cluster`` (session): sets the cluster's variables (CLUSTER_DEFAULTS) for the session,
  removes a fault table left by an earlier session, starts the three Cassandra nodes and
  three brokers unless running (`stack up --cluster` adopts them) and yields the base Settings.
  At the end it stops the nodes this session started.
- ``healthy_cluster`` (function): the cluster restored to full health before and after the
  test: the fault table gone, stopped nodes continued, killed nodes started again, and every
  node answering with all replicas in sync (devtools/stack/cluster.py: up).
- ``cluster_settings`` (function): Settings with this test's own topics (3 replicas), group
  and keyspace ({'dc1': 3}), removed afterwards.
- ``measured`` (function): ``measured(test, **figures)`` records what a test measured; all of
  it is printed at the end of the session and written to cluster-results.json.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devtools.stack import cluster, delete_topics, drop_keyspace, ensure_schema
from devtools.stack import ensure_topics as ensure_kafka_topics
from programuser_dagster.settings import Settings
from tests.support.cluster_faults import heal_network, restore
from tests.support.dagster_dev import REPO
from tests.support.pipeline import temporary_env

BOOT_TIMEOUT_S = 900.0
_MEASURED: dict[str, dict[str, Any]] = {}


@pytest.fixture
def measured() -> Callable[..., None]:
    def record(test: str, **figures: Any) -> None:
        _MEASURED[test] = figures
        # Merged with earlier sessions' figures (make test-cluster, then -full, keep both).
        path = REPO / "cluster-results.json"
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**earlier, **_MEASURED}, indent=2) + "\n")

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _MEASURED:
        terminalreporter.section("cluster: what each test measured")
        for test, figures in _MEASURED.items():
            terminalreporter.write_line(f"{test}: {json.dumps(figures)}")


@pytest.fixture(scope="session")
def cluster_stack() -> Iterator[Settings]:
    env = {k: v for k, v in cluster.CLUSTER_DEFAULTS.items() if not os.environ.get(k)}
    with temporary_env(env):
        heal_network()  # a table left by a session that died must never break this one
        t0 = time.monotonic()
        started = cluster.up(timeout=BOOT_TIMEOUT_S, temporary=True, echo=print)
        _MEASURED["cluster start"] = {"started": started,
                                      "healthy_after_s": round(time.monotonic() - t0, 1)}
        try:
            yield cluster.cluster_settings()
        finally:
            heal_network()
            cluster.down(only=[n for n in started if n in cluster.temporary_nodes()])


@pytest.fixture
def healthy_cluster(cluster_stack: Settings) -> Iterator[Settings]:
    restore()
    try:
        yield cluster_stack
    finally:
        restore()


@pytest.fixture
def cassandra(cluster_stack: Settings) -> Iterator[Any]:
    """A driver Session on the cluster as the application role (TLS)."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT

    driver = cluster.admin_session()
    # Reads at ALL: a node back from a fault may still miss writes its hints will bring.
    driver.profile_manager.profiles[EXEC_PROFILE_DEFAULT].consistency_level = ConsistencyLevel.ALL
    session = driver.connect()
    try:
        yield session
    finally:
        driver.shutdown()


@pytest.fixture
def cluster_settings(healthy_cluster: Settings, cassandra: Any) -> Iterator[Settings]:
    tag = uuid.uuid4().hex[:8]
    s = healthy_cluster.for_env(f"ctest-{tag}", f"ctest_{tag}", 4)
    topics = {s.kafka_input_topic: 4, s.kafka_dlq_topic: 4}
    ensure_kafka_topics(cluster.PLAINTEXT_BOOTSTRAP, topics, dead_letter={s.kafka_dlq_topic},
                        replicas=3, security={})
    ensure_schema(cassandra, s.cassandra_keyspace, s.cassandra_table, cluster.REPLICATION)
    try:
        yield s
    finally:
        restore()
        delete_topics(cluster.PLAINTEXT_BOOTSTRAP, list(topics))
        drop_keyspace(cassandra, s.cassandra_keyspace)
