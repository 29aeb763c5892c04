"""The keep rules of a history prune on plain records (core/history.py)."""

from __future__ import annotations

import pytest

from programuser_dagster.core.history import (
    FAILED_ATTEMPT,
    IN_FLIGHT_REASON,
    LATEST_EVENT,
    NEWEST_SUCCESS,
    UNFINISHED_BACKFILL,
    Event,
    Protected,
    Run,
    cutoff,
    judge_events,
    judge_runs,
)

NOW = 2_000_000_000.0
OLDEST = cutoff(NOW, keep_days=14)
OLD, NEW = OLDEST - 3600, OLDEST + 3600
JOB = "program_user_info"


def run(run_id: str, status: str = "SUCCESS", ended: float = OLD, partition: str | None = "0",
        job: str = JOB, backfill: str | None = None) -> Run:
    return Run(run_id, job, partition, status, ended, backfill)


def test_cutoff_is_keep_days_before_now() -> None:
    assert cutoff(NOW, 14) == NOW - 14 * 86_400
    assert cutoff(NOW, 0.5) == NOW - 43_200


def test_an_old_run_no_rule_keeps_is_deleted_and_a_recent_one_stays() -> None:
    verdict = judge_runs([run("old", "FAILURE"), run("recent", "FAILURE", ended=NEW)],
                         Protected(), OLDEST)
    assert verdict.delete == ["old"]
    assert verdict.kept == {}


@pytest.mark.parametrize("status", ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"])
def test_a_run_in_flight_is_kept_however_old(status: str) -> None:
    verdict = judge_runs([run("r", status, ended=OLD - 30 * 86_400)], Protected(), OLDEST)
    assert verdict.delete == []
    assert verdict.kept == {IN_FLIGHT_REASON: 1}


def test_the_newest_success_of_each_partition_is_kept_when_all_are_old() -> None:
    runs = [run("p0-a", ended=OLD - 20), run("p0-b", ended=OLD - 10), run("p0-failed", "FAILURE"),
            run("p1-a", ended=OLD - 5, partition="1"), run("replay-a", job="replay",
                                                           partition=None)]
    verdict = judge_runs(runs, Protected(), OLDEST)
    assert sorted(verdict.delete) == ["p0-a", "p0-failed"]
    assert verdict.kept == {NEWEST_SUCCESS: 3}


def test_an_old_success_goes_when_the_instance_knows_a_newer_one() -> None:
    # A batch of old runs: the partition's newest success is recent, outside the batch.
    verdict = judge_runs([run("old")], Protected(newest_successes=[run("recent", ended=NEW)]),
                         OLDEST)
    assert verdict.delete == ["old"]


def test_failed_attempts_at_the_committed_state_are_kept() -> None:
    runs = [run("counted", "FAILURE"), run("earlier-state", "FAILURE"),
            run("no-progress", "SUCCESS", ended=OLD - 1), run("newest", ended=OLD)]
    verdict = judge_runs(runs, Protected(failed_attempts={"counted", "no-progress"}), OLDEST)
    assert verdict.delete == ["earlier-state"]
    assert verdict.kept == {FAILED_ATTEMPT: 2, NEWEST_SUCCESS: 1}


def test_runs_of_an_unfinished_backfill_are_kept_and_of_a_finished_one_deleted() -> None:
    runs = [run("b1-a", "FAILURE", backfill="b1"), run("b2-a", "FAILURE", backfill="b2")]
    verdict = judge_runs(runs, Protected(unfinished_backfills={"b1"}), OLDEST)
    assert verdict.delete == ["b2-a"]
    assert verdict.kept == {UNFINISHED_BACKFILL: 1}


def test_a_run_holding_an_assets_newest_materialization_is_kept() -> None:
    runs = [run("holds", "FAILURE"), run("other", "FAILURE")]
    verdict = judge_runs(runs, Protected(latest_events={"holds"}), OLDEST)
    assert verdict.delete == ["other"]
    assert verdict.kept == {LATEST_EVENT: 1}


def test_a_run_kept_by_several_rules_is_counted_once() -> None:
    verdict = judge_runs([run("r", "STARTED")], Protected(failed_attempts={"r"},
                                                           latest_events={"r"}), OLDEST)
    assert verdict.kept == {IN_FLIGHT_REASON: 1}


def test_old_events_go_except_the_newest_of_each_kind() -> None:
    events = [Event(1, "obs", OLD), Event(2, "check-a", OLD), Event(3, "obs", OLD),
              Event(4, "check-b", OLD), Event(5, "obs", NEW)]
    # check-a's newest is a recent row the instance found; check-b's is the old row 4.
    assert judge_events(events, {"check-a": 9}, OLDEST) == [1, 2, 3]


def test_the_newest_event_of_a_kind_stays_however_old() -> None:
    assert judge_events([Event(1, "obs", OLD - 90 * 86_400)], {}, OLDEST) == []


def test_a_planned_check_execution_stays_until_its_run_fills_it_in() -> None:
    events = [Event(1, "check", OLD, settled=False), Event(2, "check", OLD)]
    assert judge_events(events, {"check": 3}, OLDEST) == [2]
