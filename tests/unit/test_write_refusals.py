"""write_refusals: which of Cassandra's refusals are about the row (dead letter) and which refuse
every row (the run fails). The messages are Cassandra 5.0.9's, as the Python driver shows them
(captured from a node; the disk-usage ones built from the guardrails' message templates)."""

from __future__ import annotations

import pytest

from programuser_dagster.cassandra.refusals import systemic_cause


def _server(message: str) -> str:
    """str() of the driver's InvalidRequest for a server message."""
    return f'Error from server: code=2200 [Invalid query] message="{message}"'


ROW_REFUSALS = {
    "items_per_collection": "Guardrail items_per_collection violated: Detected collection "
    "user_locations with 1200 items, this exceeds the failure threshold of 1000.",
    "collection_size": "Guardrail collection_size violated: Detected collection user_locations "
    "of size 2 MiB, this exceeds the failure threshold of 1 MiB.",
    "column_value_size": "Guardrail column_value_size violated: Value of column 'program_name' "
    "has size 2048, this exceeds the failure threshold of 1024.",
    "key_too_long": "Key length of 70000 is longer than maximum of 65535",
    "batch_too_large": "Batch too large",
}

# (message, words the cause must contain: the guardrail or what happened, and the fix)
SYSTEMIC_REFUSALS = {
    "user_timestamps": (
        "Guardrail user_timestamps violated: User provided timestamps (USING TIMESTAMP) is not "
        "allowed",
        ["user_timestamps", "USING TIMESTAMP", "user_timestamps_enabled: true"]),
    "maximum_timestamp": (
        "Guardrail maximum_timestamp violated: The modification to table program_enrollment "
        "has a timestamp 1796678547667796 after the maximum allowable failure threshold "
        "1796677548662001. Timestamps too far in the future can lead to data that can't be "
        "easily overwritten",
        ["maximum_timestamp", "maximum_timestamp_fail_threshold", "clock"]),
    "minimum_timestamp": (
        "Guardrail minimum_timestamp violated: The modification to table program_enrollment "
        "has a timestamp 1796676985183529 before the minimum allowable failure threshold "
        "1796677546662001. Timestamps too far in the past can cause writes can be unexpectedly "
        "lost",
        ["minimum_timestamp", "minimum_timestamp_fail_threshold", "clock"]),
    "replica_disk_usage": (
        "Guardrail replica_disk_usage violated: Write request failed because disk usage "
        "exceeds failure threshold",
        ["replica_disk_usage", "free disk space"]),
    "local_data_disk_usage": (
        "Guardrail local_data_disk_usage violated: Local data disk usage 96%(FULL) exceeds "
        "failure threshold of 95%, will stop accepting writes",
        ["local_data_disk_usage", "free disk space"]),
    "write_consistency_levels": (
        "Guardrail write_consistency_levels violated: Provided values [LOCAL_QUORUM] are not "
        "allowed for write consistency levels (disallowed values are: [LOCAL_QUORUM])",
        ["write_consistency_levels", "CASSANDRA_CONSISTENCY"]),
    "a_guardrail_of_a_later_version": (
        "Guardrail some_new_guardrail violated: Something is not allowed",
        ["some_new_guardrail"]),
    "table_dropped": ("table program_enrollment does not exist", ["schema.cql"]),
    "table_dropped_older_cassandra": ("unconfigured table program_enrollment", ["schema.cql"]),
    "keyspace_dropped": ("keyspace sunbird_programs does not exist", ["schema.cql"]),
    "column_dropped": (
        "Undefined column name user_type in table sunbird_programs.program_enrollment",
        ["schema.cql"]),
}


@pytest.mark.parametrize("message", ROW_REFUSALS.values(), ids=ROW_REFUSALS.keys())
def test_a_refusal_about_the_row_is_not_systemic(message: str) -> None:
    assert systemic_cause(_server(message)) is None


@pytest.mark.parametrize(
    ("message", "words"), SYSTEMIC_REFUSALS.values(), ids=SYSTEMIC_REFUSALS.keys())
def test_a_refusal_of_every_row_names_its_cause_and_the_fix(
    message: str, words: list[str]
) -> None:
    cause = systemic_cause(_server(message))
    assert cause is not None
    for word in words:
        assert word in cause

