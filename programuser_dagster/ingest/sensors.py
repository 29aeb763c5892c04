"""The ingestion sensor: notices new records on each Kafka partition and requests short runs."""


import time

from dagster import (
    AddDynamicPartitionsRequest,
    DefaultSensorStatus,
    JobDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ..cassandra.client import CassandraResource, CassandraWriteFailed
from ..kafka.resource import KafkaResource, KafkaUnavailable
from ..settings import Settings
from . import checks
from .assets import JOB_NAME, PROGRAM_ENROLLMENT, RECENT_RUNS
from .backlog import plan_backlog, runs_in_flight
from .job import kafka_partitions
from .offset_retention import lost_partitions, renew_commits


def build_backlog_sensor(job: JobDefinition, settings: Settings) -> SensorDefinition:
    """The sensor launching `job` (program_user_info), every PROGRAMUSER_SENSOR_INTERVAL_S, with
    run requests built from the settings (backlog.launch_request)."""

    @sensor(
        name="kafka_backlog_sensor",
        job=job,
        minimum_interval_seconds=settings.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
    )
    def kafka_backlog_sensor(
        context: SensorEvaluationContext, kafka: KafkaResource, cassandra: CassandraResource
    ) -> SensorResult:
        """Fires every PROGRAMUSER_SENSOR_INTERVAL_S seconds. For each partition with records
        past its committed offset and no run queued or in progress, requests one run of
        [committed, high-water mark), at most PROGRAMUSER_MAX_MESSAGES offsets (a partition
        added to the topic waits for the old partitions' backlog: core/growth.py). Re-requests
        failed ranges with a growing back-off, adds new partitions of the topic, and reports
        consumer lag per partition as an observation of program_enrollment.
        """
        plan = plan_backlog(context.instance, kafka, settings, cassandra=cassandra)
        for warning in plan.warnings:
            context.log.warning(warning)
        try:  # the lag in seconds: one record per lagging partition, read together, <= ~1 s
            oldest: dict[int, int | None] | None = kafka.oldest_uncommitted_times(plan.offsets)
        except KafkaUnavailable as exc:
            context.log.warning(f"Lag in seconds unknown this tick: {exc}")
            oldest = None
        return SensorResult(
            run_requests=plan.run_requests,
            dynamic_partitions_requests=[
                AddDynamicPartitionsRequest(kafka_partitions.name or "", plan.new_partitions)
            ]
            if plan.new_partitions
            else None,
            asset_events=[plan.lag_observation(oldest, time.time_ns() // 1_000_000)],
            skip_reason=None if plan.run_requests else SkipReason(plan.summary()),
        )

    return kafka_backlog_sensor


def build_health_sensor(settings: Settings) -> SensorDefinition:
    @sensor(
        name="ingestion_health_sensor",
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
    )
    def ingestion_health_sensor(
        context: SensorEvaluationContext, kafka: KafkaResource, cassandra: CassandraResource
    ) -> SensorResult:
        """Every minute, whichever of the ingestion sensor or the schedule launches the runs:
        evaluates the asset checks of program_enrollment (lag without progress, dead-letter
        share, accounting) and records them, so that the asset page shows ingestion's health;
        and renews the partitions' commits before Kafka's offset retention removes them.
        """
        runs = checks.recent_runs_counts(context.instance, PROGRAM_ENROLLMENT, RECENT_RUNS)
        offsets = kafka.offsets()
        # Commits older than half the broker's offset retention are renewed (core/kept_commit.py).
        renew_commits(kafka, cassandra, offsets, settings.offset_renew_s,
                      lambda p: runs_in_flight(context.instance, p) > 0,
                      context.log.info, context.log.warning)
        try:
            lost = lost_partitions(kafka, cassandra, offsets)
        except CassandraWriteFailed as exc:
            lost = {}
            context.log.warning(f"Could not check for commits Kafka lost this tick: {exc}")
        verdicts = [
            checks.stalled_partitions(
                context.instance, JOB_NAME, offsets, time.time(), settings.stall_warn_s, lost
            ),
            checks.dead_letter_share(runs[:1], settings.dead_letter_share_warn),
            checks.accounting(runs),
        ]
        # table_matches_source: once per new run's range (the cursor), here rather than in the
        # run, so that runs do not pay for it; a sample of keys keeps the tick short.
        last = checks.last_range(runs[:1])
        if last is not None and context.cursor != repr(last):
            try:
                verdicts.append(
                    checks.matches_source(settings, *last, kafka=kafka, cassandra=cassandra))
                context.update_cursor(repr(last))
            except (ValueError, RuntimeError) as exc:
                context.log.warning(f"table_matches_source not evaluated this tick: {exc}")
        return SensorResult(asset_events=[v.evaluation(PROGRAM_ENROLLMENT) for v in verdicts])

    return ingestion_health_sensor
