"""The record of the dead letters re-driven (incidents/redrive.py): which (source partition,
offset, write time) were written, so that a second re-drive skips them."""

from __future__ import annotations

from collections.abc import Iterable

from cassandra import ConsistencyLevel, InvalidRequest

from ..settings import REDRIVEN_TABLE
from .client import CassandraWriteFailed, receipt_statement
from .writes import CassandraWriter


def redriven(
    writer: CassandraWriter, topic: str, partition: int, create_schema: bool = True
) -> set[tuple[int, int]]:
    """(source offset, write time) of every letter of this source partition re-driven;
    none when the table does not exist (yet) and may not be created."""
    client = writer.client
    with writer.ours():
        try:
            rows = client.session(create_schema).execute(receipt_statement(
                f"SELECT source_offset, write_time FROM {client.keyspace}.{REDRIVEN_TABLE} "
                "WHERE source_topic = %s AND source_partition = %s"), (topic, partition))
        except InvalidRequest:
            if create_schema and client.create_schema:
                raise
            return set()  # no such keyspace or table: nothing was ever re-driven here
        return {(r.source_offset, r.write_time) for r in rows}


def record_redriven(
    writer: CassandraWriter, topic: str, letters: Iterable[tuple[int, int, int]]
) -> None:
    """Record (source partition, source offset, write time) of letters re-driven."""
    client = writer.client
    with writer.ours():
        insert = client.session().prepare(
            f"INSERT INTO {client.keyspace}.{REDRIVEN_TABLE} (source_topic, source_partition, "
            "source_offset, write_time, redriven_at) VALUES (?, ?, ?, ?, toTimestamp(now()))")
        insert.consistency_level = ConsistencyLevel.LOCAL_QUORUM
        insert.is_idempotent = True  # a set of keys: recording one twice changes nothing
        execution = writer.execution()
        results = execution.submit(insert.bind((topic, p, o, t)) for p, o, t in letters)
        execution.wait()
        failed = [outcome for ok, outcome in results if not ok]
        if failed:
            raise CassandraWriteFailed(
                f"{client.where()} did not record {len(failed)} re-driven letters "
                f"({type(failed[0]).__name__}: {failed[0]}).")
