"""The write engine: a run's flattened rows upserted into the table, with a receipt.

Rows are grouped by partition key (program_id) into small UNLOGGED batches: a batch of rows of
one partition is one mutation on one replica (no coordinator fan-out, no batch log), and it
cuts the driver's per-request Python work (a future, a frame, a callback) by the batch size
(docs/performance.md). A batch Cassandra refuses as invalid is replayed row by row, so only the
rows it refuses become dead letters; a refusal that is not about the rows (a guardrail on
every write, a dropped table: refusals.py) fails the run instead. Rows are encoded a
column at a time (cql_encoding.py) rather than bound by the driver row by row: the same bytes
for a third of the client's CPU. One prepared INSERT, UNSET_VALUE for the columns an event
leaves alone, and bounded concurrent execution (cassandra-driver's performance guide).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import pandas as pd
from cassandra import InvalidRequest, Unauthorized, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable, Session
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from ..core.event_ages import Ages
from ..core.events import COLUMN_GROUPS, COLUMNS, NOT_WRITTEN
from ..core.report import RangeReport
from .client import CassandraResource, CassandraWriteFailed
from .cql_encoding import Encoded, bound, encode_columns
from .refusals import systemic_cause

# The rows the writer writes are events.flatten's, plus, per row, the write time of each
# column group's writer (core/clock.py: a tuple, None where no event wrote the group); a frame may
# carry in attrs the record times (ms) of its events, whose ages at acknowledgement it measures.
WRITE_TIMES = "write_times"
RECORD_TIMES = "record_times_ms"


class RowSource(Protocol):
    """What the IO manager writes: DataFrames of flattened rows in offset order, and the
    range's report, which it completes with what Cassandra acknowledged (ingest/range_rows.py)."""

    report: RangeReport

    def __iter__(self) -> Iterator[pd.DataFrame]: ...

    def failed(self, what: str) -> str: ...


@dataclass
class WriteReceipt:
    """What Cassandra acknowledged for a run's rows; offsets and counts only, no content."""

    rows_upserted: int = 0
    messages_written: int = 0
    rejected_offsets: list[int] = field(default_factory=list)
    rows_sent: int = 0  # rows handed to Cassandra so far (for the failure message)
    ages: Ages = field(default_factory=Ages)  # of the events written, at acknowledgement


