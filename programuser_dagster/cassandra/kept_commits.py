"""Each partition's last commit, kept in Cassandra where Kafka's offset retention cannot remove it
(core/kept_commit.py says what it is for): read by the sensor, schedule, drain, runs and replay,
written after every commit that landed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cassandra import InvalidRequest

from ..core.kept_commit import KeptCommit
from ..settings import KEPT_COMMITS_TABLE
from .client import CassandraResource, CassandraWriteFailed, receipt_statement


def kept_commits(client: CassandraResource, group: str, topic: str) -> dict[int, KeptCommit]:
    """The kept commit of each partition of `topic` for `group`; none where the table does not
    exist (yet: its first commit creates it). Raises CassandraWriteFailed when Cassandra does
    not answer."""
    try:
        rows = client.session(create_schema=False).execute(receipt_statement(
            "SELECT partition, committed_offset, fence_token, clock, partitions, committed_at, "
            f"host FROM {client.keyspace}.{KEPT_COMMITS_TABLE} WHERE group_id = %s AND topic = %s"),
            (group, topic))
    except InvalidRequest:
        return {}  # no such keyspace or table: nothing was kept here yet
    except Exception as exc:  # the driver's many: unavailable, timeouts, connection errors
        raise CassandraWriteFailed(
            f"{client.where()} did not return the kept commits of {topic!r} "
            f"({type(exc).__name__}: {exc}).") from exc
    return {r.partition: KeptCommit(
        r.partition, r.committed_offset, r.fence_token, r.clock, r.partitions or 0,
        r.committed_at.replace(tzinfo=UTC).timestamp() if r.committed_at else 0.0,
        r.host or "") for r in rows}


def keep(client: CassandraResource, group: str, topic: str, kept: KeptCommit) -> None:
    """Record a commit that landed in Kafka; raises CassandraWriteFailed when it could not be."""
    try:
        client.session().execute(receipt_statement(
            f"INSERT INTO {client.keyspace}.{KEPT_COMMITS_TABLE} (group_id, topic, partition, "
            "committed_offset, fence_token, clock, partitions, committed_at, host) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"),
            (group, topic, kept.partition, kept.offset, kept.token, kept.clock, kept.partitions,
             datetime.fromtimestamp(kept.committed_at, UTC), kept.host))
    except Exception as exc:  # the driver's many: unavailable, timeouts, connection errors
        raise CassandraWriteFailed(
            f"{client.where()} did not record the commit of {topic!r} partition "
            f"{kept.partition} at {kept.offset} ({type(exc).__name__}: {exc}).") from exc


def keep_commit(client: CassandraResource, group: str, topic: str, kept: KeptCommit | None,
                warn: Callable[[str], None]) -> None:
    """Keep a commit that landed (None: none did); a failure is only warned of: the kept record
    stays at an older commit, which never stops a partition (core/kept_commit.py: lost)."""
    if kept is None:
        return
    try:
        keep(client, group, topic, kept)
    except CassandraWriteFailed as exc:
        warn(f"Partition {kept.partition} committed {kept.offset}, but its commit was not kept "
             f"in Cassandra: {exc} The next commit keeps it.")
