"""The ingestion sensor: notices new records on each Kafka partition and requests short runs."""


from dagster import (
    AddDynamicPartitionsRequest,
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from .backlog import plan_backlog
from .jobs import kafka_partitions, program_user_info
from .resources.kafka import KafkaResource


def build_backlog_sensor(interval_s: int = 30) -> SensorDefinition:
    @sensor(
        name="kafka_backlog_sensor",
        job=program_user_info,
        minimum_interval_seconds=interval_s,
        default_status=DefaultSensorStatus.RUNNING,
    )
    def kafka_backlog_sensor(
        context: SensorEvaluationContext, kafka: KafkaResource
    ) -> SensorResult:
        """Fires every `interval_s` seconds. For each partition with records past its committed
        offset and no run queued or in progress, requests one run of [committed, high-water
        mark). Re-requests failed ranges with a growing back-off, adds new partitions of the
        topic, and reports consumer lag per partition as an observation of program_enrollment.
        """
        plan = plan_backlog(context.instance, kafka)
        return SensorResult(
            run_requests=plan.run_requests,
            dynamic_partitions_requests=[
                AddDynamicPartitionsRequest(kafka_partitions.name or "", plan.new_partitions)
            ]
            if plan.new_partitions
            else None,
            asset_events=[plan.lag_observation()],
            skip_reason=None if plan.run_requests else SkipReason(plan.summary()),
        )

    return kafka_backlog_sensor
