"""prune_history as a Dagster job on a daily schedule (on by default): keeps
PROGRAMUSER_HISTORY_KEEP_DAYS of the instance's history, and records what each prune did as a
materialization of `dagster_history`, where the asset page plots it."""

from collections.abc import Iterator

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    Config,
    DefaultScheduleStatus,
    Failure,
    JobDefinition,
    OpExecutionContext,
    ScheduleDefinition,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from ..ingest.instance import hold_connections
from ..kafka.resource import KafkaResource, KafkaUnavailable
from ..settings import Settings
from .history import prune

PRUNE_JOB = "prune_history"
DAGSTER_HISTORY = AssetKey("dagster_history")


class PruneConfig(Config):
    dry_run: bool = Field(default=False, description="Only count what would be deleted.")


def dagster_history_spec(settings: Settings) -> AssetSpec:
    return AssetSpec(
        DAGSTER_HISTORY, group_name="housekeeping", kinds={"dagster"},
        description=f"Dagster's own history (runs, event logs, compute logs, observations, check "
        f"evaluations): {PRUNE_JOB} keeps {settings.history_keep_days:g} days of it, and each "
        "prune materializes this asset with what it deleted.")


def build_prune_job(settings: Settings) -> JobDefinition:
    @op(out={}, name="prune")
    def prune_history_op(context: OpExecutionContext, config: PruneConfig,
                         kafka: KafkaResource) -> Iterator[AssetMaterialization]:
        """Delete the history older than PROGRAMUSER_HISTORY_KEEP_DAYS that no keep rule holds
        (docs/operating.md); counts per kind go to the log and to dagster_history."""
        # A pooled connection: on PostgreSQL each deletion otherwise opens its own (~10 times
        # slower, docs/performance.md).
        hold_connections(context.instance)
        try:
            report = prune(context.instance, kafka, settings.history_keep_days,
                           apply=not config.dry_run, say=context.log.info)
        except KafkaUnavailable as exc:
            raise Failure(description=f"Nothing pruned: the committed offsets, which say which "
                          f"failed runs the sensor still counts, could not be read ({exc}). "
                          "The next scheduled prune tries again.") from exc
        for line in report.lines():
            context.log.info(line)
        if report.applied:
            yield AssetMaterialization(DAGSTER_HISTORY, description="; ".join(report.lines()),
                                       metadata=report.metadata())

    @job(name=PRUNE_JOB, executor_def=in_process_executor,
         description=f"Delete Dagster history older than {settings.history_keep_days:g} days "
         "(PROGRAMUSER_HISTORY_KEEP_DAYS), keeping runs in flight, each partition's newest "
         "success, the failed attempts the sensor counts and unfinished backfills; "
         "`dry_run: true` only counts.")
    def prune_history_job() -> None:
        prune_history_op()

    return prune_history_job


def build_prune_schedule(prune_job: JobDefinition, settings: Settings) -> ScheduleDefinition:
    return ScheduleDefinition(
        name=f"{PRUNE_JOB}_schedule", job=prune_job, cron_schedule=settings.history_prune_cron,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Keeps the instance's history bounded (PROGRAMUSER_HISTORY_PRUNE_CRON).")
