"""verify: is every retained Kafka record below the committed offsets reflected in Cassandra?

It snapshots the group's committed offsets of the chosen partitions (default all), reads the
retained records [low watermark, committed) of each into an on-disk store of expected cells
(expected_cells.py: the last retained writer of each (key, column group)), reads those rows back
from Cassandra by primary key, and reports rows missing and cells that differ, by count and by
column, with the (partition, offset) of the events concerned: never a key or a value.

A difference is re-checked once before it is reported: after `recheck_delay_s` the records
committed since the snapshot are added to the expected cells (a cell they write is checked
against them), and the differing keys are read again. A differing cell that a record not
committed yet writes again (the range [now committed, now committed + PROGRAMUSER_MAX_MESSAGES),
which holds every record a run in flight may write) cannot be checked: it is counted as
unverified, with that record's (partition, offset), and the verification does not pass.
Nor does it on a partition whose committed offset is beyond the log end (core/offsets.py): its
records are read up to the end, and the state is reported with the replay that repairs it.

Memory is bounded by sqlite's page cache (64 MiB), 20,000 keys merged in memory, READ_BATCH
records held at once and `concurrency` reads in flight, not by the topic; the store needs
~340 bytes of disk per key. Its cost: docs/performance.md.

The same comparison, on one partition's range and at most `max_keys` keys, is the asset check
table_matches_source (ingest/sensors.py): the keys and columns the last run's events wrote.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import groupby, islice
from pathlib import Path
from typing import Any

from cassandra.cluster import ResponseFuture, Session
from confluent_kafka import Message

from ..cassandra.client import CassandraResource
from ..core.events import COLUMNS
from ..kafka.resource import KafkaResource
from ..resources import cassandra_resource, kafka_resource
from ..settings import Settings
from .expected_cells import Differences, ExpectedCells, Key, PartitionReport, VerifyReport

log = logging.getLogger(__name__)

# Records per consume(): a batch is held at once, so this bounds memory for records near the
# 5 MiB limit too (~2.5 GB at worst, ~1 MB for typical 2 KB events).
READ_BATCH = 500
# Users per request (`user_id IN ?` within one program_id: one partition read, one request).
USERS_PER_REQUEST = 100
KEYS_PER_BATCH = 1_000
PROGRESS_EVERY = 1_000_000  # records between two progress lines


class VerifyFailed(RuntimeError):
    """Cassandra did not answer a read; the message says which."""


def verify(
    settings: Settings,
    partitions: Sequence[int] | None = None,
    *,
    recheck_delay_s: float = 5.0,
    directory: str | Path | None = None,
    concurrency: int | None = None,
    ranges: dict[int, tuple[int, int]] | None = None,
    max_keys: int | None = None,
    kafka: KafkaResource | None = None,
    cassandra: CassandraResource | None = None,
) -> VerifyReport:
    """Verify the chosen partitions (default all) below their committed offsets; see the
    module docstring. `directory`: where the temporary store goes (default: the system's).
    `ranges`: only these partitions' offset ranges [start, end) instead (the asset check's
    last run); `max_keys`: compare at most this many keys (a sample, in key order).
    `kafka`, `cassandra`: the clients to use (Dagster's, in a sensor or check), left open;
    by default clients of its own from the settings, closed at the end."""
    own_kafka, own_cassandra = kafka is None, cassandra is None
    kafka = kafka or kafka_resource(settings)
    cassandra = cassandra or cassandra_resource(settings)
    try:
        snapshot = kafka.offsets(list(ranges) if ranges else kafka.chosen_partitions(partitions))
        bounds = {o.partition: (ranges or {}).get(o.partition) or (o.low, o.committed)
                  for o in snapshot}
        # A committed offset beyond the log end: what is there is read, the state reported.
        beyond = {} if ranges else {o.partition: o.beyond_end_warning()
                                    for o in snapshot if o.beyond_end}
        with ExpectedCells(directory) as store:
            started = time.monotonic()
            for o in snapshot:
                low, end = bounds[o.partition]
                _read_retained(kafka, store, o.partition, low,
                               min(end, o.high) if o.partition in beyond else end)
            store.flush()
            read_s = time.monotonic() - started
            # Reading only: a missing table is an error to report, not one to create.
            reader = _RowReader(cassandra.session(create_schema=False), settings, concurrency
                                or settings.cassandra_concurrency)
            found = _compare(store, reader, differing=False, max_keys=max_keys)
            if found.differing_keys:
                log.info("verify: %d keys differ; re-checking them in %.1fs",
                         found.differing_keys, recheck_delay_s)
                time.sleep(recheck_delay_s)
                after = {o.partition: bounds[o.partition][1] for o in snapshot}
                _read_since(kafka, store, after, settings.max_messages)
                found = found.rechecked(_compare(store, reader, differing=True))
            report = store.report(
                [PartitionReport(o.partition, *bounds[o.partition],
                                 beyond_end=beyond.get(o.partition, "")) for o in snapshot],
                found)
            report.read_s, report.compare_s = read_s, time.monotonic() - started - read_s
            return report
    finally:
        if own_kafka:
            kafka.close()
        if own_cassandra:
            cassandra.close()


def _read_retained(kafka: KafkaResource, store: ExpectedCells, partition: int, low: int,
                   committed: int | None) -> None:
    """Feed the records of [low, committed): the retained ones below the committed offset."""
    if committed is None or committed <= low:
        return
    read = 0
    for chunk in kafka.iter_range(partition, low, committed, batch_size=READ_BATCH):
        for m in chunk:
            store.add(partition, m.offset(), _time_ms(m), m.value())
        read += len(chunk)
        if read % PROGRESS_EVERY < len(chunk):  # a long read says how far it is
            log.info("verify: partition %d at offset %d of %d", partition,
                     chunk[-1].offset(), committed)
    log.info("verify: partition %d read up to %d", partition, committed)


def _read_since(
    kafka: KafkaResource, store: ExpectedCells, checked_to: dict[int, int | None],
    max_messages: int,
) -> None:
    """The records after the checked ones: those committed since are added to the expected
    cells (the newer expectation); those a run in flight may be writing (at most max_messages
    past the committed offset, not committed yet) mark the cells they write unverified."""
    now = {o.partition: o for o in kafka.offsets(list(checked_to))}
    for partition, end_checked in checked_to.items():
        later = now[partition]
        start = later.low if end_checked is None else max(end_checked, later.low)
        committed = min(later.next_offset, later.high) if later.committed is not None else start
        for chunk in kafka.iter_range(partition, start, committed, batch_size=READ_BATCH):
            for m in chunk:
                store.add(partition, m.offset(), _time_ms(m), m.value(), counted=False)
        end = min(later.high, later.next_offset + max_messages)
        for chunk in kafka.iter_range(partition, max(start, committed), end,
                                      batch_size=READ_BATCH):
            for m in chunk:
                store.uncommitted(partition, m.offset(), m.value())


def _time_ms(m: Message) -> int:
    """The record's timestamp for the store (-1: it has none)."""
    kind, ts = m.timestamp()
    return ts if kind else -1


def _compare(store: ExpectedCells, reader: _RowReader, *, differing: bool,
             max_keys: int | None = None) -> Differences:
    batches = store.keys_batches(min(KEYS_PER_BATCH, max_keys or KEYS_PER_BATCH),
                                 differing=differing)
    if max_keys is not None:
        batches = islice(batches, max(1, max_keys // min(KEYS_PER_BATCH, max_keys)))
    total = Differences()
    for rows in reader.rows(batches):
        total += store.compare(rows)
    return total


class _RowReader:
    """Rows by primary key: one prepared `program_id = ? AND user_id IN ?` per program's run of
    keys, `concurrency` requests in flight, answers taken in the order sent."""

    def __init__(self, session: Session, settings: Settings, concurrency: int) -> None:
        self.session, self.concurrency = session, concurrency
        self.where = f"Cassandra at {','.join(settings.cassandra_hosts)}:{settings.cassandra_port}"
        table = f"{settings.cassandra_keyspace}.{settings.cassandra_table}"
        try:
            self.select = session.prepare(
                f"SELECT {', '.join(COLUMNS)} FROM {table} "
                "WHERE program_id = ? AND user_id IN ?")
            self.select.is_idempotent = True  # a read: another node may be asked
        except Exception as exc:
            raise VerifyFailed(f"{self.where} could not prepare the read of {table}: "
                               f"{exc}") from exc

    def rows(self, batches: Iterable[list[Key]]) -> Iterator[dict[Key, dict[str, Any] | None]]:
        """Per request: its keys -> the row Cassandra holds (None: no row)."""
        in_flight: deque[tuple[list[Key], ResponseFuture]] = deque()
        for batch in batches:
            for program, keys in groupby(batch, key=lambda k: k[0]):
                ks = list(keys)
                for i in range(0, len(ks), USERS_PER_REQUEST):
                    part = ks[i:i + USERS_PER_REQUEST]
                    users = [u for _, u in part]
                    future = self.session.execute_async(self.select, (program, users))
                    in_flight.append((part, future))
                    if len(in_flight) >= self.concurrency:
                        yield self._answer(*in_flight.popleft())
        while in_flight:
            yield self._answer(*in_flight.popleft())

    def _answer(self, keys: list[Key], future: ResponseFuture) -> dict[Key, dict[str, Any] | None]:
        try:
            found = {(r.program_id, r.user_id): r._asdict() for r in future.result()}
        except Exception as exc:  # the error's text names no value: Cassandra's, about a read
            raise VerifyFailed(f"{self.where} did not answer a read of {len(keys)} rows "
                               f"({type(exc).__name__}: {exc}).") from exc
        return {k: found.get(k) for k in keys}
