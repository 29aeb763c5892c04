"""A committed offset beyond the log end (issue 24, item 3): a state of the pure offsets, which
planning and verify's report show rather than calling the partition caught up; and why a read
got nothing (item 9), which names the broker only when it did not answer."""

from __future__ import annotations

from programuser_dagster.core.offsets import PartitionOffsets, why_read_stalled
from programuser_dagster.core.planning import decide
from programuser_dagster.incidents.expected_cells import PartitionReport, VerifyReport

BEYOND = PartitionOffsets(partition=3, low=0, high=40, committed=55, token=2)
WARNING = ("committed offset 55 is beyond the log end 40: records below 55 will be skipped; "
           "to re-read them: `programuser-dagster replay --partition 3 --to-offset 40 --apply`")


def test_the_state_is_a_property_of_the_offsets() -> None:
    assert BEYOND.beyond_end and BEYOND.lag == 0
    assert BEYOND.beyond_end_warning() == WARNING
    for caught_up in (PartitionOffsets(0, 0, 40, 40), PartitionOffsets(0, 0, 40, None),
                      PartitionOffsets(0, 50, 60, 10)):  # at the end, never committed, retention
        assert not caught_up.beyond_end


def test_planning_never_calls_it_caught_up_and_launches_nothing() -> None:
    plan = decide([PartitionOffsets(0, 0, 10, 10), BEYOND], in_flight=(), failed_ends={},
                  now=0.0)
    assert plan.launches == []
    assert plan.waiting == {3: WARNING}
    assert "caught up" not in plan.summary()
    assert f"partition 3: {WARNING}" in plan.summary()
    assert decide([PartitionOffsets(0, 0, 10, 10)], (), {}, 0.0).summary().startswith(
        "Every partition is caught up")


def test_verify_fails_on_it_and_says_it() -> None:
    partition = PartitionReport(3, 0, 55, records=40, keys=7, beyond_end=WARNING)
    report = VerifyReport(partitions=[partition], records_read=40, records_not_written={},
                          keys_checked=7, rows_missing=0, missing_sample=[],
                          cells_differing={}, cell_samples={}, cells_unverified=0,
                          unverified_sample=[], keys_in_several_partitions=0)
    assert not report.ok
    assert report.describe().splitlines()[0] == (
        f"partition 3: {WARNING}; 40 records (from 0), 7 keys checked, 0 rows missing, "
        "0 cells differ")


def test_a_stalled_read_blames_the_broker_only_when_it_does_not_answer() -> None:
    assert why_read_stalled(7, 9, None).endswith("Is the broker up?")
    for high in (7, 9):  # at the position: the log ends there; past it: a transaction holds it
        assert "broker up" not in why_read_stalled(7, 9, high)
    assert why_read_stalled(7, 9, 7).startswith("because the partition ends at 7")
    assert "producer transaction still open" in why_read_stalled(7, 9, 9)
