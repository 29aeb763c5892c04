"""The tables' CQL, shipped in the package, and the statements that create them."""

from __future__ import annotations

from importlib.resources import files

from ..settings import KEPT_COMMITS_TABLE, RECEIPTS_TABLE, REDRIVEN_TABLE, check_identifier


def schema_statements(keyspace: str, table: str, replication: str) -> list[str]:
    """CREATE ... IF NOT EXISTS statements for the keyspace and its tables, in order."""
    check_identifier(keyspace, "keyspace")
    check_identifier(table, "table")
    text = files(__package__).joinpath("schema.cql").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    cql = "\n".join(lines).format(
        keyspace=keyspace, table=table, replication=replication, receipts=RECEIPTS_TABLE,
        redriven=REDRIVEN_TABLE, kept=KEPT_COMMITS_TABLE,
    )
    return [stmt.strip() for stmt in cql.split(";") if stmt.strip()]
