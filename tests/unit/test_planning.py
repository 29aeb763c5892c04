"""The planning rule on plain data: which partitions get a run now, and why the others wait."""

from __future__ import annotations

import pytest

from programuser_dagster.core.offsets import PartitionOffsets
from programuser_dagster.core.planning import (
    RETRY_BASE_S,
    RETRY_MAX_S,
    Launch,
    decide,
    retry_wait_s,
)

NOW = 1_000_000.0


def at(partition: int, high: int, committed: int | None = None, low: int = 0,
       token: int = 0) -> PartitionOffsets:
    return PartitionOffsets(partition=partition, low=low, high=high, committed=committed,
                            token=token)


def test_a_partition_without_lag_gets_nothing() -> None:
    plan = decide([at(0, high=5, committed=5), at(1, high=0)], in_flight=(), failed_ends={},
                  now=NOW)
    assert plan.launches == []
    assert plan.waiting == {}


def test_a_partition_with_lag_gets_one_launch_up_to_the_high_watermark() -> None:
    plan = decide([at(0, high=9, committed=4, token=3), at(1, high=2, committed=2)],
                  in_flight=(), failed_ends={}, now=NOW)
    assert plan.launches == [Launch(partition=0, start=4, end=9, token=3, attempt=1)]
    assert plan.launches[0].run_key == "partition-0:4-9:token-3:attempt-1"
    assert plan.waiting == {}


def test_a_launch_starts_at_the_oldest_record_when_never_committed_or_past_retention() -> None:
    never = at(0, high=7, committed=None, low=2)
    lost = at(1, high=7, committed=1, low=5, token=2)
    plan = decide([never, lost], in_flight=(), failed_ends={}, now=NOW)
    assert [(lc.partition, lc.start, lc.end) for lc in plan.launches] == [(0, 2, 7), (1, 5, 7)]
    assert [lc.run_key for lc in plan.launches] == [
        "partition-0:2-7:token-0:attempt-1",
        "partition-1:5-7:token-2:attempt-1",
    ]


def test_a_partition_with_a_run_in_flight_waits_and_says_why() -> None:
    plan = decide([at(0, high=3), at(1, high=1)], in_flight={0}, failed_ends={}, now=NOW)
    assert [lc.partition for lc in plan.launches] == [1]
    assert plan.waiting == {0: "lag 3, a run is queued or in progress"}


def test_a_run_in_flight_wins_over_a_due_retry() -> None:
    plan = decide([at(0, high=3)], in_flight={0}, failed_ends={0: [NOW - 10_000]}, now=NOW)
    assert plan.launches == []
    assert plan.waiting == {0: "lag 3, a run is queued or in progress"}


def test_the_back_off_doubles_per_failed_attempt_up_to_its_cap() -> None:
    assert (RETRY_BASE_S, RETRY_MAX_S) == (30.0, 900.0)
    assert [retry_wait_s(n) for n in range(8)] == [0, 30, 60, 120, 240, 480, 900, 900]


@pytest.mark.parametrize(("failures", "wait"), [(1, 30), (2, 60), (3, 120), (5, 480), (7, 900)])
def test_a_failed_range_waits_its_back_off_then_launches_the_next_attempt(
    failures: int, wait: int
) -> None:
    ends = [NOW - 5_000.0] * (failures - 1) + [NOW]  # the latest failure ended at NOW
    offsets = [at(0, high=4, committed=1, token=6)]
    early = decide(offsets, in_flight=(), failed_ends={0: ends}, now=NOW + wait - 1)
    assert early.launches == []
    assert early.waiting == {
        0: f"lag 3, {failures} failed attempt(s) at offset 1, retrying in 1s"
    }
    due = decide(offsets, in_flight=(), failed_ends={0: ends}, now=NOW + wait)
    assert due.waiting == {}
    assert [lc.run_key for lc in due.launches] == [
        f"partition-0:1-4:token-6:attempt-{failures + 1}"
    ]


def test_the_back_off_counts_from_the_latest_failure() -> None:
    offsets = [at(0, high=2)]
    # Two failures: 60 s from the later one, whatever the order they are given in.
    plan = decide(offsets, in_flight=(), failed_ends={0: [NOW, NOW - 500]}, now=NOW + 45)
    assert plan.launches == []
    assert plan.waiting[0] == "lag 2, 2 failed attempt(s) at offset 0, retrying in 15s"


def test_a_failure_of_unknown_end_time_counts_as_long_ago() -> None:
    plan = decide([at(0, high=2)], in_flight=(), failed_ends={0: [None]}, now=NOW)
    assert [lc.run_key for lc in plan.launches] == ["partition-0:0-2:token-0:attempt-2"]


def test_a_new_committed_state_starts_the_count_afresh_under_its_token() -> None:
    """The caller passes the failures at the current state only: after a commit (token 4) the
    failures at token 3 are not passed, and the run key names the new state."""
    before = decide([at(0, high=9, committed=2, token=3)], in_flight=(),
                    failed_ends={0: [NOW - 10_000] * 2}, now=NOW)
    assert [lc.run_key for lc in before.launches] == ["partition-0:2-9:token-3:attempt-3"]
    after = decide([at(0, high=9, committed=5, token=4)], in_flight=(), failed_ends={0: []},
                   now=NOW)
    assert [lc.run_key for lc in after.launches] == ["partition-0:5-9:token-4:attempt-1"]


def test_failures_and_runs_of_caught_up_partitions_change_nothing() -> None:
    plan = decide([at(0, high=5, committed=5)], in_flight={0}, failed_ends={0: [NOW]}, now=NOW)
    assert plan.launches == []
    assert plan.waiting == {}


def test_the_summary_of_caught_up_partitions() -> None:
    plan = decide([at(0, high=5, committed=5), at(1, high=0)], in_flight=(), failed_ends={},
                  now=NOW)
    assert plan.summary() == "Every partition is caught up (2 partitions, lag 0)."


def test_the_summary_of_a_topic_without_partitions() -> None:
    assert decide([], in_flight=(), failed_ends={}, now=NOW).summary() == (
        "The input topic has no partitions."
    )


def test_the_summary_counts_launches_and_lag_and_says_why_the_others_wait() -> None:
    plan = decide(
        [at(2, high=1), at(0, high=3), at(1, high=4, committed=1), at(3, high=2, committed=2)],
        in_flight={0},
        failed_ends={2: [NOW - 10]},
        now=NOW,
    )
    assert [lc.partition for lc in plan.launches] == [1]
    assert plan.summary() == (
        "1 run(s) requested, total lag 7; "
        "partition 0: lag 3, a run is queued or in progress; "
        "partition 2: lag 1, 1 failed attempt(s) at offset 0, retrying in 20s"
    )


def test_a_launch_becomes_a_run_request_bounded_by_the_settings() -> None:
    """The live bug this guards: PROGRAMUSER_MAX_MESSAGES bounded drain's runs only."""
    from programuser_dagster.ingest.backlog import (
        launch_request,  # Dagster, but no instance or server
    )
    from programuser_dagster.settings import Settings

    settings = Settings.from_env({"PROGRAMUSER_MAX_MESSAGES": "3"})
    request = launch_request(Launch(partition=2, start=4, end=9, token=1, attempt=2), settings)
    assert request.run_key == "partition-2:4-9:token-1:attempt-2"
    assert request.partition_key == "2"
    config = request.run_config["ops"]["flatten_events"]["config"]
    assert (config["end_offset"], config["max_messages"]) == (9, 3)
    assert request.tags == {"programuser/start_offset": "4", "programuser/start_token": "1",
                            "programuser/end_offset": "9"}
