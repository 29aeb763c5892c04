"""Partitions added to the input topic (programuser_dagster/core/growth.py), against the real broker
and Cassandra: a key's row ends as its latest event, whatever order the old and the new partitions'
runs come in."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient, NewPartitions

from programuser_dagster.core.clock import now_us
from programuser_dagster.incidents import replay
from programuser_dagster.ingest.drain import drain
from programuser_dagster.ingest.job import kafka_partitions
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings
from tests.support.pipeline import event, offsets, produce, row, run_partition, tick

pytestmark = pytest.mark.stack


def _grown(make_test_settings: Callable[..., Settings], instance,
           ahead_us: int = 0) -> Settings:
    """A one-partition topic that ingestion has committed on (v0), with v1 of the key in its
    backlog; then a second partition, which holds v2 of the key (the broker appended it last).
    `ahead_us`: partition 0's committed clock is that far ahead of the wall clock (a replay ran
    it ahead), and its backlog has two events of other keys before v1."""
    s = make_test_settings(partitions=1)
    produce(s, [event("p", "u", programName="v0")], partition=0)
    assert run_partition(instance, s, partition=0).success
    if ahead_us:
        kafka = kafka_resource(s)
        try:
            o = kafka.partition_offsets(0)
            with kafka.fenced_commit(0, o.state) as txn:
                txn.commit(o.next_offset, clock=now_us() + ahead_us, partitions=1)
        finally:
            kafka.close()
        produce(s, [event("p", "a"), event("p", "b")], partition=0)
    produce(s, [event("p", "u", programName="v1")], partition=0)
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    for fut in admin.create_partitions([NewPartitions(s.kafka_input_topic, 2)]).values():
        fut.result(30)
    deadline = time.monotonic() + 30  # the new partition has a leader before we produce to it
    while 1 not in admin.list_topics(s.kafka_input_topic, timeout=10).topics[
            s.kafka_input_topic].partitions:
        assert time.monotonic() < deadline, "partition 1 did not appear"
        time.sleep(0.2)
    # Keyed by programId:userId, a producer with the new count may send the key to partition
    # 1: produced there explicitly so the test does not depend on the hash.
    produce(s, [event("p", "u", programName="v2")], partition=1)
    instance.add_dynamic_partitions(kafka_partitions.name or "", ["1"])
    return s


def _name(cassandra_session, s: Settings) -> str | None:
    found = row(cassandra_session, s, "p", "u")
    return None if found is None else found["program_name"]


@pytest.mark.parametrize("new_first", [True, False], ids=["new-partition-first", "old-first"])
def test_runs_in_either_order_end_with_the_latest_event(
    instance, make_test_settings, cassandra_session, new_first: bool
) -> None:
    s = _grown(make_test_settings, instance)
    if new_first:
        # Launched directly (the Launchpad, a re-execution): held, it reads and commits nothing.
        held = run_partition(instance, s, partition=1)
        assert held.success
        assert instance.get_run_by_id(held.run_id).tags["programuser/outcome"] == "held"
        assert _name(cassandra_session, s) == "v0"
        claim = offsets(s, 1)
        assert (claim.committed, claim.barrier, claim.partitions) == (0, ((0, 2),), 2)
    assert run_partition(instance, s, partition=0).success
    assert _name(cassandra_session, s) == "v1"
    assert run_partition(instance, s, partition=1).success
    assert _name(cassandra_session, s) == "v2"
    after = offsets(s, 1)
    assert (after.committed, after.barrier, after.partitions) == (1, (), 2)


def test_the_sensor_launches_the_new_partition_once_the_old_backlog_is_committed(
    instance, make_test_settings, cassandra_session
) -> None:
    s = _grown(make_test_settings, instance)
    first = tick(instance, s)
    assert [r.partition_key for r in first.run_requests] == ["0"]
    [request] = first.run_requests
    assert run_partition(instance, s, partition=0,
                         end_offset=request.run_config["ops"]["flatten_events"]["config"]
                         ["end_offset"]).success
    second = tick(instance, s)
    assert [r.partition_key for r in second.run_requests] == ["1"]
    assert run_partition(instance, s, partition=1).success
    assert _name(cassandra_session, s) == "v2"


def test_drain_holds_the_new_partition_until_the_old_backlog_is_committed(
    instance, make_test_settings, cassandra_session
) -> None:
    s = _grown(make_test_settings, instance)
    lines: list[str] = []
    alone = drain(instance, s, say=lines.append, only={1})
    assert alone.runs == [] and alone.failed == 0
    assert alone.skipped[1].startswith("held until partition 0 commits offset 2 (it is at 1)")
    assert lines == [f"partition 1: skipped, {alone.skipped[1]}"]
    assert _name(cassandra_session, s) == "v0"
    both = drain(instance, s, say=lines.append)
    assert [(p, ok) for p, ok, _ in both.runs] == [(0, True), (1, True)]
    assert _name(cassandra_session, s) == "v2"


def test_a_fresh_topic_holds_no_partition(
    instance, make_test_settings, cassandra_session
) -> None:
    """The first commits of a deployment record the count: the other partitions' first runs
    are not held behind the backlog that partition 0 still has."""
    s = make_test_settings(partitions=2)
    produce(s, [event("p", "a"), event("p", "b")], partition=0)
    produce(s, [event("p", "c")], partition=1)
    assert run_partition(instance, s, partition=0, end_offset=1).success
    assert offsets(s, 0).partitions == 2
    result = run_partition(instance, s, partition=1)
    assert instance.get_run_by_id(result.run_id).tags["programuser/outcome"] == "committed"
    assert offsets(s, 1).committed == 1


def test_the_new_partition_writes_after_an_old_partition_whose_clock_ran_ahead(
    instance, make_test_settings, cassandra_session
) -> None:
    """Partition 0's clock is a minute ahead of the wall clock, so v1 is written a minute
    ahead: the new partition's first run starts its clock above partition 0's, and v2 wins.
    (A minute is beyond the default clock-skew bound, which would refuse both runs: raised.)"""
    s = _grown(make_test_settings, instance, ahead_us=60_000_000)
    assert run_partition(instance, s, partition=0, clock_skew_max_s=120).success
    assert _name(cassandra_session, s) == "v1"
    assert run_partition(instance, s, partition=1, clock_skew_max_s=120).success
    assert _name(cassandra_session, s) == "v2"
    written = cassandra_session.execute(
        f"SELECT WRITETIME(program_name) AS t FROM {s.cassandra_keyspace}.{s.cassandra_table} "
        "WHERE program_id='p' AND user_id='u'").one().t
    assert written > offsets(s, 0).clock  # above every write of partition 0's runs


def test_a_replay_keeps_the_known_count(instance, make_test_settings) -> None:
    """A rewind commits through the fence too: it carries the count forward, so partitions
    added after it are still recognised as new."""
    s = make_test_settings(partitions=1)
    produce(s, [event("p", "a"), event("p", "b")], partition=0)
    assert run_partition(instance, s, partition=0).success
    kafka = kafka_resource(s)
    try:
        replay.apply(kafka, replay.plan(kafka, [0], replay.Target(offset=0), {}), lambda _: None)
    finally:
        kafka.close()
    rewound = offsets(s, 0)
    assert (rewound.committed, rewound.partitions) == (0, 1)
