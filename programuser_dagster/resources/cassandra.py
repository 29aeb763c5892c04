"""Cassandra, and only Cassandra: the IO manager that upserts flattened rows.

Follows cassandra-driver's performance guide: one Cluster/Session per process, one prepared
INSERT, UNSET_VALUE for the columns an event leaves alone, and bounded concurrent execution.

Rows are grouped by partition key (program_id) into small UNLOGGED batches: a batch of rows of
one partition is one mutation on one replica (no coordinator fan-out, no batch log), and it
cuts the driver's per-request Python work (a future, a frame, a callback) by the batch size.
On this machine that is ~10x the rows/s of one request per row (`make bench` measures both
forms and takes the best as the write ceiling). A batch Cassandra refuses as invalid is
replayed row by row, so only the rows it refuses become dead letters.
"""

from __future__ import annotations

import atexit
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, PreparedStatement
from dagster import ConfigurableIOManager, Failure, InputContext, OutputContext
from pydantic import Field, PrivateAttr

from ..events import COLUMNS, MAYBE_NOT_WRITTEN, NOT_WRITTEN
from ..schema import schema_statements
from ..settings import check_identifier
from .secrets import reveal


class CassandraWriteFailed(RuntimeError):
    """A write failed for a reason a retry may fix (node down, timeout): the step must fail."""


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

    def upsert(self, rows: pd.DataFrame) -> WriteReceipt:
        """Write every row; rows Cassandra refuses as invalid are reported, not raised."""
        receipt = WriteReceipt()
        if rows.empty:
            return receipt
        params = bind_parameters(rows)
        counts = rows["message_count"].tolist()
        offsets = rows["offsets"].tolist()
        failure: BaseException | None = None
        invalid: list[int] = []  # rows of batches refused as invalid: replayed one by one
        groups = group_rows(params, self.batch_rows, self.batch_bytes)
        for group, (ok, outcome) in zip(groups, self.write_groups(params, groups), strict=True):
            if ok:
                receipt.rows_upserted += len(group)
                receipt.messages_written += sum(counts[i] for i in group)
            elif isinstance(outcome, InvalidRequest):
                invalid.extend(group)
            elif failure is None:
                failure = outcome
        if invalid and failure is None:
            single = [[i] for i in invalid]
            for (i,), (ok, outcome) in zip(single, self.write_groups(params, single), strict=True):
                if ok:
                    receipt.rows_upserted += 1
                    receipt.messages_written += counts[i]
                elif isinstance(outcome, InvalidRequest):
                    # No retry can fix an invalid row: its messages become dead letters.
                    receipt.rejected_offsets.extend(offsets[i])
                elif failure is None:
                    failure = outcome
        if receipt.rejected_offsets and failure is None:
            failure = self._table_refuses_writes()
        if failure is not None:
            raise CassandraWriteFailed(
                f"{self.where()} failed {len(params) - receipt.rows_upserted} of "
                f"{len(params)} writes ({type(failure).__name__}: {failure})."
            ) from failure
        receipt.rejected_offsets.sort()
        return receipt

    def write_groups(
        self, params: list[tuple[Any, ...]], groups: list[list[int]]
    ) -> list[tuple[bool, Any]]:
        """Execute each group (row indices of one partition) as one request: an UNLOGGED batch,
        or the plain INSERT for a group of one. Returns (success, result or exception) each."""
        session, stmt = self.session(), self.insert_statement()
        return execute_bounded(
            session,
            (group_statement(stmt, params, g) for g in groups),
            self.concurrency,
            wait_s=2 * self.request_timeout_s + 30,
        )

    def _table_refuses_writes(self) -> BaseException | None:
        """Tell a row Cassandra refuses (dead-letter it) from a table that refuses every row
        (dropped or altered while running: fail the run instead of dead-lettering everything).
        """
        try:
            self.session().prepare(self.insert_cql())
        except Exception as exc:
            return exc
        return None

    def handle_output(self, context: OutputContext, obj: pd.DataFrame) -> None:
        try:
            receipt = self.upsert(obj)
        except Exception as exc:
            self.disconnect()  # the next run connects afresh rather than reuse a broken link
            # The producing op names its batch in the output metadata; echo it for operators.
            batch = context.output_metadata.get("batch")
            label = getattr(batch, "value", batch) or "this batch"
            what = str(exc) if isinstance(exc, CassandraWriteFailed) else (
                f"{self.where()} refused the write ({type(exc).__name__}: {exc})."
            )
            raise Failure(
                description=f"{what} Nothing of {label} was committed: the sensor will retry "
                "it, or re-execute this run once Cassandra is back."
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


def execute_bounded(
    session: Session, statements: Iterable[Any], concurrency: int, wait_s: float
) -> list[tuple[bool, Any]]:
    """Execute each statement, at most `concurrency` in flight; returns (success, result or
    exception) per statement, in order.

    Our own loop rather than cassandra-driver's execute_concurrent: when the node goes away
    mid-write, requests fail synchronously, and execute_concurrent recurses from one failure
    into the next until a RecursionError, which it records as a second result of the same
    request and then crashes sorting them ("TypeError: '<' not supported between instances of
    'RecursionError' and 'NoHostAvailable"), hiding what happened from the operator.
    """
    results: list[tuple[bool, Any]] = []
    slots = threading.BoundedSemaphore(concurrency)

    def done(i: int, ok: bool, outcome: Any) -> None:
        results[i] = (ok, outcome)
        slots.release()

    def acquire() -> None:
        # Every request ends within its own timeout; this only guards against a lost callback.
        if not slots.acquire(timeout=wait_s):
            raise CassandraWriteFailed(f"A write had no answer and no timeout in {wait_s:.0f}s.")

    for i, statement in enumerate(statements):
        acquire()
        results.append((False, None))
        try:
            future = session.execute_async(statement)
        except Exception as exc:
            done(i, False, exc)
            continue
        future.add_callbacks(
            callback=lambda _rows, i=i: done(i, True, None),
            errback=lambda exc, i=i: done(i, False, exc),
        )
    for _ in range(concurrency):  # every request in flight has ended
        acquire()
    return results


def group_statement(
    insert: PreparedStatement, params: list[tuple[Any, ...]], group: list[int]
) -> Any:
    """The request for one group: the bound INSERT for one row, else an UNLOGGED batch."""
    if len(group) == 1:
        return insert.bind(params[group[0]])
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    for i in group:
        batch.add(insert, params[i])
    return batch


# Bytes a row costs in a batch besides its map (ids, names, dates, frame overhead): generous.
_ROW_BYTES = 512
_MAP_COLUMN = COLUMNS.index("user_locations")


def group_rows(
    params: list[tuple[Any, ...]], max_rows: int, max_bytes: int
) -> list[list[int]]:
    """Row indices grouped by partition key (program_id), in first-seen order, each group at
    most `max_rows` rows and about `max_bytes` (a row bigger than that goes alone).

    Rows have distinct keys within a run (flatten merged them), so the order of rows across
    groups does not matter. The size is an estimate: a batch Cassandra still finds too large
    is refused as invalid and replayed row by row.
    """
    if max_rows <= 1:
        return [[i] for i in range(len(params))]
    open_groups: dict[Any, tuple[list[int], list[int]]] = {}  # key -> (rows, [bytes])
    groups: list[list[int]] = []
    for i, row in enumerate(params):
        locations = row[_MAP_COLUMN]
        size = _ROW_BYTES
        if type(locations) is dict:
            size += sum(map(len, locations)) + sum(map(len, locations.values()))
        entry = open_groups.get(row[0])
        if entry is None or len(entry[0]) >= max_rows or entry[1][0] + size > max_bytes:
            entry = ([], [0])
            open_groups[row[0]] = entry
            groups.append(entry[0])
        entry[0].append(i)
        entry[1][0] += size
    return groups


def bind_parameters(rows: pd.DataFrame) -> list[tuple[Any, ...]]:
    """Rows -> bound-parameter tuples in COLUMNS order, NOT_WRITTEN -> UNSET_VALUE."""
    columns = []
    for name in COLUMNS:
        values = rows[name].tolist()
        if name in MAYBE_NOT_WRITTEN:
            values = [UNSET_VALUE if v is NOT_WRITTEN else v for v in values]
        columns.append(values)
    return list(zip(*columns, strict=True))
