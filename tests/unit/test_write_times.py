"""Write times (programuser_dagster/core/clock.py) and what the IO manager makes of them
(row_writes): every column group of a merged row is written at the write time of the event that
wrote it last."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from programuser_dagster.cassandra.writes import row_writes
from programuser_dagster.core.clock import WriteClock
from programuser_dagster.core.events import COLUMN_GROUPS, COLUMNS, NOT_WRITTEN, flatten

BASE = 1_700_000_000_000_000


def _value(**fields: Any) -> bytes:
    return orjson.dumps({"programId": "p", "userId": "u", **fields})


def _rows(values: list[bytes], start: int = 0) -> Any:
    rows = flatten(enumerate(values, start)).rows
    rows["write_times"] = WriteClock(start, BASE).stamp(rows["writers"].tolist())
    return rows


def test_the_clock_starts_after_the_committed_one_and_never_behind_the_wall_clock() -> None:
    assert WriteClock.starting(10, committed_clock=0, now=500).base == 500
    assert WriteClock.starting(10, committed_clock=900, now=500).base == 901
    clock = WriteClock(10, 1000)
    assert [clock.at(o) for o in (10, 11, 15)] == [1000, 1001, 1005]
    # The commit of 16 records a clock above the last write (offset 15), and the next run
    # starts after it.
    assert clock.after(16) == 1006
    assert WriteClock.starting(16, clock.after(16), now=0).at(16) > clock.at(15)


def test_one_event_per_key_writes_every_group_at_its_time() -> None:
    rows = flatten([(5, _value(userProfile={"userLocations": []}))]).rows
    assert rows["writers"].tolist() == [(5, 5, None, None, None, None)]


def test_writers_remember_which_event_wrote_each_group_last() -> None:
    values = [
        _value(userProfile={"userLocations": [], "rootOrg": {"id": "o"}}, createdAt="2020-01-01"),
        _value(userProfile={"rootOrg": {"id": "o2"}}),
        _value(updatedAt="2021-01-01"),
    ]
    rows = flatten(enumerate(values)).rows
    assert len(rows) == 1
    # always-written, locations, organisation, user type, created_at, updated_at
    assert rows["writers"].tolist() == [(2, 0, 1, None, 0, 2)]
    assert len(COLUMN_GROUPS) == 6


def test_a_row_of_one_event_is_one_write_at_its_time() -> None:
    columns, extra = row_writes(_rows([_value(createdAt="2020-01-01")], start=7))
    assert extra == {}
    assert columns[-1] == [BASE]
    assert len(columns) == len(COLUMNS) + 1


def test_a_merged_row_is_one_write_per_event_with_only_that_events_groups() -> None:
    values = [
        _value(programName="old", userProfile={"rootOrg": {"id": "o1"}}, createdAt="2020-01-01"),
        _value(programName="mid", createdAt="2020-02-02"),
        _value(programName="new"),
    ]
    columns, extra = row_writes(_rows(values))
    writes = [dict(zip((*COLUMNS, "ts"), row, strict=True)) for row in zip(*columns, strict=True)]
    assert extra == {0: [1, 2]}
    by_time = {w["ts"]: w for w in writes}
    assert sorted(by_time) == [BASE, BASE + 1, BASE + 2]
    newest, middle, oldest = by_time[BASE + 2], by_time[BASE + 1], by_time[BASE]
    assert all((w["program_id"], w["user_id"]) == ("p", "u") for w in writes)
    assert newest["program_name"] == "new" and newest["created_at"] is NOT_WRITTEN
    assert newest["organisation_id"] is NOT_WRITTEN
    assert middle["created_at"].isoformat() == "2020-02-02"
    assert middle["program_name"] is NOT_WRITTEN
    assert oldest["organisation_id"] == "o1" and oldest["program_name"] is NOT_WRITTEN
    assert oldest["created_at"] is NOT_WRITTEN and oldest["organisation_name"] is None
    # Every cell of the merged row is written exactly once.
    for name in COLUMNS[2:]:
        written = [w[name] for w in writes if w[name] is not NOT_WRITTEN]
        assert len(written) <= 1, name


@pytest.mark.parametrize("n", [1, 3])
def test_rows_of_other_keys_keep_their_single_write(n: int) -> None:
    values = [orjson.dumps({"programId": "p", "userId": f"u{i}"}) for i in range(n)]
    columns, extra = row_writes(_rows(values, start=100))
    assert extra == {} and columns[-1] == [BASE + i for i in range(n)]
