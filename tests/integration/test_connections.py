"""Who owns a Cassandra connection, and for how long
(programuser_dagster/cassandra/client.py)."""

from __future__ import annotations

import pytest

from programuser_dagster.cassandra import client as cassandra
from programuser_dagster.cassandra.client import keep_connections
from programuser_dagster.resources import cassandra_resource
from programuser_dagster.settings import Settings

pytestmark = pytest.mark.stack


@pytest.fixture
def no_keeper(monkeypatch: pytest.MonkeyPatch) -> None:
    # Outside the test session's own keep_connections() block, as a daemon's run worker is.
    monkeypatch.setattr(cassandra, "_KEPT", None)


def test_a_run_shuts_its_connection_down_when_it_ends(no_keeper, kafka_topics: Settings) -> None:
    io = cassandra_resource(kafka_topics)
    io.session().execute("SELECT release_version FROM system.local")
    cluster = io._connection.cluster
    io.teardown_after_execution(None)
    assert cluster.is_shutdown
    assert io._connection is None


def test_a_keep_block_shares_one_connection_until_it_ends_and_a_failure_drops_it(
    no_keeper, kafka_topics: Settings
) -> None:
    with keep_connections():
        first = cassandra_resource(kafka_topics)
        session = first.session()
        first.teardown_after_execution(None)  # the run ends: the connection stays for the next
        assert not session.cluster.is_shutdown
        second = cassandra_resource(kafka_topics)
        assert second.session() is session
        second.disconnect()  # after a write failure: gone for good, even though kept
        assert session.cluster.is_shutdown
        third = cassandra_resource(kafka_topics)
        fresh = third.session()
        assert fresh is not session
        third.teardown_after_execution(None)
        assert not fresh.cluster.is_shutdown
    assert fresh.cluster.is_shutdown  # the block's end shuts what it kept down
