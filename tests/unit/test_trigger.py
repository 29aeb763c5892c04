"""The trigger policy on plain data: a partition's first attempt waits for records or age."""

from __future__ import annotations

from programuser_dagster.core.offsets import PartitionOffsets
from programuser_dagster.core.planning import Launch, decide
from programuser_dagster.core.trigger import FUTURE_ALLOWANCE_S, Trigger

NOW = 1_000_000.0
TRIGGER = Trigger(lag_records=1000, age_s=300)


def lagging(partition: int, lag: int) -> PartitionOffsets:
    return PartitionOffsets(partition=partition, low=0, high=lag, committed=0, token=0)


def test_a_few_young_records_wait_and_the_tick_says_why_per_partition() -> None:
    plan = decide([lagging(2, 37), lagging(3, 5)], in_flight=(), failed_ends={}, now=NOW,
                  trigger=TRIGGER, ages_s={2: 84.4, 3: 0.2})
    assert plan.launches == []
    assert plan.waiting == {
        2: "37 records, oldest 84 s, launches at 1,000 records or 300 s",
        3: "5 records, oldest 0 s, launches at 1,000 records or 300 s",
    }
    assert plan.summary() == (
        "0 run(s) requested, total lag 42; "
        "partition 2: 37 records, oldest 84 s, launches at 1,000 records or 300 s; "
        "partition 3: 5 records, oldest 0 s, launches at 1,000 records or 300 s")


def test_a_lag_at_the_threshold_launches_however_young() -> None:
    plan = decide([lagging(0, 999), lagging(1, 1000), lagging(2, 5000)], in_flight=(),
                  failed_ends={}, now=NOW, trigger=TRIGGER, ages_s={0: 1, 1: 1, 2: 1})
    assert [lc.partition for lc in plan.launches] == [1, 2]
    assert list(plan.waiting) == [0]


def test_an_oldest_record_of_the_age_launches_however_few() -> None:
    plan = decide([lagging(0, 1), lagging(1, 1)], in_flight=(), failed_ends={}, now=NOW,
                  trigger=TRIGGER, ages_s={0: 299.9, 1: 300.0})
    assert plan.launches == [Launch(partition=1, start=0, end=1, token=0)]
    assert list(plan.waiting) == [0]


def test_a_due_retry_launches_below_the_threshold_and_age() -> None:
    """The back-off paces a failed range, not the trigger: a retry is not held back again."""
    ends = {0: [NOW - 31]}
    plan = decide([lagging(0, 3)], in_flight=(), failed_ends=ends, now=NOW,
                  trigger=TRIGGER, ages_s={0: 5})
    assert plan.launches == [Launch(partition=0, start=0, end=3, token=0, attempt=2)]
    early = decide([lagging(0, 3)], in_flight=(), failed_ends={0: [NOW - 10]}, now=NOW,
                   trigger=TRIGGER, ages_s={0: 500})
    assert early.launches == []
    assert early.waiting[0].startswith("lag 3, 1 failed attempt(s) at offset 0, retrying in")


def test_an_unknown_age_launches_rather_than_wait_forever() -> None:
    plan = decide([lagging(0, 3), lagging(1, 3)], in_flight=(), failed_ends={}, now=NOW,
                  trigger=TRIGGER, ages_s={0: None})
    assert [lc.partition for lc in plan.launches] == [0, 1]
    assert decide([lagging(0, 3)], in_flight=(), failed_ends={}, now=NOW, trigger=TRIGGER,
                  ages_s=None).launches == [Launch(partition=0, start=0, end=3, token=0)]


def test_a_record_time_far_in_the_future_is_not_believed() -> None:
    """A producer's clock ahead by an hour must not hold a partition back for an hour."""
    near = TRIGGER.wait_reason(3, -FUTURE_ALLOWANCE_S)
    assert near == "3 records, oldest 0 s, launches at 1,000 records or 300 s"
    assert TRIGGER.wait_reason(3, -FUTURE_ALLOWANCE_S - 1) is None


def test_without_a_trigger_any_lag_launches() -> None:
    """drain and the schedule: catch up now."""
    plan = decide([lagging(0, 1)], in_flight=(), failed_ends={}, now=NOW, ages_s={0: 0.0})
    assert plan.launches == [Launch(partition=0, start=0, end=1, token=0)]


def test_the_trigger_does_not_override_a_run_in_flight_or_a_hold() -> None:
    plan = decide([lagging(0, 5000)], in_flight={0}, failed_ends={}, now=NOW,
                  trigger=TRIGGER, ages_s={0: 1000})
    assert plan.launches == []
    assert plan.waiting == {0: "lag 5000, a run is queued or in progress"}
