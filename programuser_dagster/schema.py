"""The table's CQL, shipped in the package, and the statements that create it."""

from __future__ import annotations

from importlib.resources import files

from .settings import check_identifier


def schema_statements(keyspace: str, table: str, replication: str) -> list[str]:
    """CREATE ... IF NOT EXISTS statements for the keyspace and table, in order."""
    check_identifier(keyspace, "keyspace")
    check_identifier(table, "table")
    text = files("programuser_dagster").joinpath("schema.cql").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    cql = "\n".join(lines).format(keyspace=keyspace, table=table, replication=replication)
    return [stmt.strip() for stmt in cql.split(";") if stmt.strip()]
