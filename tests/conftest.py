"""Shared fixtures: the real local Kafka and Cassandra, and per-test names on them.

Fixtures (use them; never write to the dev topics or keyspace from a test):

- ``stack`` (session): starts Kafka and Cassandra with ``devtools.stack.up`` unless
  already running (e.g. from ``make run``), yields the base ``Settings`` (addresses only). At
  the end it stops only servers started by a test session (never ones started with ``stack up``
  / ``make run``), and only when no other test session still uses them: each session holds a
  lease file in ``.stack/test-sessions/`` while it runs, so parallel sessions do not pull the
  servers out from under each other.
- ``cassandra_session`` (session): a cassandra-driver ``Session`` on 127.0.0.1:9042, logged in
  as the ordinary application role (so guardrails such as items_per_collection apply).
- ``make_test_settings`` (function): factory ``(partitions: int = 4) -> Settings`` giving fresh
  names: input topic ``test-<uuid8>.programuser.info`` (created, ``partitions`` partitions),
  its DLQ ``test-<uuid8>.programuser.info.failed`` (created), group ``test-<uuid8>-group`` and
  keyspace ``test_<uuid8>`` (keyspace and table created). Everything it created is deleted or
  dropped after the test.
- ``kafka_topics`` (function): ``make_test_settings()`` once; the usual way to get a Settings.
- ``_cassandra_connections_kept`` (session, autouse): in-process runs reuse one Cassandra
  connection per connection settings (programuser_dagster/cassandra/client.py:
  keep_connections).
- ``postgres`` (module): a throwaway PostgreSQL server (devtools/stack/postgres.py) for deploy/'s
  instance files; yields their DAGSTER_PG_* variables.
- ``dagster_home`` (session): the temporary DAGSTER_HOME set for the whole test session, so
  tests never touch the dev instance in .dagster_home.

Also for the session: CASSANDRA_USERNAME / CASSANDRA_PASSWORD default to the stack's ordinary
role, so ``Settings.from_env()`` and the resources log in the way the stack expects; and
PROGRAMUSER_TRIGGER_LAG_RECORDS defaults to 1, so the sensor (in-process ticks and the
``dagster dev`` of e2e tests, which inherit the environment) launches at a partition's first
record, as the tests expect; a test of the trigger policy gives its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.stack import (
    cassandra_cluster,
    cassandra_credentials,
    delete_topics,
    down,
    drop_keyspace,
    ensure_schema,
    ensure_topics,
    stack_dir,
    stack_lock,
    temporary_servers,
    up,
)
from devtools.stack.postgres import PostgresMissing, postgres_server
from programuser_dagster.cassandra.client import keep_connections
from programuser_dagster.settings import Settings

_SAVED_ENV: dict[str, str | None] = {}
_DAGSTER_HOME: list[Path] = []


def _set_env(name: str, value: str) -> None:
    _SAVED_ENV.setdefault(name, os.environ.get(name))
    os.environ[name] = value


def pytest_configure(config: pytest.Config) -> None:
    # Set before collection, because importing Dagster code may already read DAGSTER_HOME.
    home = Path(tempfile.mkdtemp(prefix="programuser-dagster-home-"))
    _DAGSTER_HOME.append(home)
    _set_env("DAGSTER_HOME", str(home))
    # The sensor launches at the first record, as the tests expect of a tick after producing a
    # few records; tests of the trigger policy set it themselves.
    if not os.environ.get("PROGRAMUSER_TRIGGER_LAG_RECORDS"):
        _set_env("PROGRAMUSER_TRIGGER_LAG_RECORDS", "1")
    login = cassandra_credentials()
    if login is not None and not os.environ.get("CASSANDRA_USERNAME"):
        _set_env("CASSANDRA_USERNAME", login[0])
        _set_env("CASSANDRA_PASSWORD", login[1])


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    for home in _DAGSTER_HOME:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def dagster_home() -> Path:
    """The session's temporary DAGSTER_HOME (already in os.environ)."""
    return Path(os.environ["DAGSTER_HOME"])


@pytest.fixture(scope="session", autouse=True)
def _cassandra_connections_kept() -> Iterator[None]:
    """The session's in-process runs share each Cassandra connection, as drain's runs do
    (outside such a block every run connects and shuts its connection down)."""
    with keep_connections():
        yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    """Real Kafka + Cassandra for the session; see the module docstring for who stops them."""
    settings = Settings.from_env()
    leases = stack_dir() / "test-sessions"
    lease = leases / str(os.getpid())
    with stack_lock():
        leases.mkdir(parents=True, exist_ok=True)
        lease.touch()
    try:
        up(settings, temporary=True)
        yield settings
    finally:
        with stack_lock():
            lease.unlink(missing_ok=True)
            others = [p for p in leases.iterdir() if p.name.isdigit() and _alive(int(p.name))]
            if not others:
                down(temporary_servers())


@pytest.fixture(scope="session")
def cassandra_session(stack: Settings) -> Iterator[Any]:
    """A cassandra-driver Session (no default keyspace), shared by the whole session."""
    cluster = cassandra_cluster(stack.cassandra_hosts, stack.cassandra_port, timeout=30.0)
    session = cluster.connect()
    try:
        yield session
    finally:
        cluster.shutdown()


@pytest.fixture
def make_test_settings(
    stack: Settings, cassandra_session: Any
) -> Iterator[Callable[..., Settings]]:
    """Factory of Settings with fresh topics, group and keyspace; all removed afterwards."""
    topics: list[str] = []
    keyspaces: list[str] = []

    def make(partitions: int = 4) -> Settings:
        tag = uuid.uuid4().hex[:8]
        settings = stack.for_env(f"test-{tag}", f"test_{tag}", partitions)
        names = {settings.kafka_input_topic: partitions, settings.kafka_dlq_topic: partitions}
        topics.extend(names)
        ensure_topics(settings.kafka_bootstrap_servers, names,
                      dead_letter={settings.kafka_dlq_topic})
        keyspaces.append(settings.cassandra_keyspace)
        ensure_schema(
            cassandra_session,
            settings.cassandra_keyspace,
            settings.cassandra_table,
            settings.cassandra_replication,
        )
        return settings

    try:
        yield make
    finally:
        # A test may delete its own DLQ on purpose; delete_topics ignores missing topics.
        delete_topics(stack.kafka_bootstrap_servers, topics)
        for keyspace in keyspaces:
            drop_keyspace(cassandra_session, keyspace)


@pytest.fixture
def kafka_topics(make_test_settings: Callable[..., Settings]) -> Settings:
    """Settings with this test's own topics (4 partitions), group and keyspace."""
    return make_test_settings()


@pytest.fixture
def instance() -> Iterator[Any]:
    """A temporary Dagster instance (sqlite in a temp dir) of this test's own."""
    from dagster import instance_for_test

    with instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL server on a free port, with a database `dagster`."""
    try:
        with postgres_server() as env:
            yield env
    except PostgresMissing as exc:
        pytest.fail(str(exc))
