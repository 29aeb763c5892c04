"""Runs launched by the sensor and the schedule are bounded by the settings, as drain's are.

The run request each of them makes is executed in process, as the daemon would launch it: its
run config, tags and partition key, against the real broker and Cassandra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from dagster import (
    DagsterInstance,
    RunRequest,
    build_schedule_context,
)

from programuser_dagster.ingest.job import kafka_partitions, program_user_info
from programuser_dagster.ingest.schedules import build_backlog_schedule
from programuser_dagster.resources import build_resources, cassandra_resource, kafka_resource
from programuser_dagster.settings import Settings
from tests.support.pipeline import event, offsets, produce, tick

pytestmark = pytest.mark.stack


def sensor_requests(instance: DagsterInstance, s: Settings) -> list[RunRequest]:
    result = tick(instance, s)
    for request in result.dynamic_partitions_requests or []:  # as the daemon would
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    return list(result.run_requests or [])


def schedule_requests(instance: DagsterInstance, s: Settings) -> list[RunRequest]:
    schedule = build_backlog_schedule(program_user_info, s)
    kafka, cassandra = kafka_resource(s), cassandra_resource(s)
    try:
        with build_schedule_context(instance=instance,
                                    resources={"kafka": kafka, "cassandra": cassandra}) as ctx:
            result = list(schedule(ctx))  # the schedule adds the partitions itself
    finally:
        kafka.close()
        cassandra.close()
    assert instance.get_dynamic_partitions(kafka_partitions.name or "")
    return [r for r in result if isinstance(r, RunRequest)]


@pytest.mark.parametrize("requests", [sensor_requests, schedule_requests],
                         ids=["sensor", "schedule"])
def test_max_messages_bounds_a_launched_run(
    instance: DagsterInstance,
    kafka_topics: Settings,
    requests: Callable[[DagsterInstance, Settings], list[RunRequest]],
) -> None:
    s = dataclasses.replace(kafka_topics, max_messages=3)
    produce(s, [event("p", f"u{i}") for i in range(10)], partition=0)
    [request] = requests(instance, s)
    assert request.run_key == "partition-0:0-10:token-0:attempt-1"
    result = program_user_info.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        partition_key=request.partition_key,
        resources=build_resources(s),
        tags=request.tags,
    )
    assert result.success
    # 3 of the 10 offsets (PROGRAMUSER_MAX_MESSAGES), not the job's default of 100,000.
    assert offsets(s, 0).committed == 3
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    assert run.tags["programuser/end_offset"] == "3"  # the run corrected its range's end
    # The next request goes on from the new committed state.
    [following] = requests(instance, s)
    assert following.run_key == "partition-0:3-10:token-1:attempt-1"
