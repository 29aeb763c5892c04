"""The commit step's decisions (ingest/commit_plan.py), without a server: whether a range goes
to the fence, what the run is tagged and says, and the clocks it commits."""

from __future__ import annotations

from programuser_dagster.core.clock import WriteClock
from programuser_dagster.core.report import RangeReport
from programuser_dagster.ingest.commit_plan import (
    Stop,
    committed_clock,
    committed_message,
    dead_letter_summary,
    letter_times,
    plan_commit,
    superseded,
)
from programuser_dagster.ingest.run_tags import HELD, NO_PROGRESS, SUPERSEDED

AGAIN = "Run it again."


def report(**kw: object) -> RangeReport:
    fields: dict[str, object] = {"partition": 3, "start": 10, "end": 20, "high_watermark": 20,
                                 "read_to_end": True}
    fields.update(kw)
    return RangeReport(**fields)  # type: ignore[arg-type]


def test_a_range_not_read_to_its_end_fails_before_anything_else() -> None:
    plan = plan_commit(report(read_to_end=False, superseded="x", requested_end=30), AGAIN)
    assert plan.failure == ("The range [10, 20) of partition 3 was not read to its end; nothing "
                            "was committed. Run it again.")
    assert (plan.end_tag, plan.warnings, plan.stop) == (None, [], None)


def test_a_balanced_range_goes_to_the_fence_with_nothing_to_say() -> None:
    assert plan_commit(report(), AGAIN).stop is None
    assert plan_commit(report(), AGAIN).warnings == []


def test_a_range_cut_short_corrects_the_end_tag_and_says_why() -> None:
    plan = plan_commit(report(requested_end=50, dead_letters=[(11, "bad")], letter_bytes=99),
                       AGAIN)
    assert plan.end_tag == 20 and plan.stop is None
    assert plan.warnings == [
        "Partition 3: the range ends at 20, not 50: its dead letters reached 1 letters, 99 "
        "bytes, as many as one run sends; the next run goes on from there."]


def test_records_lost_while_reading_are_named_by_their_offsets() -> None:
    r = report()
    r.lose(12, 14)
    [warning] = plan_commit(r, AGAIN).warnings
    assert warning.startswith("Partition 3: retention deleted records of the range while this "
                              "run read it, before it got them: offsets [12, 14) ")


def test_a_superseded_range_stops_tagged_superseded() -> None:
    plan = plan_commit(report(superseded="another run committed"), AGAIN)
    assert plan.stop == Stop(SUPERSEDED, "Superseded: another run committed")
    assert superseded("why") == Stop(SUPERSEDED, "Superseded: why")


def test_superseded_outranks_held_which_outranks_an_empty_range() -> None:
    assert plan_commit(report(superseded="s", held="h"), AGAIN).stop.outcome == SUPERSEDED
    held = plan_commit(report(held="waits", end=10), AGAIN).stop
    assert held == Stop(HELD, "Partition 3 read nothing: waits")


def test_an_empty_range_with_records_past_it_is_no_progress() -> None:
    assert plan_commit(report(end=10, high_watermark=15), AGAIN).stop == Stop(
        NO_PROGRESS, "Partition 3: the range [10, 10) is empty though records reach 15; "
        "nothing was committed.")


def test_an_empty_range_at_the_end_is_said_without_a_tag() -> None:
    assert plan_commit(report(end=10, high_watermark=10), AGAIN).stop == Stop(
        None, "Partition 3 has nothing past 10.", warn=False)


def test_letters_get_write_times_only_from_a_report_with_a_base() -> None:
    clock, write_time = letter_times(report(write_base=1_000))
    assert write_time is not None and write_time(12) == clock.at(12) == 1_002
    assert letter_times(report(write_base=0))[1] is None


def test_the_committed_clock_is_past_every_write_and_a_range_length_past_now() -> None:
    r = report(write_base=1_000)
    clock = WriteClock(r.start, r.write_base)
    assert committed_clock(clock, r, now_us=0) == clock.after(20)
    assert committed_clock(clock, r, now_us=5_000) == 5_010


def test_what_a_committed_run_says() -> None:
    r = report(read=2, written=2)
    assert dead_letter_summary(r, "dlq") is None
    r.dead_letters, r.dead_lettered = [(11, "bad")], {"bad": 1}
    assert dead_letter_summary(r, "dlq") == "Dead-lettered 1 messages to 'dlq': {'bad': 1}"
    assert committed_message(r, {}, 7) == (f"Committed 20: {r.describe()}; lag left unknown "
                                           "records, unknown s; fence token 7.")
    assert committed_message(r, {"lag_left": 0, "lag_left_s": 0.0}, 7).endswith(
        "lag left 0 records, 0.0 s; fence token 7.")