class CassandraWriter:
    """Writes flattened rows through a client's session: `concurrency` requests in flight,
    batches of at most `batch_rows` rows of a partition and about `batch_bytes`."""

    def __init__(
        self, client: CassandraResource, concurrency: int, batch_rows: int, batch_bytes: int
    ) -> None:
        self.client, self.concurrency = client, concurrency
        self.batch_rows, self.batch_bytes = batch_rows, batch_bytes
        self._insert: tuple[Session, PreparedStatement] | None = None

    def where(self) -> str:
        return self.client.where()

    def insert_cql(self) -> str:
        """The upsert of one event's column groups at that event's write time (core/clock.py)."""
        cols = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        return (f"INSERT INTO {self.client.keyspace}.{self.client.table} ({cols}) "
                f"VALUES ({marks}) USING TIMESTAMP ?")

    def insert_statement(self) -> PreparedStatement:
        # Prepared once per session: a reconnect (client.disconnect) prepares it again.
        session = self.client.session()
        if self._insert is None or self._insert[0] is not session:
            insert = session.prepare(self.insert_cql())
            insert.is_idempotent = True  # it carries its write time (core/clock.py)
            self._insert = (session, insert)
        return self._insert[1]

    def upsert(
        self,
        rows: pd.DataFrame | Iterable[pd.DataFrame],
        between_chunks: Callable[[], None] | None = None,
    ) -> WriteReceipt:
        """Write every row of a DataFrame, or of each DataFrame of a run's chunks in offset
        order; rows Cassandra refuses as invalid are reported, not raised. Any other failure
        of ours is raised as CassandraWriteFailed; the iterable's own errors pass through.

        Chunks are written one after another: all of a chunk's writes are acknowledged (and the
        rows of a batch refused as invalid replayed) before the next chunk's are sent. Which
        value a cell ends with is decided by the write times the rows carry (core/clock.py), not by
        this order. The next chunk is taken from the iterable while this chunk's last writes
        are in flight, so producing it (ingest/range_rows.py flattens it then) overlaps Cassandra's
        work on them.
        """
        frames = iter([rows] if isinstance(rows, pd.DataFrame) else rows)
        try:
            return self._upsert(frames, between_chunks)
        finally:
            # A source left half read (a write failed) is closed now, not whenever the
            # collector finds it: its reader (ingest/range_rows.py) gives its Kafka assignment back.
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    def _upsert(
        self, frames: Iterator[pd.DataFrame], between_chunks: Callable[[], None] | None
    ) -> WriteReceipt:
        receipt = WriteReceipt()
        with self.ours():
            execution = self.execution()
        sent: _Chunk | None = None
        while True:
            if between_chunks is not None:
                between_chunks()
            frame = next(frames, None)  # the source's work: its errors are not Cassandra's
            with self.ours(receipt):
                if sent is not None:
                    self._settle(sent, execution, receipt)
                if frame is None:
                    break
                sent = self._send(frame, execution) if len(frame) else None
                receipt.rows_sent += len(frame)
        with self.ours(receipt):
            if receipt.rejected_offsets:
                refused = self._table_refuses_writes()
                if refused is not None:
                    self._fail(receipt, refused)
        receipt.rejected_offsets.sort()
        return receipt

    @contextmanager
    def ours(self, receipt: WriteReceipt | None = None) -> Iterator[None]:
        """Every failure inside is Cassandra's (or our use of it): a CassandraWriteFailed."""
        try:
            yield
        except CassandraWriteFailed:
            raise
        except Exception as exc:
            if receipt is not None:
                self._fail(receipt, exc)
            raise CassandraWriteFailed(
                self._refuses_every_write(exc)
                or f"{self.where()} refused the write ({type(exc).__name__}: {exc})."
            ) from exc

    def execution(self, concurrency: int | None = None) -> BoundedExecution:
        """Asynchronous writes on the client's session, `concurrency` (default: the
        configured one) in flight at most."""
        return BoundedExecution(self.client.session(), concurrency or self.concurrency,
                                wait_s=2 * self.client.request_timeout_s + 30)

    def _send(self, rows: pd.DataFrame, execution: BoundedExecution) -> _Chunk:
        """Send a chunk's rows as requests grouped by partition key; results arrive later."""
        chunk = self.requests(rows)
        chunk.results = execution.submit(chunk.statements())
        return chunk

    def requests(self, rows: pd.DataFrame) -> _Chunk:
        """A chunk's rows as encoded writes grouped by partition key, ready to send: all the
        client's work on them short of the driver's (the bench times it alone)."""
        # Taken off first: pandas copies a frame's attrs on every column access.
        record_times = rows.attrs.pop(RECORD_TIMES, [])
        insert = self.insert_statement()
        columns, extra = row_writes(rows)
        values = encode_columns(columns, insert)
        groups = group_rows(values[:len(rows)], self.batch_rows, self.batch_bytes)
        return _Chunk(insert, values, extra, rows["message_count"].tolist(),
                      rows["offsets"].tolist(), groups, record_times)

    def _settle(self, chunk: _Chunk, execution: BoundedExecution, receipt: WriteReceipt) -> None:
        """Wait for a chunk's writes and count them; replay the rows of refused batches one by
        one; raise on the first failure a retry may fix (nothing more is sent then)."""
        execution.wait()
        acked_ms = time.time_ns() // 1_000_000
        invalid: list[int] = []
        for group, (ok, outcome) in zip(chunk.groups, chunk.results, strict=True):
            if ok:
                receipt.rows_upserted += len(group)
                receipt.messages_written += sum(chunk.counts[i] for i in group)
            elif isinstance(outcome, InvalidRequest):
                self._unless_every_row_refused(receipt, outcome)
                invalid.extend(group)
            else:
                self._fail(receipt, outcome)
        receipt.ages.add_written(chunk.record_times, acked_ms)
        if not invalid:
            return
        # Each row alone, all of its writes in one batch: a row is refused whole or written whole.
        results = execution.submit(
            group_statement(chunk.insert, chunk.values, [i], chunk.extra) for i in invalid)
        execution.wait()
        for i, (ok, outcome) in zip(invalid, results, strict=True):
            if ok:
                receipt.rows_upserted += 1
                receipt.messages_written += chunk.counts[i]
            elif isinstance(outcome, InvalidRequest):
                self._unless_every_row_refused(receipt, outcome)
                # No retry can fix an invalid row: its messages become dead letters.
                receipt.rejected_offsets.extend(chunk.offsets[i])
            else:
                self._fail(receipt, outcome)

    def _unless_every_row_refused(self, receipt: WriteReceipt, refusal: InvalidRequest) -> None:
        """Fail the run when Cassandra's refusal is not about the row (refusals.py):
        every row would be refused, and dead-lettering them would commit past the backlog."""
        if systemic_cause(str(refusal)) is not None:
            self._fail(receipt, refusal)

    def _refuses_every_write(self, failure: BaseException) -> str | None:
        """What a refusal any write would get means and how to fix it (refusals.py);
        None for other failures."""
        cause = systemic_cause(str(failure)) if isinstance(failure, InvalidRequest) else None
        if cause is None:
            return None
        return (f"{self.where()} refuses every write, whatever the row: {cause}. Cassandra "
                f"said: {failure}.")

    def _fail(self, receipt: WriteReceipt, failure: BaseException) -> NoReturn:
        unwritten = receipt.rows_sent - receipt.rows_upserted
        refused = self._refuses_every_write(failure)
        if refused is not None:
            sent = (f"{unwritten} of {receipt.rows_sent} writes sent were not written, and none "
                    "was dead-lettered" if receipt.rows_sent else "Nothing was written")
            raise CassandraWriteFailed(
                f"{refused} {sent}: once this is fixed, the next run of the partition writes "
                "them."
            ) from failure
        raise CassandraWriteFailed(
            f"{self.where()} failed {unwritten} of {receipt.rows_sent} writes sent "
            f"({type(failure).__name__}: {failure}).{self._quorum_hint(failure)}"
        ) from failure

    def _quorum_hint(self, failure: BaseException) -> str:
        """What an Unavailable or a write timeout means for the operator."""
        if isinstance(failure, NoHostAvailable):  # every node tried: say what the last one said
            causes = [e for e in failure.errors.values()
                      if isinstance(e, (Unavailable, WriteTimeout))]
            if not causes:
                return ""
            failure = causes[-1]
        if isinstance(failure, Unavailable):
            seen = f" ({failure.alive_replicas} of {failure.required_replicas} needed are up)"
        elif isinstance(failure, WriteTimeout):
            seen = f" ({failure.received_responses} of {failure.required_responses} answered)"
        elif (isinstance(failure, Unauthorized)
              and "Unable to perform authorization" in str(failure)):
            # Not a refusal: the node could not re-read the login's roles, which it reads at a
            # quorum of system_auth's replicas (too few up, or they timed out).
            seen = " (Cassandra could not read this login's permissions from system_auth)"
        else:
            return ""
        return (f" A quorum of replicas is not available for consistency {self.client.consistency}"
                f"{seen}: bring the down nodes back (the writes are retried by the next run).")

    def _table_refuses_writes(self) -> BaseException | None:
        """Tell a row Cassandra refuses (dead-letter it) from a table that refuses every row
        (dropped or altered while running: fail the run instead of dead-lettering everything).
        The refusals that refusals.py knows fail the run at once; this catches the others.
        """
        try:
            self.client.session().prepare(self.insert_cql())
        except Exception as exc:
            return exc
        return None


