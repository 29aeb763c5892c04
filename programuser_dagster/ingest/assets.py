"""The table as a Dagster asset: external to Dagster, materialized by every ingestion run."""

import time
from datetime import timedelta

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetSpec,
    FreshnessPolicy,
    asset_check,
)

from ..cassandra.client import CassandraResource
from ..kafka.resource import KafkaResource
from ..names import JOB_NAME as JOB_NAME
from ..names import PROGRAM_ENROLLMENT as PROGRAM_ENROLLMENT
from ..settings import Settings
from . import checks
from .checks import ACCOUNTING_CHECK as ACCOUNTING_CHECK

RECENT_RUNS = 20


def build_program_enrollment(settings: Settings) -> AssetSpec:
    return AssetSpec(
        PROGRAM_ENROLLMENT,
        description=(
            f"Cassandra table {settings.cassandra_keyspace}.{settings.cassandra_table}: one row "
            f"per (program, user), upserted from Kafka topic {settings.kafka_input_topic} by "
            "the program_user_info job. Each run materializes it with its counts; the sensor "
            "observes consumer lag per partition."
        ),
        group_name="programuser",
        kinds={"cassandra", "kafka"},
        # Materialized by every run, so a stale asset means ingestion stopped.
        freshness_policy=FreshnessPolicy.time_window(
            fail_window=timedelta(seconds=settings.freshness_fail_s)
        ),
    )


def build_asset_checks(settings: Settings) -> list[AssetChecksDefinition]:
    @asset_check(asset=PROGRAM_ENROLLMENT, name=checks.ACCOUNTING_CHECK, blocking=False)
    def accounting_balanced(context: AssetCheckExecutionContext) -> AssetCheckResult:
        """Every message of the latest runs was written, skipped or dead-lettered (read ==
        written + skipped + dead-lettered). Each run also evaluates it before committing."""
        runs = checks.recent_runs_counts(context.instance, PROGRAM_ENROLLMENT, RECENT_RUNS)
        return checks.accounting(runs).result()

    @asset_check(asset=PROGRAM_ENROLLMENT, name=checks.DEAD_LETTER_SHARE_CHECK, blocking=False)
    def dead_letter_share(context: AssetCheckExecutionContext) -> AssetCheckResult:
        """Warns when the last run dead-lettered more than PROGRAMUSER_DLQ_SHARE_WARN of its
        messages (default 5%): usually a producer sending a new, broken shape."""
        runs = checks.recent_runs_counts(context.instance, PROGRAM_ENROLLMENT, 1)
        return checks.dead_letter_share(runs, settings.dead_letter_share_warn).result()

    @asset_check(asset=PROGRAM_ENROLLMENT, name=checks.STALLED_CHECK, blocking=False)
    def lag_without_progress(
        context: AssetCheckExecutionContext, kafka: KafkaResource
    ) -> AssetCheckResult:
        """Warns when a partition has lag but no successful run for longer than
        PROGRAMUSER_STALL_WARN_S (default 900 s); fails (error) when a partition's committed
        offset is beyond the log end. The health sensor evaluates it every minute."""
        return checks.stalled_partitions(
            context.instance, JOB_NAME, kafka.offsets(), time.time(), settings.stall_warn_s
        ).result()

    @asset_check(asset=PROGRAM_ENROLLMENT, name=checks.MATCHES_SOURCE_CHECK, blocking=False)
    def table_matches_source(
        context: AssetCheckExecutionContext, kafka: KafkaResource, cassandra: CassandraResource
    ) -> AssetCheckResult:
        """The keys and columns the last run's events wrote hold what Kafka's records say (a
        sample of at most 1,000 keys, re-checked once). The health sensor evaluates it after
        each new run; `programuser-dagster verify` checks every retained record."""
        runs = checks.recent_runs_counts(context.instance, PROGRAM_ENROLLMENT, 1)
        last = checks.last_range(runs)
        if last is None:
            return AssetCheckResult(passed=True, description="No run has written a range yet.")
        return checks.matches_source(settings, *last, kafka=kafka, cassandra=cassandra).result()

    return [accounting_balanced, dead_letter_share, lag_without_progress, table_matches_source]
