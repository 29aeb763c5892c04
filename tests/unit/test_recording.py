"""When a sensor records what it sees: on a change, or at least every HEARTBEAT_S."""

from __future__ import annotations

from programuser_dagster.core.recording import (
    HEARTBEAT_S,
    due,
    lag_level,
    memo,
    read_cursor,
    write_cursor,
)


def test_the_first_time_and_a_change_are_recorded_the_same_is_not() -> None:
    seen = {"levels": {"0": 0, "1": 2}}
    assert due(None, seen, 100.0)
    last = read_cursor(write_cursor({"lag": memo(seen, 100.0)}))["lag"]
    assert not due(last, {"levels": {"0": 0, "1": 2}}, 100.0 + HEARTBEAT_S - 1)
    assert due(last, {"levels": {"0": 1, "1": 2}}, 101.0)


def test_the_same_is_recorded_again_after_the_heartbeat_or_a_clock_that_went_back() -> None:
    last = memo([True, "WARN"], 1000.0)
    assert due(last, [True, "WARN"], 1000.0 + HEARTBEAT_S)
    assert due(last, [True, "WARN"], 999.0)


def test_a_cursor_of_an_earlier_version_or_a_bad_one_reads_as_nothing_recorded() -> None:
    assert read_cursor(None) == read_cursor("") == read_cursor("(0, 0, 30)") == {}
    assert read_cursor("[1, 2]") == {}
    assert due(read_cursor("junk").get("lag"), {}, 0.0)
    assert due(["only one"], {}, 0.0)


def test_the_lag_level_is_0_below_the_threshold_then_one_per_doubling() -> None:
    assert [lag_level(n, 1000) for n in (0, 1, 999, 1000, 1999, 2000, 3999, 4000, 64_000)] == [
        0, 0, 0, 1, 1, 2, 2, 3, 7]
    assert [lag_level(n, 1) for n in (0, 1, 2, 3, 4)] == [0, 1, 2, 2, 3]
