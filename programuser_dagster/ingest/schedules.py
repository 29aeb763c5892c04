"""The same planning as the sensor, on a schedule, for deployments that prefer schedules."""


from collections.abc import Iterator

from dagster import (
    DefaultScheduleStatus,
    JobDefinition,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from ..cassandra.client import CassandraResource
from ..kafka.resource import KafkaResource
from ..settings import Settings
from .backlog import plan_backlog
from .job import kafka_partitions


def build_backlog_schedule(job: JobDefinition, settings: Settings) -> ScheduleDefinition:
    """The schedule launching `job` (program_user_info), with run requests built from the
    settings (backlog.launch_request), as the sensor's."""

    @schedule(
        name="kafka_backlog_schedule",
        job=job,
        cron_schedule="*/5 * * * *",
        default_status=DefaultScheduleStatus.STOPPED,
    )
    def kafka_backlog_schedule(
        context: ScheduleEvaluationContext, kafka: KafkaResource, cassandra: CassandraResource
    ) -> Iterator[RunRequest | SkipReason]:
        """Every 5 minutes (stopped by default): one run per partition with lag, as the sensor
        does, but without its trigger (PROGRAMUSER_TRIGGER_*): the cron's five minutes are the
        pace already (at most 288 runs a partition a day), and waiting for an age on top would
        add up to another interval to every event's latency. Keeps the job's partitions in step
        with the topic itself, since schedules cannot return partition requests.
        """
        plan = plan_backlog(context.instance, kafka, settings, cassandra=cassandra)
        for warning in plan.warnings:
            context.log.warning(warning)
        if plan.new_partitions:
            context.instance.add_dynamic_partitions(
                kafka_partitions.name or "", plan.new_partitions
            )
        if not plan.run_requests:
            yield SkipReason(plan.summary())
        yield from plan.run_requests

    return kafka_backlog_schedule
