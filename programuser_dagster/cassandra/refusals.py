"""Which of Cassandra's refusals of a write are about the row, and which refuse every row.

Cassandra answers both with the same error, InvalidRequest (a guardrail's failure included:
its GuardrailViolatedException is one), so only the message tells them apart. A row refused
for its content (a map with too many entries, a value too large) is dead-lettered and the
partition moves on; a refusal that any row would get (a guardrail on write times, disk usage or
consistency, a table dropped or altered) must fail the run instead: dead-lettering would send
the whole backlog to the dead-letter topic and commit past it. docs/contract.md, "Outcome of a
message", step 7.

Pure: messages in, causes out (the Cassandra resource acts on them).
"""

from __future__ import annotations

import re

# Cassandra 5.0's guardrails that refuse a write for the row's own values
# (org.apache.cassandra.db.guardrails.Guardrails): another row may pass them.
ROW_GUARDRAILS = frozenset({
    "items_per_collection", "collection_size", "column_value_size",
    "sai_string_term_size", "sai_frozen_term_size", "sai_vector_term_size",
})

# "Guardrail <name> violated: <what>" (Guardrail.decorateMessage).
_GUARDRAIL = re.compile(r"Guardrail (\w+) violated: ")

_DISK = ("a replica's data disk is fuller than the cluster's data_disk_usage_percentage_fail_"
         "threshold (or data_disk_usage_max_disk_size): free disk space or add nodes, or "
         "raise the threshold")
_CLOCK = ("check the clocks of the hosts that run the pipeline against the cluster's, or "
          "relax the threshold")

# What the pipeline cannot do under a guardrail, and what the operator can do about it.
_GUARDRAIL_CAUSES: dict[str, str] = {
    "user_timestamps": (
        "guardrail user_timestamps is disabled on the cluster, and the pipeline writes every "
        "row USING TIMESTAMP (its write times order events; docs/contract.md, \"Write times\"): "
        "set user_timestamps_enabled: true on every node (cassandra.yaml, or at runtime "
        "`nodetool setguardrailsconfig user_timestamps_enabled true`)"),
    "maximum_timestamp": (
        "guardrail maximum_timestamp refuses write times this far ahead of the node's clock "
        "(maximum_timestamp_fail_threshold); the partition's clock (docs/contract.md, \"Write "
        "times\") runs ahead of the wall clock by up to a replay's length in microseconds, or a "
        f"pipeline host's clock is ahead: {_CLOCK}"),
    "minimum_timestamp": (
        "guardrail minimum_timestamp refuses write times this far behind the node's clock "
        "(minimum_timestamp_fail_threshold); the write times follow the clock of the host that "
        f"runs the pipeline: {_CLOCK}"),
    "replica_disk_usage": f"guardrail replica_disk_usage: {_DISK}",
    "local_data_disk_usage": f"guardrail local_data_disk_usage: {_DISK}",
    "write_consistency_levels": (
        "guardrail write_consistency_levels disallows the pipeline's write consistency: set "
        "CASSANDRA_CONSISTENCY to a level the cluster allows (write_consistency_levels_"
        "disallowed), or allow this one"),
}

# Refusals of a statement the table no longer accepts, whatever its row: the table or keyspace
# was dropped, or a column the INSERT names was dropped (the driver re-prepares the statement
# after a schema change, and that fails).
# Cassandra 5.0 says "table t does not exist", "keyspace k does not exist", "Undefined column
# name c in table k.t"; older versions "unconfigured table t", "Keyspace 'k' does not exist".
_SCHEMA = re.compile(r"unconfigured table|\b(?:table|keyspace) \S+ does not exist"
                     r"|undefined column name|unknown identifier", re.IGNORECASE)


def systemic_cause(message: str) -> str | None:
    """Why every write is refused, in the operator's words with what to do, when `message`
    (an InvalidRequest's) refuses writes whatever their row; None when the refusal is about
    the row it was given (that row becomes a dead letter)."""
    guardrail = _GUARDRAIL.search(message)
    if guardrail is not None:
        name = guardrail.group(1)
        if name in ROW_GUARDRAILS:
            return None
        # A guardrail not known to be about a row's values binds every write: failing the run
        # costs a retry, dead-lettering would cost the backlog.
        return _GUARDRAIL_CAUSES.get(name, (
            f"guardrail {name} refuses the pipeline's writes: change that guardrail's setting "
            "on the cluster, or the pipeline's settings it objects to"))
    if _SCHEMA.search(message):
        return ("the table no longer accepts the pipeline's INSERT (dropped or altered while "
                "running): restore it as programuser_dagster/cassandra/schema.cql defines it "
                "(the next run recreates a dropped table or keyspace when "
                "CASSANDRA_CREATE_SCHEMA=true; a dropped column must be added back by hand)")
    return None
