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
from ..core.recording import due, memo, read_cursor, write_cursor
from ..core.trigger import Trigger
from ..kafka.resource import KafkaResource
from ..settings import Settings
from . import checks
from .assets import JOB_NAME, PROGRAM_ENROLLMENT, RECENT_RUNS
from .backlog import OldestRecords, plan_backlog, runs_in_flight
from .job import kafka_partitions
from .offset_retention import lost_partitions, renew_commits


def build_backlog_sensor(job: JobDefinition, settings: Settings) -> SensorDefinition:
    """The sensor launching `job` (program_user_info), every PROGRAMUSER_SENSOR_INTERVAL_S, with
    run requests built from the settings (backlog.launch_request)."""
    trigger = Trigger(settings.trigger_lag_records, settings.trigger_age_s)

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
        past its committed offset and no run queued or in progress, once they reach
        PROGRAMUSER_TRIGGER_LAG_RECORDS or the oldest is PROGRAMUSER_TRIGGER_AGE_S old
        (core/trigger.py), requests one run of [committed, high-water mark), at most
        PROGRAMUSER_MAX_MESSAGES offsets (a partition added to the topic waits for the old
        partitions' backlog: core/growth.py). Re-requests failed ranges with a growing back-off,
        adds new partitions of the topic, and reports consumer lag per partition as an
        observation of program_enrollment when it changes (core/recording.py).
        """
        plan = plan_backlog(context.instance, kafka, settings, trigger=trigger,
                            cassandra=cassandra)
        for warning in plan.warnings:
            context.log.warning(warning)
        if plan.oldest.why:
            context.log.warning(f"Lag in seconds unknown this tick: {plan.oldest.why}")
        # The lag observation: when its levels change, or every few minutes (core/recording.py).
        cursor, now = read_cursor(context.cursor), time.time()
        seen = plan.lag_seen(settings.trigger_lag_records)
        observe = due(cursor.get("lag"), seen, now)
        return SensorResult(
            run_requests=plan.run_requests,
            dynamic_partitions_requests=[
                AddDynamicPartitionsRequest(kafka_partitions.name or "", plan.new_partitions)
            ]
            if plan.new_partitions
            else None,
            asset_events=[plan.lag_observation()] if observe else None,
            skip_reason=None if plan.run_requests else SkipReason(plan.summary()),
            cursor=write_cursor({**cursor, "lag": memo(seen, now)}) if observe else None,
        )

    return kafka_backlog_sensor


def build_health_sensor(settings: Settings) -> SensorDefinition:
    trigger = Trigger(settings.trigger_lag_records, settings.trigger_age_s)

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
        share, accounting) and records those that changed (or were last recorded a few minutes
        ago), so that the asset page shows ingestion's health; and renews the partitions'
        commits before Kafka's offset retention removes them.
        """
        runs = checks.recent_runs_counts(context.instance, PROGRAM_ENROLLMENT, RECENT_RUNS)
        now, offsets = time.time(), kafka.offsets()
        # Commits older than half the broker's offset retention are renewed (core/kept_commit.py).
        renew_commits(kafka, cassandra, offsets, settings.offset_renew_s,
                      lambda p: runs_in_flight(context.instance, p) > 0,
                      context.log.info, context.log.warning)
        try:
            lost = lost_partitions(kafka, cassandra, offsets)
        except CassandraWriteFailed as exc:
            lost = {}
            context.log.warning(f"Could not check for commits Kafka lost this tick: {exc}")
        # Partitions whose lag waits for the trigger are gathering, not stalled.
        gathering = trigger.holds(offsets, OldestRecords.read(kafka, offsets).ages_s())
        verdicts = [
            checks.stalled_partitions(context.instance, JOB_NAME, offsets, now,
                                      settings.stall_warn_s, gathering, lost),
            checks.dead_letter_share(runs[:1], settings.dead_letter_share_warn),
            checks.accounting(runs),
        ]
        cursor = read_cursor(context.cursor)
        recorded = dict(cursor.get("checks") or {})
        # table_matches_source: once per new run's range (the cursor), here rather than in the
        # run, so that runs do not pay for it; a sample of keys keeps the tick short.
        last = checks.last_range(runs[:1])
        if last is not None and cursor.get("range") != list(last):
            try:
                verdicts.append(
                    checks.matches_source(settings, *last, kafka=kafka, cassandra=cassandra))
                cursor["range"] = list(last)
                recorded.pop(checks.MATCHES_SOURCE_CHECK, None)  # a new range: recorded
            except (ValueError, RuntimeError) as exc:
                context.log.warning(f"table_matches_source not evaluated this tick: {exc}")
        # Each verdict is recorded when it passes or fails anew, or changes severity, and at
        # least every few minutes (core/recording.py).
        events = []
        for verdict in verdicts:
            seen = [verdict.passed, verdict.severity.value]
            if due(recorded.get(verdict.check_name), seen, now):
                events.append(verdict.evaluation(PROGRAM_ENROLLMENT))
                recorded[verdict.check_name] = memo(seen, now)
        return SensorResult(asset_events=events,
                            cursor=write_cursor({**cursor, "checks": recorded}))

    return ingestion_health_sensor
