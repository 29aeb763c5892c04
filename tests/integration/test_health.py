"""The health rules behind the asset checks, on real runs against the real servers."""

from __future__ import annotations

import dataclasses
import time

import pytest
from dagster import AssetCheckSeverity

from programuser_dagster.core.recording import HEARTBEAT_S, read_cursor, write_cursor
from programuser_dagster.ingest import checks
from programuser_dagster.settings import Settings
from tests.support.pipeline import event, health_tick, produce, run_partition

pytestmark = pytest.mark.stack


def evaluate(instance, s: Settings) -> dict[str, object]:
    result, _ = health_tick(instance, s)
    return {e.check_name: e for e in result.asset_events}


def test_a_healthy_run_passes_every_check(instance, kafka_topics: Settings) -> None:
    s = kafka_topics
    produce(s, [event("p", f"u{i}") for i in range(20)])
    assert run_partition(instance, s).success
    verdicts = evaluate(instance, s)
    assert {name: ev.passed for name, ev in verdicts.items()} == {
        checks.ACCOUNTING_CHECK: True,
        checks.DEAD_LETTER_SHARE_CHECK: True,
        checks.STALLED_CHECK: True,
        checks.MATCHES_SOURCE_CHECK: True,
    }


def test_a_run_with_many_dead_letters_warns(instance, kafka_topics: Settings) -> None:
    s = kafka_topics
    produce(s, [event("p", "u1"), b"not json", b"[]", event("p", "u2")])
    assert run_partition(instance, s).success
    check = evaluate(instance, s)[checks.DEAD_LETTER_SHARE_CHECK]
    assert (check.passed, check.severity) == (False, AssetCheckSeverity.WARN)
    assert check.metadata["dead_letter_share"].value == 0.5
    assert "50.0% of the last run's 4 messages" in check.description


def test_lag_without_a_recent_successful_run_warns(instance, kafka_topics: Settings) -> None:
    s = dataclasses.replace(kafka_topics, stall_warn_s=60)
    produce(s, [event("p", "u")], partition=0)
    assert run_partition(instance, s, partition=0).success
    produce(s, [event("p", "v")], partition=0)  # new lag, but a run succeeded just now
    assert evaluate(instance, s)[checks.STALLED_CHECK].passed
    produce(s, [event("p", "w")], partition=2)  # lag on a partition that never ran
    check = evaluate(instance, s)[checks.STALLED_CHECK]
    assert not check.passed
    assert check.metadata["stalled_partitions"].value == {"2": 1}


def test_accounting_fails_on_an_unbalanced_run() -> None:
    runs = [
        {"messages_read": 3, "messages_written": 3, "messages_skipped": 0,
         "messages_dead_lettered": 0, "partition": 1, "start_offset": 0, "end_offset": 3},
        {"messages_read": 5, "messages_written": 3, "messages_skipped": 1,
         "messages_dead_lettered": 0, "partition": 2, "start_offset": 10, "end_offset": 15},
    ]
    verdict = checks.accounting(runs)
    assert not verdict.passed
    assert verdict.severity == AssetCheckSeverity.ERROR
    assert "partition 2 offsets [10, 15)" in verdict.description
    assert checks.accounting(runs[:1]).passed


def test_a_partition_gathering_for_the_trigger_is_not_stalled(
    instance, kafka_topics: Settings
) -> None:
    """A quiet partition's first records wait for the trigger's age: not lag without progress.
    Once they are older than the age, they are."""
    s = dataclasses.replace(kafka_topics, stall_warn_s=60, trigger_lag_records=1000,
                            trigger_age_s=300)
    produce(s, [event("p", "w")], partition=2)  # a partition that never ran
    assert evaluate(instance, s)[checks.STALLED_CHECK].passed
    time.sleep(0.6)
    old = dataclasses.replace(s, trigger_age_s=0.5)
    check = evaluate(instance, old)[checks.STALLED_CHECK]
    assert not check.passed
    assert check.metadata["stalled_partitions"].value == {"2": 1}


def test_the_checks_are_recorded_when_they_change_or_every_few_minutes(
    instance, kafka_topics: Settings
) -> None:
    s = dataclasses.replace(kafka_topics, stall_warn_s=60)
    first, cursor = health_tick(instance, s)
    assert {e.check_name for e in first.asset_events} == {
        checks.ACCOUNTING_CHECK, checks.DEAD_LETTER_SHARE_CHECK, checks.STALLED_CHECK}
    assert cursor is not None and len(cursor) < 400
    again, cursor = health_tick(instance, s, cursor)
    assert again.asset_events == []  # nothing changed
    produce(s, [event("p", "w")], partition=2)  # lag, and no run ever: stalled
    changed, cursor = health_tick(instance, s, cursor)
    assert [(e.check_name, e.passed) for e in changed.asset_events] == [
        (checks.STALLED_CHECK, False)]
    stale = read_cursor(cursor)
    for name in stale["checks"]:
        stale["checks"][name][1] -= HEARTBEAT_S
    heartbeat, _ = health_tick(instance, s, write_cursor(stale))
    assert len(heartbeat.asset_events) == 3