@dataclass
class _Chunk:
    """One chunk's encoded rows, their message counts and offsets, and its requests' results."""

    insert: PreparedStatement
    values: list[tuple[Encoded, ...]]  # a write per row, then the rows' further writes
    extra: dict[int, list[int]]  # row -> its further writes (rows written by several events)
    counts: list[int]
    offsets: list[tuple[int, ...]]
    groups: list[list[int]]
    record_times: list[int]  # ms, of the chunk's events
    results: list[tuple[bool, Any]] = field(default_factory=list)  # per group, once sent

    def statements(self) -> Iterator[Any]:
        """The groups' requests, made as they are sent."""
        return (group_statement(self.insert, self.values, g, self.extra) for g in self.groups)


class BoundedExecution:
    """Statements executed asynchronously, at most `concurrency` in flight at once.

    Our own loop rather than cassandra-driver's execute_concurrent: when the node goes away
    mid-write, requests fail synchronously, and execute_concurrent recurses from one failure
    into the next until a RecursionError, which it records as a second result of the same
    request and then crashes sorting them ("TypeError: '<' not supported between instances of
    'RecursionError' and 'NoHostAvailable"), hiding what happened from the operator.
    """

    def __init__(self, session: Session, concurrency: int, wait_s: float) -> None:
        self.session, self.concurrency, self.wait_s = session, concurrency, wait_s
        self._slots = threading.BoundedSemaphore(concurrency)

    def _acquire(self) -> None:
        # Every request ends within its own timeout; this only guards against a lost callback.
        if not self._slots.acquire(timeout=self.wait_s):
            raise CassandraWriteFailed(
                f"A write had no answer and no timeout in {self.wait_s:.0f}s."
            )

    def submit(self, statements: Iterable[Any]) -> list[tuple[bool, Any]]:
        """Send each statement as a slot frees up; returns (success, result or exception) per
        statement, in order, filled in as the answers arrive (complete after wait())."""
        results: list[tuple[bool, Any]] = []
        ended: set[int] = set()
        lock = threading.Lock()

        def done(i: int, ok: bool, outcome: Any) -> None:
            # Once per request: with speculative executions (policies.py) a late
            # failure of an attempt already overtaken may call back again.
            with lock:
                if i in ended:
                    return
                ended.add(i)
            results[i] = (ok, outcome)
            self._slots.release()

        for i, statement in enumerate(statements):
            self._acquire()
            results.append((False, None))
            try:
                future = self.session.execute_async(statement)
            except Exception as exc:
                done(i, False, exc)
                continue
            future.add_callbacks(
                callback=lambda _rows, i=i: done(i, True, None),
                errback=lambda exc, i=i: done(i, False, exc),
            )
        return results

    def wait(self) -> None:
        """Return when every request sent so far has ended."""
        for _ in range(self.concurrency):
            self._acquire()
        for _ in range(self.concurrency):
            self._slots.release()


