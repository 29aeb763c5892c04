"""Cassandra, and only Cassandra: the IO manager that upserts flattened rows.

Follows cassandra-driver's performance guide: one Cluster/Session per process, one prepared
INSERT, UNSET_VALUE for the columns an event leaves alone, and bounded concurrent execution.

Rows are grouped by partition key (program_id) into small UNLOGGED batches: a batch of rows of
one partition is one mutation on one replica (no coordinator fan-out, no batch log), and it
cuts the driver's per-request Python work (a future, a frame, a callback) by the batch size.
On this machine that is ~10x the rows/s of one request per row (`make bench` measures both
forms and takes the best as the write ceiling). A batch Cassandra refuses as invalid is
replayed row by row, so only the rows it refuses become dead letters. Rows are encoded a
column at a time (cql_encoding.py) rather than bound by the driver row by row: the same bytes
for a third of the client's CPU.
"""

from __future__ import annotations

import atexit
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pandas as pd
from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement
from dagster import ConfigurableIOManager, Failure, InputContext, OutputContext
from pydantic import Field, PrivateAttr

from ..events import COLUMNS
from ..schema import schema_statements
from ..settings import check_identifier
from .cql_encoding import Encoded, bound, encode_rows
from .secrets import reveal


class CassandraWriteFailed(RuntimeError):
    """A write failed for a reason a retry may fix (node down, timeout): the step must fail."""


class RowsNotProduced(RuntimeError):
    """The rows to write could not be produced (their source failed): nothing of Cassandra's."""


@dataclass
class _SharedSession:
    cluster: Cluster
    session: Session
    schemas: set[tuple[str, str]] = field(default_factory=set)  # (keyspace, table) ensured


# One Cluster/Session per process and connection settings, as the driver's guide says: a run
# reuses the connection of the process's previous run (drain runs many in one process); a
# failed write drops it (see upsert), and the process's exit shuts the rest down.
_SESSIONS: dict[tuple[Any, ...], _SharedSession] = {}


@atexit.register
def _shutdown_sessions() -> None:
    while _SESSIONS:
        _SESSIONS.popitem()[1].cluster.shutdown()


@dataclass
class WriteReceipt:
    """What Cassandra acknowledged for one DataFrame; offsets and counts only, no content."""

    rows_upserted: int = 0
    messages_written: int = 0
    rejected_offsets: list[int] = field(default_factory=list)
    rows_sent: int = 0  # rows handed to Cassandra so far (for the failure message)


