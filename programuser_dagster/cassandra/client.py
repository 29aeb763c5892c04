"""The Cassandra client: one resource for the connection settings and the kept connections.

The IO manager (io_manager.py) writes through it, and verify, redrive and the health sensor use
it for ad-hoc reads and writes, as Dagster's database integrations pair a resource with their
IO manager. Follows cassandra-driver's performance guide: one Cluster/Session per run (or per
drain), kept open across runs inside a keep_connections() block.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.query import SimpleStatement
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from ..secrets import reveal
from ..settings import DEFAULTS, check_identifier, local_stack_hint
from .policies import cluster_options, profile_options
from .schema import schema_statements


class CassandraWriteFailed(RuntimeError):
    """A write failed for a reason a retry may fix (node down, timeout): the step must fail."""


@dataclass
class _Connection:
    cluster: Cluster
    session: Session
    schemas: set[tuple[str, str]] = field(default_factory=set)  # (keyspace, table) ensured


# The connections kept open across runs by a keep_connections() block, by connection settings
# (a digest: the password is part of them); None outside such a block.
_KEPT: dict[str, _Connection] | None = None


@contextmanager
def keep_connections() -> Iterator[None]:
    """Keep each Cassandra connection open from one run to the next until the block ends.

    For code that executes many runs in one process (drain, the tests): a connect costs
    ~0.5-2 s here. Outside such a block a run connects at its first write and shuts its
    connection down when it ends (the daemon's run worker executes one run). A nested block
    leaves the connections to the outer one.
    """
    global _KEPT
    if _KEPT is not None:
        yield
        return
    _KEPT = {}
    try:
        yield
    finally:
        kept, _KEPT = _KEPT, None
        for connection in kept.values():
            connection.cluster.shutdown()


class CassandraResource(ConfigurableResource):
    """A connection to the cluster: contact points, login, TLS, routing and consistency, and
    the pipeline's keyspace and table (created when missing, if allowed)."""

    hosts: str = Field(
        default=",".join(DEFAULTS.cassandra_hosts), description="Comma-separated contact points."
    )
    port: int = Field(default=DEFAULTS.cassandra_port, description="CQL native transport port.")
    keyspace: str = Field(
        default=DEFAULTS.cassandra_keyspace, description="Keyspace (plain identifier)."
    )
    table: str = Field(default=DEFAULTS.cassandra_table, description="Table (plain identifier).")
    consistency: str = Field(
        default=DEFAULTS.cassandra_consistency, description="Write consistency level."
    )
    local_dc: str | None = Field(
        default=DEFAULTS.cassandra_local_dc,
        description="Local data centre for DC-aware routing; unset: the driver's default.",
    )
    username: str | None = Field(
        default=DEFAULTS.cassandra_username, description="PasswordAuthenticator user."
    )
    password: str | None = Field(
        default=None, description="PasswordAuthenticator password; set it with EnvVar."
    )
    ssl_ca: str | None = Field(
        default=DEFAULTS.cassandra_ssl_ca, description="CA file: enables TLS when set."
    )
    create_schema: bool = Field(
        default=DEFAULTS.cassandra_create_schema,
        description="Create the keyspace and tables when missing.",
    )
    replication: str = Field(
        default=DEFAULTS.cassandra_replication,
        description="Replication map used only when the keyspace is created.",
    )
    request_timeout_s: float = Field(
        default=DEFAULTS.cassandra_request_timeout_s, gt=0, description="Per-request timeout."
    )

    _connection: _Connection | None = PrivateAttr(default=None)
    _owned: bool = PrivateAttr(default=False)  # this resource shuts the connection down

    def where(self) -> str:
        return f"Cassandra at {self.hosts}:{self.port}"

    def session(self, create_schema: bool = True) -> Session:
        """The session; the keyspace and tables are created first when missing, if
        CASSANDRA_CREATE_SCHEMA and `create_schema` (a dry run creates nothing)."""
        if self._connection is None:
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
            connection = None if _KEPT is None else _KEPT.get(key)
            if connection is None:
                connection = _Connection(*self._connect(level))
                if _KEPT is not None:
                    _KEPT[key] = connection
                else:
                    self._owned = True
            self._connection = connection
        connection = self._connection
        if (create_schema and self.create_schema
                and (self.keyspace, self.table) not in connection.schemas):
            # Not marked idempotent: the same DDL sent to two coordinators at once (a retry, a
            # speculative execution) can make two versions of one table.
            for stmt in schema_statements(self.keyspace, self.table, self.replication):
                connection.session.execute(stmt)
            connection.schemas.add((self.keyspace, self.table))
        return connection.session

    def _connection_key(self, level: int) -> str:
        settings = (self.hosts, self.port, self.username, reveal(self.password), self.ssl_ca,
                    self.local_dc, level, self.request_timeout_s)
        return hashlib.sha256(repr(settings).encode()).hexdigest()

    def _connect(
        self, level: int, protocol_version: int = 5, connection_class: type | None = None
    ) -> tuple[Cluster, Session]:
        """A new cluster and session (the bench varies the protocol and the event loop)."""
        profile = ExecutionProfile(
            consistency_level=level,
            request_timeout=self.request_timeout_s,
            **profile_options(self.local_dc),
        )
        kwargs: dict[str, Any] = {}
        if self.username:
            kwargs["auth_provider"] = PlainTextAuthProvider(
                self.username, reveal(self.password) or ""
            )
        if self.ssl_ca:
            ctx = ssl.create_default_context(cafile=self.ssl_ca)
            kwargs["ssl_context"] = ctx
        if connection_class is not None:  # else the driver's default (libev when built)
            kwargs["connection_class"] = connection_class
        cluster = Cluster(
            [h.strip() for h in self.hosts.split(",") if h.strip()],
            port=self.port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            # v5 is Cassandra 4+'s native protocol; pinning it avoids a downgrade handshake.
            protocol_version=protocol_version,
            connect_timeout=10,
            **cluster_options(),
            **kwargs,
        )
        try:
            return cluster, cluster.connect()
        except Exception as exc:
            cluster.shutdown()
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise CassandraWriteFailed(
                    f"TLS verification of {self.where()} failed: {exc}. Check CASSANDRA_SSL_CA "
                    f"(now {self.ssl_ca}: the CA that signed the nodes' certificates) and that "
                    "CASSANDRA_HOSTS are the addresses the certificates are for."
                ) from exc
            tls = ", CASSANDRA_SSL_CA" if self.ssl_ca else ""
            raise CassandraWriteFailed(
                f"Could not connect to {self.where()}: {exc}. Check CASSANDRA_HOSTS, "
                f"CASSANDRA_PORT{tls} and the credentials (CASSANDRA_USERNAME, CASSANDRA_PASSWORD) "
                f"if the cluster requires a login{local_stack_hint(self.hosts)}."
            ) from exc

    def teardown_after_execution(self, context: Any) -> None:
        self.close()

    def close(self) -> None:
        """The run is over: shut its connection down, unless a keep_connections() block
        keeps it for the process's next run."""
        if self._owned and self._connection is not None:
            self._connection.cluster.shutdown()
        self._connection, self._owned = None, False

    def disconnect(self) -> None:
        """Shut the connection down even if it is kept, e.g. after a write failure it may have
        caused: the next run connects afresh rather than reuse a broken link."""
        connection = self._connection
        if connection is not None:
            if _KEPT is not None:
                for key, kept in list(_KEPT.items()):
                    if kept is connection:
                        del _KEPT[key]
            connection.cluster.shutdown()
        self._connection, self._owned = None, False


def receipt_statement(cql: str) -> SimpleStatement:
    """A statement on the pipeline's own tables (write receipts, re-driven letters): written
    and read at LOCAL_QUORUM whatever the rows' consistency, so the commit step reads what the
    write step stored (ANY cannot read; ONE may miss it on RF 3)."""
    return SimpleStatement(cql, consistency_level=ConsistencyLevel.LOCAL_QUORUM,
                           is_idempotent=True)