def row_writes(rows: pd.DataFrame) -> tuple[list[list[Any]], dict[int, list[int]]]:
    """The statement's bind columns (COLUMNS, then the write time) of a chunk's writes: one per
    row, at the time of the event that wrote its always-written columns, and one more for each
    other event that wrote some of its groups last (rows merged from several events), with
    only that event's groups set. Returns the columns and, per such row, its further writes.

    Each (key, group) is so written at its own writer's time: a later event of the key that
    reaches Cassandra first, a re-driven dead letter or a zombie run's writes change exactly
    the groups they are the latest writer of.
    """
    columns = [rows[name].tolist() for name in COLUMNS]
    times: list[Any] = []
    further: list[tuple[int, int, list[tuple[int, Any]]]] = []  # (row, time, its cells)
    for i, row_times in enumerate(rows[WRITE_TIMES].tolist()):
        first = row_times[0]  # the always-written group's: every row has it
        times.append(first)
        if all(t is None or t == first for t in row_times):
            continue
        by_time: dict[int, list[int]] = {}
        for g, t in enumerate(row_times):
            if t is not None and t != first:
                by_time.setdefault(t, []).append(g)
        for t, groups in by_time.items():
            cells = [(c, columns[c][i]) for g in groups for c in _GROUP_COLUMNS[g]]
            further.append((i, t, cells))
            for c, _ in cells:  # left alone by the row's first write
                columns[c][i] = NOT_WRITTEN
    extra: dict[int, list[int]] = {}
    for i, t, cells in further:
        extra.setdefault(i, []).append(len(times))
        times.append(t)
        for c, column in enumerate(columns):
            column.append(column[i] if c < 2 else NOT_WRITTEN)  # the key, nothing else
        for c, value in cells:
            columns[c][-1] = value
    return [*columns, times], extra


# The column indices (in COLUMNS) of each of the core's column groups.
_GROUP_COLUMNS = tuple(tuple(COLUMNS.index(c) for c in group) for group in COLUMN_GROUPS)


def group_statement(
    insert: PreparedStatement, values: list[tuple[Encoded, ...]], group: list[int],
    extra: dict[int, list[int]] | None = None,
) -> Any:
    """The request for one group of rows' encoded writes (`extra`: a row's further writes):
    the bound INSERT for a single write, else an UNLOGGED batch (of one partition)."""
    writes = [j for i in group for j in ([i, *extra[i]] if extra and i in extra else (i,))]
    if len(writes) == 1:
        return bound(insert, values[writes[0]])
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    batch.is_idempotent = True  # as its statements (policies.py)
    for j in writes:
        batch.add(bound(insert, values[j]))
    return batch


# Bytes a row costs in a batch besides its map (ids, names, dates, frame overhead): generous.
_ROW_BYTES = 512
_MAP_COLUMN = COLUMNS.index("user_locations")


def group_rows(
    values: list[tuple[Encoded, ...]], max_rows: int, max_bytes: int
) -> list[list[int]]:
    """Indices of encoded rows grouped by partition key (program_id), in first-seen order,
    each group at most `max_rows` rows and about `max_bytes` (a row bigger than that goes
    alone).

    Rows have distinct keys within a run (flatten merged them), so the order of rows across
    groups does not matter. The size is an estimate: a batch Cassandra still finds too large
    is refused as invalid and replayed row by row.
    """
    if max_rows <= 1:
        return [[i] for i in range(len(values))]
    open_groups: dict[Any, tuple[list[int], list[int]]] = {}  # key -> (rows, [bytes])
    groups: list[list[int]] = []
    for i, row in enumerate(values):
        locations = row[_MAP_COLUMN]
        size = _ROW_BYTES + len(locations) if type(locations) is bytes else _ROW_BYTES
        entry = open_groups.get(row[0])
        if entry is None or len(entry[0]) >= max_rows or entry[1][0] + size > max_bytes:
            entry = ([], [0])
            open_groups[row[0]] = entry
            groups.append(entry[0])
        entry[0].append(i)
        entry[1][0] += size
    return groups