class CassandraIOManager(ConfigurableIOManager):
    """Upserts each DataFrame of flattened events into the program_enrollment table."""

    hosts: str = Field(default="127.0.0.1", description="Comma-separated contact points.")
    port: int = Field(default=9042, description="CQL native transport port.")
    keyspace: str = Field(default="sunbird_programs", description="Keyspace (plain identifier).")
    table: str = Field(default="program_enrollment", description="Table (plain identifier).")
    consistency: str = Field(
        default="LOCAL_QUORUM", description="Write consistency level, as the old job used."
    )
    local_dc: str | None = Field(
        default=None, description="Local data centre for DC-aware routing; unset: driver default."
    )
    username: str | None = Field(default=None, description="PasswordAuthenticator user.")
    password: str | None = Field(
        default=None, description="PasswordAuthenticator password; set it with EnvVar."
    )
    ssl_ca: str | None = Field(default=None, description="CA file: enables TLS when set.")
    create_schema: bool = Field(
        default=True, description="Create the keyspace and table when missing."
    )
    replication: str = Field(
        default="{'class': 'SimpleStrategy', 'replication_factor': 1}",
        description="Replication map used only when the keyspace is created.",
    )
    concurrency: int = Field(
        default=64,
        description="Write requests (batches) in flight at once. The bench sweeps 32-512: its "
        "best point moves with the load, but 256-512 batches in flight made a busy local node "
        "time writes out; 64 did not.",
    )
    batch_rows: int = Field(
        default=32,
        description="Rows of one partition (program_id) per UNLOGGED batch; 1 sends one "
        "INSERT per row. Bounded with batch_bytes below Cassandra's batch_size_fail_threshold.",
    )
    batch_bytes: int = Field(
        default=24 * 1024,
        description="Estimated bytes per batch, well under batch_size_fail_threshold (50 KiB).",
    )
    request_timeout_s: float = Field(default=30.0, description="Per-request timeout.")

    _cluster: Cluster | None = PrivateAttr(default=None)
    _session: Session | None = PrivateAttr(default=None)
    _insert: PreparedStatement | None = PrivateAttr(default=None)

    # -- connection ----------------------------------------------------------------------------

    def where(self) -> str:
        return f"Cassandra at {self.hosts}:{self.port}"

    def session(self) -> Session:
        if self._session is None:
            check_identifier(self.keyspace, "CASSANDRA_KEYSPACE")
            check_identifier(self.table, "CASSANDRA_TABLE")
            try:
                level = ConsistencyLevel.name_to_value[self.consistency.upper()]
            except KeyError:
                raise ValueError(
                    f"CASSANDRA_CONSISTENCY {self.consistency!r} is not a consistency level "
                    f"(one of {', '.join(ConsistencyLevel.name_to_value)})."
                ) from None
            key = self._connection_key(level)
            shared = _SESSIONS.get(key)
            if shared is None:
                shared = _SESSIONS[key] = _SharedSession(*self._connect(level))
            session = shared.session
            if self.create_schema and (self.keyspace, self.table) not in shared.schemas:
                for stmt in schema_statements(self.keyspace, self.table, self.replication):
                    session.execute(stmt)
                shared.schemas.add((self.keyspace, self.table))
            self._cluster, self._session = shared.cluster, session
        return self._session

    def _connection_key(self, level: int) -> tuple[Any, ...]:
        return (self.hosts, self.port, self.username, self.password, self.ssl_ca,
                self.local_dc, level, self.request_timeout_s)

    def _connect(self, level: int) -> tuple[Cluster, Session]:
        policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=self.local_dc))
        profile = ExecutionProfile(
            load_balancing_policy=policy,
            consistency_level=level,
            request_timeout=self.request_timeout_s,
        )
        kwargs: dict[str, Any] = {}
        if self.username:
            kwargs["auth_provider"] = PlainTextAuthProvider(
                self.username, reveal(self.password) or ""
            )
        if self.ssl_ca:
            ctx = ssl.create_default_context(cafile=self.ssl_ca)
            kwargs["ssl_context"] = ctx
        cluster = Cluster(
            [h.strip() for h in self.hosts.split(",") if h.strip()],
            port=self.port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            # v5 is Cassandra 4+'s native protocol; pinning it avoids a downgrade handshake.
            # v4 measured the same here (client CPU 75-91 vs 83-85 us a row, batched).
            protocol_version=5,
            connect_timeout=10,
            **kwargs,
        )
        try:
            return cluster, cluster.connect()
        except Exception as exc:
            cluster.shutdown()
            raise CassandraWriteFailed(
                f"Could not connect to {self.where()}: {exc}. Check that the node runs "
                "(programuser-dagster stack status) and the credentials, if any."
            ) from exc

    def insert_cql(self) -> str:
        cols = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        return f"INSERT INTO {self.keyspace}.{self.table} ({cols}) VALUES ({marks})"

    def insert_statement(self) -> PreparedStatement:
        if self._insert is None:
            self._insert = self.session().prepare(self.insert_cql())
        return self._insert

    def teardown_after_execution(self, context: Any) -> None:
        self.close()

    def close(self) -> None:
        """Forget this run's session; the connection stays open for the process's next run
        (drain executes one run after another: a connect costs ~0.5-2 s on this machine)."""
        self._cluster = self._session = self._insert = None

    def disconnect(self) -> None:
        """Shut the shared connection down, e.g. after a write failure it may have caused."""
        if self._cluster is not None:
            for key, shared in list(_SESSIONS.items()):
                if shared.cluster is self._cluster:
                    del _SESSIONS[key]
            self._cluster.shutdown()
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def upsert(self, rows: pd.DataFrame | Iterable[pd.DataFrame]) -> WriteReceipt:
        """Write every row of a DataFrame, or of each DataFrame of a run's chunks in offset
        order; rows Cassandra refuses as invalid are reported, not raised.

        Chunks are written one after another: all of a chunk's writes are acknowledged (and the
        rows of a batch refused as invalid replayed) before the next chunk's are sent, so a key
        that two chunks write ends with the later chunk's values (the driver stamps each write
        with its client-side, monotonic timestamp, and the later chunk's are sent later). The
        next chunk is taken from the iterable while this chunk's last writes are in flight, so
        producing it (jobs.py flattens it then) overlaps Cassandra's work on them.
        """
        frames = iter([rows] if isinstance(rows, pd.DataFrame) else rows)
        receipt = WriteReceipt()
        execution = self.execution()
        sent: _Chunk | None = None
        try:
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except Exception as exc:
                    raise RowsNotProduced(str(exc)) from exc
                if sent is not None:
                    self._settle(sent, execution, receipt)
                sent = self._send(frame, execution) if len(frame) else None
                receipt.rows_sent += len(frame)
            if sent is not None:
                self._settle(sent, execution, receipt)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:  # ends the producer's read (jobs._RangeStream) at once
                close()
        if receipt.rejected_offsets:
            refused = self._table_refuses_writes()
            if refused is not None:
                self._fail(receipt, refused)
        receipt.rejected_offsets.sort()
        return receipt

    def execution(self, concurrency: int | None = None) -> BoundedExecution:
        """Asynchronous writes on this manager's session, `concurrency` (default: the
        configured one) in flight at most."""
        return BoundedExecution(self.session(), concurrency or self.concurrency,
                                wait_s=2 * self.request_timeout_s + 30)

    def _send(self, rows: pd.DataFrame, execution: BoundedExecution) -> _Chunk:
        """Send a chunk's rows as requests grouped by partition key; results arrive later."""
        insert = self.insert_statement()
        values = encode_rows(rows, insert)
        groups = group_rows(values, self.batch_rows, self.batch_bytes)
        results = execution.submit(group_statement(insert, values, g) for g in groups)
        return _Chunk(values, rows["message_count"].tolist(), rows["offsets"].tolist(), groups,
                      results)

    def _settle(self, chunk: _Chunk, execution: BoundedExecution, receipt: WriteReceipt) -> None:
        """Wait for a chunk's writes and count them; replay the rows of refused batches one by
        one; raise on the first failure a retry may fix (nothing more is sent then)."""
        execution.wait()
        invalid: list[int] = []
        for group, (ok, outcome) in zip(chunk.groups, chunk.results, strict=True):
            if ok:
                receipt.rows_upserted += len(group)
                receipt.messages_written += sum(chunk.counts[i] for i in group)
            elif isinstance(outcome, InvalidRequest):
                invalid.extend(group)
            else:
                self._fail(receipt, outcome)
        if not invalid:
            return
        insert = self.insert_statement()
        results = execution.submit(bound(insert, chunk.values[i]) for i in invalid)
        execution.wait()
        for i, (ok, outcome) in zip(invalid, results, strict=True):
            if ok:
                receipt.rows_upserted += 1
                receipt.messages_written += chunk.counts[i]
            elif isinstance(outcome, InvalidRequest):
                # No retry can fix an invalid row: its messages become dead letters.
                receipt.rejected_offsets.extend(chunk.offsets[i])
            else:
                self._fail(receipt, outcome)

    def _fail(self, receipt: WriteReceipt, failure: BaseException) -> NoReturn:
        unwritten = receipt.rows_sent - receipt.rows_upserted
        raise CassandraWriteFailed(
            f"{self.where()} failed {unwritten} of {receipt.rows_sent} writes sent "
            f"({type(failure).__name__}: {failure})."
        ) from failure

    def _table_refuses_writes(self) -> BaseException | None:
        """Tell a row Cassandra refuses (dead-letter it) from a table that refuses every row
        (dropped or altered while running: fail the run instead of dead-lettering everything).
        """
        try:
            self.session().prepare(self.insert_cql())
        except Exception as exc:
            return exc
        return None

    def handle_output(
        self, context: OutputContext, obj: pd.DataFrame | Iterable[pd.DataFrame]
    ) -> None:
        try:
            receipt = self.upsert(obj)
        except Exception as exc:
            if not isinstance(exc, RowsNotProduced):
                self.disconnect()  # the next run connects afresh rather than reuse a broken link
            # The producing op names its batch, and what becomes of it, in the output
            # metadata; echo them for operators.
            def said(name: str, default: str) -> str:
                value = context.output_metadata.get(name)
                return str(getattr(value, "value", value) or default)

            what = str(exc) if isinstance(exc, (CassandraWriteFailed, RowsNotProduced)) else (
                f"{self.where()} refused the write ({type(exc).__name__}: {exc})."
            )
            raise Failure(
                description=f"{what} Nothing of {said('batch', 'this batch')} was committed. "
                + said("if_not_written", "Re-execute this run once the cause is fixed.")
            ) from exc
        context.add_output_metadata(
            {
                "rows_upserted": receipt.rows_upserted,
                "messages_written": receipt.messages_written,
                "rejected_by_cassandra": len(receipt.rejected_offsets),
                "rejected_offsets": receipt.rejected_offsets,
                "table": f"{self.keyspace}.{self.table}",
            }
        )

    def load_input(self, context: InputContext) -> pd.DataFrame:
        raise NotImplementedError(
            "The program_enrollment table is written, never loaded back: depend on it with "
            "In(Nothing)."
        )


@dataclass
class _Chunk:
    """One chunk's encoded rows, their message counts and offsets, and its requests' results."""

    values: list[tuple[Encoded, ...]]
    counts: list[int]
    offsets: list[tuple[int, ...]]
    groups: list[list[int]]
    results: list[tuple[bool, Any]]


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

        def done(i: int, ok: bool, outcome: Any) -> None:
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


def group_statement(
    insert: PreparedStatement, values: list[tuple[Encoded, ...]], group: list[int]
) -> Any:
    """The request for one group of encoded rows: the bound INSERT for one row, else an
    UNLOGGED batch."""
    if len(group) == 1:
        return bound(insert, values[group[0]])
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    for i in group:
        batch.add(bound(insert, values[i]))
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
