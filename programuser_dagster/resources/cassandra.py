"""Cassandra, and only Cassandra: the IO manager that upserts flattened rows.

Follows cassandra-driver's performance guide: one Cluster/Session per process, one prepared
INSERT, UNSET_VALUE for the columns an event leaves alone, and bounded concurrent execution.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import UNSET_VALUE, PreparedStatement
from dagster import ConfigurableIOManager, Failure, InputContext, OutputContext
from pydantic import Field, PrivateAttr

from ..events import COLUMNS, MAYBE_NOT_WRITTEN, NOT_WRITTEN
from ..schema import schema_statements
from ..settings import check_identifier


class CassandraWriteFailed(RuntimeError):
    """A write failed for a reason a retry may fix (node down, timeout): the step must fail."""


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
        default=128, description="Write requests in flight at once (bounded concurrency)."
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
            policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=self.local_dc))
            profile = ExecutionProfile(
                load_balancing_policy=policy,
                consistency_level=level,
                request_timeout=self.request_timeout_s,
            )
            kwargs: dict[str, Any] = {}
            if self.username:
                kwargs["auth_provider"] = PlainTextAuthProvider(self.username, self.password or "")
            if self.ssl_ca:
                ctx = ssl.create_default_context(cafile=self.ssl_ca)
                kwargs["ssl_context"] = ctx
            cluster = Cluster(
                [h.strip() for h in self.hosts.split(",") if h.strip()],
                port=self.port,
                execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                # v5 is Cassandra 4+'s native protocol; pinning it avoids a downgrade handshake.
                protocol_version=5,
                connect_timeout=10,
                **kwargs,
            )
            try:
                session = cluster.connect()
            except Exception as exc:
                cluster.shutdown()
                raise CassandraWriteFailed(
                    f"Could not connect to {self.where()}: {exc}. Check that the node runs "
                    "(programuser-dagster stack status) and the credentials, if any."
                ) from exc
            if self.create_schema:
                for stmt in schema_statements(self.keyspace, self.table, self.replication):
                    session.execute(stmt)
            self._cluster, self._session = cluster, session
        return self._session

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
        if self._cluster is not None:
            self._cluster.shutdown()
        self._cluster = self._session = self._insert = None

    # -- writing -------------------------------------------------------------------------------

    def upsert(self, rows: pd.DataFrame) -> WriteReceipt:
        """Write every row; rows Cassandra refuses as invalid are reported, not raised."""
        receipt = WriteReceipt()
        if rows.empty:
            return receipt
        stmt = self.insert_statement()
        params = bind_parameters(rows)
        results = execute_concurrent_with_args(
            self.session(), stmt, params, concurrency=self.concurrency, raise_on_first_error=False
        )
        counts = rows["message_count"].tolist()
        offsets = rows["offsets"].tolist()
        failure: BaseException | None = None
        for i, (ok, outcome) in enumerate(results):
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
                f"{self.where()} failed {len(results) - receipt.rows_upserted} of "
                f"{len(results)} writes ({type(failure).__name__}: {failure})."
            ) from failure
        return receipt

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


def bind_parameters(rows: pd.DataFrame) -> list[tuple[Any, ...]]:
    """Rows -> bound-parameter tuples in COLUMNS order, NOT_WRITTEN -> UNSET_VALUE."""
    columns = []
    for name in COLUMNS:
        values = rows[name].tolist()
        if name in MAYBE_NOT_WRITTEN:
            values = [UNSET_VALUE if v is NOT_WRITTEN else v for v in values]
        columns.append(values)
    return list(zip(*columns, strict=True))
