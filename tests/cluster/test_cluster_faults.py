"""Faults a cluster has (issue 14), each against the real three-node Cassandra and three brokers.

After each: the table equals what a clean run makes of the same messages (read at ALL, every
node back), and the successful runs' ranges tile the partition with
read == written + skipped + dead-lettered. Each test records what it measured (conftest: measured).

`make test-cluster` (CI) runs these but the `cluster_full` ones; `make test-cluster-full` all.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from dagster import DagsterInstance

from devtools.samples import message_key, sample_events
from devtools.stack import cluster
from programuser_dagster.settings import Settings
from tests.support.cluster_faults import bring_back, partitioned, unreachable
from tests.support.faults import RunInThread, assert_ranges_tile, wait_for
from tests.support.pipeline import (
    all_rows,
    expected_rows,
    failure_text,
    offsets,
    row,
    run_partition,
)

pytestmark = pytest.mark.cluster

EVENTS = 40_000
CHUNK = 2_000  # many chunks: a fault lands between two chunks' writes, never after the last


def produce_backlog(s: Settings, n: int = EVENTS, bad_every: int = 0) -> list[bytes]:
    """n realistic events (every `bad_every`-th not JSON: a dead letter) to partition 0."""
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, "linger.ms": 20,
                         "acks": "all"})
    values = []
    for i, event in enumerate(sample_events(n, seed=11, programs=200)):
        value = orjson.dumps(event)
        if bad_every and i % bad_every == bad_every - 1:
            value = b"{not json " + str(i).encode()
        values.append(value)
        producer.produce(s.kafka_input_topic, value=value, key=message_key(event), partition=0)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return values


def writes_underway(session: Any, s: Settings, values: list[bytes], share: float) -> Callable:
    """True once the row of the event at `share` of the backlog is in the table: the run's
    first chunks are written, the rest not yet."""
    target = orjson.loads(values[int(len(values) * share)])
    return lambda: row(session, s, target["programId"], target["userId"]) is not None


def run_into_backlog(
    instance: DagsterInstance, session: Any, s: Settings, values: list[bytes]
) -> tuple[RunInThread, float]:
    """Start a run of partition 0 in a thread; return it, and when it started, once a fifth of
    the backlog is written (the moment each fault lands)."""
    t0 = time.monotonic()
    run = RunInThread(lambda: run_partition(instance, s, chunk_messages=CHUNK))
    wait_for("the run's first writes", writes_underway(session, s, values, 0.2), 300)
    return run, t0


def quorum_answers(session: Any) -> bool:
    """True when a read at QUORUM succeeds (two of the three replicas up, as its coordinator
    sees them)."""
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    try:
        session.execute(SimpleStatement("SELECT role FROM system_auth.roles LIMIT 1",
                                        consistency_level=ConsistencyLevel.QUORUM), timeout=10)
    except Exception:
        return False
    return True


def assert_clean(instance: DagsterInstance, session: Any, s: Settings, values: list[bytes]):
    """The table a clean run gives, and ranges that tile the partition, balanced."""
    assert all_rows(session, s) == expected_rows(values)
    reports = assert_ranges_tile(instance, 0, len(values))
    assert offsets(s).committed == len(values)
    return reports


def test_a_cassandra_node_killed_mid_write_fails_no_run(
    cluster_settings: Settings, cassandra: Any, instance: DagsterInstance,
    measured: Callable[..., None],
) -> None:
    s = cluster_settings
    values = produce_backlog(s)
    run, t0 = run_into_backlog(instance, cassandra, s, values)
    killed_at = time.monotonic()
    cluster.signal_node("cassandra-1", signal.SIGKILL)  # the first contact point, too
    assert run.thread.is_alive(), "the run ended before the fault"
    result = run.join(600)
    took = time.monotonic() - t0
    assert result.success, failure_text(result)
    bring_back()  # so the table can be read at ALL
    assert_clean(instance, cassandra, s, values)
    measured("a: cassandra-1 SIGKILLed mid-write", events=len(values),
             killed_after_s=round(killed_at - t0, 1), run_s=round(took, 1), failed_runs=0)


@pytest.mark.cluster_full
def test_b_cassandra_node_stalled_past_the_request_timeout(
    cluster_settings: Settings, cassandra: Any, instance: DagsterInstance,
    measured: Callable[..., None],
) -> None:
    s = cluster_settings
    values = produce_backlog(s)
    stall_s = s.cassandra_request_timeout_s + 10
    run, t0 = run_into_backlog(instance, cassandra, s, values)
    cluster.signal_node("cassandra-2", signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        assert run.thread.is_alive(), "the run ended before the fault"
        result = run.join(120 + stall_s)
        took = time.monotonic() - t0  # the run's own time, not the stall's
    finally:
        time.sleep(max(0.0, stall_s - (time.monotonic() - stopped)))
        cluster.signal_node("cassandra-2", signal.SIGCONT)
    outcome = "succeeded" if result.success else "failed: " + failure_text(result)[:300]
    if not result.success:
        assert took < 120 + (stopped - t0), f"the run took {took:.0f} s to fail"
        assert not offsets(s).committed
        bring_back()
        retry = run_partition(instance, s, chunk_messages=CHUNK)
        assert retry.success, failure_text(retry)
    bring_back()
    assert_clean(instance, cassandra, s, values)
    measured("b: cassandra-2 SIGSTOPped past the request timeout", stall_s=stall_s,
             request_timeout_s=s.cassandra_request_timeout_s, run=outcome,
             run_s=round(took, 1), failed_runs=0 if result.success else 1)


@pytest.mark.cluster_full
def test_c_cassandra_node_partitioned_fails_no_run(
    cluster_settings: Settings, cassandra: Any, instance: DagsterInstance,
    measured: Callable[..., None],
) -> None:
    s = cluster_settings
    values = produce_backlog(s)
    run, t0 = run_into_backlog(instance, cassandra, s, values)
    with partitioned("cassandra-3"):
        cut = time.monotonic()
        assert run.thread.is_alive(), "the run ended before the fault"
        assert unreachable("127.0.0.13", cluster.CQL_PORT)  # dropped, not refused
        result = run.join(600)
        took = time.monotonic() - t0
    assert result.success, failure_text(result)
    bring_back()  # healed: every node back in the ring before the table is read at ALL
    assert_clean(instance, cassandra, s, values)
    measured("c: cassandra-3 partitioned (nftables)", cut_after_s=round(cut - t0, 1),
             run_s=round(took, 1), failed_runs=0)


def test_d_two_cassandra_nodes_down_fail_the_run_cleanly(
    cluster_settings: Settings, cassandra: Any, instance: DagsterInstance,
    measured: Callable[..., None],
) -> None:
    s = cluster_settings
    values = produce_backlog(s)
    run, _ = run_into_backlog(instance, cassandra, s, values)
    down_at = time.monotonic()
    cluster.signal_node("cassandra-2", signal.SIGKILL)
    cluster.signal_node("cassandra-3", signal.SIGKILL)
    assert run.thread.is_alive(), "the run ended before the fault"
    result = run.join(300)
    failed_after = time.monotonic() - down_at
    assert not result.success
    text = failure_text(result)
    assert failed_after < 120, f"the run took {failed_after:.0f} s to fail"
    assert "quorum of replicas is not available" in text, text[-2000:]
    assert not offsets(s).committed  # nothing committed (none yet, or 0)
    back = time.monotonic()
    cluster.start_node("cassandra-2")
    wait_for("a quorum again", lambda: quorum_answers(cassandra), 120, every=1.0)
    retry = run_partition(instance, s, chunk_messages=CHUNK)
    assert retry.success, failure_text(retry)
    recovered = time.monotonic() - back
    bring_back()
    assert_clean(instance, cassandra, s, values)
    measured("d: two Cassandra nodes SIGKILLed", failed_after_s=round(failed_after, 1),
             committed_before_recovery=0, node_back_to_run_done_s=round(recovered, 1))


def test_e_leader_broker_killed_mid_run(
    cluster_settings: Settings, cassandra: Any, instance: DagsterInstance,
    measured: Callable[..., None],
) -> None:
    s = cluster_settings
    values = produce_backlog(s, bad_every=97)  # dead letters cross the leadership change too
    leader = cluster.leader(s.kafka_input_topic, 0)
    run, t0 = run_into_backlog(instance, cassandra, s, values)
    cluster.signal_node(leader.name, signal.SIGKILL)
    assert run.thread.is_alive(), "the run ended before the fault"
    result = run.join(600)
    took = time.monotonic() - t0
    runs = 1
    outcome = "succeeded" if result.success else "failed: " + failure_text(result)[:300]
    if not result.success:  # failed cleanly: the next run (the sensor's retry) completes
        assert not offsets(s).committed
        runs += 1
        retry = run_partition(instance, s, chunk_messages=CHUNK)
        assert retry.success, failure_text(retry)
    new_leader = cluster.leader(s.kafka_input_topic, 0)
    assert new_leader != leader
    bring_back()
    reports = assert_clean(instance, cassandra, s, values)
    assert sum(r["messages_dead_lettered"] for r in reports) == len(values) // 97
    measured("e: leader broker SIGKILLed mid-run", killed=leader.name, run=outcome,
             run_s=round(took, 1), runs=runs, new_leader=new_leader.name,
             dead_letters=len(values) // 97)
