"""The ingestion sensor's ticks, against the real broker and a real (temporary) instance."""

from __future__ import annotations

import dataclasses
import time

import pytest
from confluent_kafka.admin import AdminClient, NewPartitions
from dagster import (
    DagsterRunStatus,
)

from programuser_dagster.core.recording import HEARTBEAT_S, read_cursor, write_cursor
from programuser_dagster.ingest.backlog import plan_backlog
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings
from tests.support.pipeline import add_run, event, offsets, produce, run_partition, tick

pytestmark = pytest.mark.stack


def test_a_tick_without_lag_requests_nothing_and_reports_zero_lag(
    instance, kafka_topics: Settings
) -> None:
    result = tick(instance, kafka_topics)
    assert result.run_requests == []
    assert result.skip_reason is not None
    [obs] = result.asset_events
    assert obs.metadata["lag_total"].value == 0
    # The job's partitions follow the topic's.
    [request] = result.dynamic_partitions_requests
    assert sorted(request.partition_keys) == ["0", "1", "2", "3"]


def test_a_tick_with_lag_requests_one_run_per_partition_up_to_the_high_watermark(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    produce(s, [event("p", f"u{i}") for i in range(3)], partition=0)
    time.sleep(1.2)  # partition 0's oldest record is now over a second old
    produce(s, [event("p", "x")], partition=2)
    started = time.monotonic()
    result = tick(instance, s)
    tick_s = time.monotonic() - started
    requests = sorted(result.run_requests, key=lambda r: r.partition_key)
    assert [(r.partition_key, r.run_key) for r in requests] == [
        ("0", "partition-0:0-3:token-0:attempt-1"),
        ("2", "partition-2:0-1:token-0:attempt-1"),
    ]
    assert requests[0].run_config["ops"]["flatten_events"]["config"]["end_offset"] == 3
    lag = {k: v.value for k, v in result.asset_events[0].metadata.items()}
    seconds = {k: lag.pop(k) for k in list(lag) if k.startswith("lag_s_")}
    assert lag == {"lag_total": 4, "lag_partition_0": 3, "lag_partition_1": 0,
                   "lag_partition_2": 1, "lag_partition_3": 0}
    # In seconds too: the age of each partition's oldest uncommitted record.
    assert seconds["lag_s_partition_1"] == seconds["lag_s_partition_3"] == 0
    assert 1.2 <= seconds["lag_s_partition_0"] < 30
    assert 0 <= seconds["lag_s_partition_2"] < seconds["lag_s_partition_0"]
    assert seconds["lag_s_max"] == seconds["lag_s_partition_0"]
    assert tick_s < 5, tick_s
    # The lag in seconds costs one record per lagging partition, read together: <= ~1 s for
    # four partitions.
    kafka = kafka_resource(s)
    try:
        kafka.offsets()  # connected, as the sensor's resource is by then
        started = time.monotonic()
        times = kafka.record_times({p: 0 for p in range(4)} | {1: 0, 3: 0})
        extra_s = time.monotonic() - started
    finally:
        kafka.close()
    assert times[0] is not None and times[2] is not None
    assert times[1] is None and times[3] is None  # empty partitions: nothing arrives
    assert extra_s < 1.5, extra_s


def test_a_partition_with_a_run_in_flight_gets_no_second_run(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u")], partition=0)
    produce(s, [event("p", "v")], partition=1)
    add_run(instance, 0, DagsterRunStatus.STARTED)
    result = tick(instance, s)
    assert [r.partition_key for r in result.run_requests] == ["1"]


def test_a_failed_range_is_requested_again_after_a_growing_back_off(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u")], partition=0)
    run = add_run(instance, 0, DagsterRunStatus.STARTED)
    instance.report_run_failed(run)
    # Right after the failure: wait (30 s for the first retry).
    assert tick(instance, s).run_requests == []
    kafka = kafka_resource(s)
    try:
        later = plan_backlog(instance, kafka, s, now=time.time() + 31)
        assert [r.run_key for r in later.run_requests] == ["partition-0:0-1:token-0:attempt-2"]
        # A second failure at the same start doubles the wait.
        run2 = add_run(instance, 0, DagsterRunStatus.STARTED)
        instance.report_run_failed(run2)
        assert plan_backlog(instance, kafka, s, now=time.time() + 31).run_requests == []
        retry = plan_backlog(instance, kafka, s, now=time.time() + 61).run_requests
        assert [r.run_key for r in retry] == ["partition-0:0-1:token-0:attempt-3"]
    finally:
        kafka.close()


def test_a_successful_run_clears_the_lag_seen_by_the_next_tick(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u")], partition=3)
    [request] = tick(instance, s).run_requests
    assert run_partition(instance, s, partition=3, end_offset=1).success
    result = tick(instance, s)
    assert result.run_requests == []
    assert result.asset_events[0].metadata["lag_partition_3"].value == 0
    assert request.partition_key == "3"


def test_a_new_partition_of_the_topic_is_added_and_drained(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    tick(instance, s)  # the first tick registers partitions 0-3
    instance.add_dynamic_partitions("kafka_partitions", ["0", "1", "2", "3"])
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    for fut in admin.create_partitions([NewPartitions(s.kafka_input_topic, 5)]).values():
        fut.result(30)
    produce(s, [event("p", "new")], partition=4)
    result = tick(instance, s)
    [request] = result.dynamic_partitions_requests
    assert list(request.partition_keys) == ["4"]
    assert [r.partition_key for r in result.run_requests] == ["4"]


def test_a_run_that_succeeded_without_moving_the_offset_is_a_failed_attempt(
    instance, kafka_topics: Settings
) -> None:
    """The guard against any cause of a loop of empty runs (a bad setting, a bug): a real run
    whose range is empty though the partition has records commits nothing, is tagged
    no_progress, and the sensor backs off as after a failure."""
    s = kafka_topics
    produce(s, [event("p", "u"), event("p", "v")], partition=0)
    result = run_partition(instance, s, end_offset=0)
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    assert run.tags["programuser/outcome"] == "no_progress"
    assert offsets(s).committed is None
    kafka = kafka_resource(s)
    try:
        plan = plan_backlog(instance, kafka, s)
        assert plan.run_requests == []
        assert plan.waiting[0].startswith("lag 2, 1 failed attempt(s) at offset 0, retrying in")
        later = plan_backlog(instance, kafka, s, now=time.time() + 31)
        assert [r.run_key for r in later.run_requests] == ["partition-0:0-2:token-0:attempt-2"]
    finally:
        kafka.close()


def test_a_superseded_run_is_not_a_failed_attempt(instance, kafka_topics: Settings) -> None:
    s = kafka_topics
    produce(s, [event("p", "u")], partition=0)
    add_run(instance, 0, DagsterRunStatus.SUCCESS, **{"programuser/outcome": "superseded"})
    add_run(instance, 0, DagsterRunStatus.FAILURE, token=7)  # another committed state's
    [request] = tick(instance, s).run_requests
    assert request.run_key == "partition-0:0-1:token-0:attempt-1"


def test_a_few_young_records_wait_for_the_trigger_and_the_tick_says_why(
    instance, kafka_topics: Settings
) -> None:
    s = dataclasses.replace(kafka_topics, trigger_lag_records=1000, trigger_age_s=300)
    produce(s, [event("p", f"u{i}") for i in range(3)], partition=2)
    result = tick(instance, s)
    assert result.run_requests == []
    assert result.skip_reason is not None
    reason = result.skip_reason.skip_message or ""
    assert reason.startswith("0 run(s) requested, total lag 3; partition 2: 3 records, oldest ")
    assert reason.endswith(" s, launches at 1,000 records or 300 s")


def test_a_record_as_old_as_the_age_or_a_lag_at_the_threshold_launches(
    instance, kafka_topics: Settings
) -> None:
    """The record times are the broker's (LogAppendTime), so "old" is the age scaled down."""
    s = dataclasses.replace(kafka_topics, trigger_lag_records=5, trigger_age_s=2)
    produce(s, [event("p", "old")], partition=0)
    time.sleep(2.2)  # partition 0's record is now older than the age
    produce(s, [event("p", "young")], partition=1)
    produce(s, [event("p", f"u{i}") for i in range(5)], partition=3)  # the threshold
    result = tick(instance, s)
    assert [(r.partition_key, r.run_key) for r in result.run_requests] == [
        ("0", "partition-0:0-1:token-0:attempt-1"), ("3", "partition-3:0-5:token-0:attempt-1")]
    assert result.skip_reason is None
    time.sleep(2.2)
    assert [r.partition_key for r in tick(instance, s).run_requests] == ["0", "1", "3"]


def test_the_lag_observation_is_recorded_on_a_change_or_every_few_minutes(
    instance, kafka_topics: Settings
) -> None:
    s = dataclasses.replace(kafka_topics, trigger_lag_records=10, trigger_age_s=300)
    first = tick(instance, s)
    assert len(first.asset_events) == 1  # nothing recorded yet
    assert first.cursor is not None and len(first.cursor) < 200
    produce(s, [event("p", f"u{i}") for i in range(3)], partition=0)
    gathering = tick(instance, s, first.cursor)
    assert gathering.asset_events == [] and gathering.cursor is None  # below the threshold
    produce(s, [event("p", f"v{i}") for i in range(7)], partition=0)
    backlog = tick(instance, s, first.cursor)  # a backlog now: the level changed
    [obs] = backlog.asset_events
    assert obs.metadata["lag_partition_0"].value == 10
    assert tick(instance, s, backlog.cursor).asset_events == []
    # The last recording 5 minutes ago: recorded again, so that "last observed" stays fresh.
    stale = read_cursor(backlog.cursor)
    stale["lag"][1] -= HEARTBEAT_S
    assert len(tick(instance, s, write_cursor(stale)).asset_events) == 1
