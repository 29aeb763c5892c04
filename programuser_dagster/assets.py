"""The table as a Dagster asset: external to Dagster, materialized by every ingestion run."""


from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetSpec,
    DagsterEventType,
    EventRecordsFilter,
    asset_check,
)

PROGRAM_ENROLLMENT = AssetKey("program_enrollment")
ACCOUNTING_CHECK = "accounting_balanced"

program_enrollment = AssetSpec(
    PROGRAM_ENROLLMENT,
    description=(
        "Cassandra table sunbird_programs.program_enrollment: one row per (program, user), "
        "upserted from the Kafka topic {env}.programuser.info by the program_user_info job."
    ),
    group_name="programuser",
    kinds={"cassandra", "kafka"},
)


def accounting_balanced_in(metadata: dict[str, int]) -> bool:
    """read == written + skipped + dead-lettered, from a run's recorded counts."""
    return metadata["messages_read"] == (
        metadata["messages_written"]
        + metadata["messages_skipped"]
        + metadata["messages_dead_lettered"]
    )


@asset_check(asset=PROGRAM_ENROLLMENT, name=ACCOUNTING_CHECK, blocking=False)
def accounting_balanced(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """Every message of the latest run is written, skipped or dead-lettered: none went missing.

    Each run evaluates this itself before committing; launching it from the UI re-checks the
    latest materialization's recorded counts.
    """
    records = context.instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset_key=PROGRAM_ENROLLMENT),
        limit=1,
        ascending=False,
    )
    if not records:
        return AssetCheckResult(passed=True, description="No run has written the table yet.")
    md = records[0].asset_materialization.metadata  # type: ignore[union-attr]
    counts = {k: int(v.value) for k, v in md.items() if k.startswith("messages_")}
    return AssetCheckResult(
        passed=accounting_balanced_in(counts),
        severity=AssetCheckSeverity.ERROR,
        metadata=counts,
    )
