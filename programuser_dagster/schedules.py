"""The same planning as the sensor, on a schedule, for deployments that prefer schedules."""


from collections.abc import Iterator

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from .backlog import plan_backlog
from .jobs import kafka_partitions, program_user_info
from .resources.kafka import KafkaResource


@schedule(
    name="kafka_backlog_schedule",
    job=program_user_info,
    cron_schedule="*/5 * * * *",
    default_status=DefaultScheduleStatus.STOPPED,
)
def kafka_backlog_schedule(
    context: ScheduleEvaluationContext, kafka: KafkaResource
) -> Iterator[RunRequest | SkipReason]:
    """Every 5 minutes (stopped by default): one run per partition with lag, as the sensor does.
    Keeps the job's partitions in step with the topic itself, since schedules cannot return
    partition requests.
    """
    plan = plan_backlog(context.instance, kafka)
    if plan.new_partitions:
        context.instance.add_dynamic_partitions(kafka_partitions.name or "", plan.new_partitions)
    if not plan.run_requests:
        yield SkipReason(plan.summary())
    yield from plan.run_requests
