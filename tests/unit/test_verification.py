"""The pure store of verify (programuser_dagster/incidents/expected_cells.py): expected cells, last
writers, comparison."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from cassandra.cqltypes import UTF8Type
from cassandra.util import Date, OrderedMapSerializedKey

from programuser_dagster.incidents.expected_cells import (
    Differences,
    ExpectedCells,
    PartitionReport,
    canonical,
    digest,
)

KEY = ("p1", "u1")


def ev(**fields: Any) -> bytes:
    return orjson.dumps({"programId": "p1", "userId": "u1", **fields})


def full(**fields: Any) -> bytes:
    """An event writing every group."""
    event = {
        "programName": "Name A",
        "programExternalId": "EXT-A",
        "requestForPIIConsent": True,
        "userProfile": {
            "userLocations": [{"type": "state", "name": "Kerala", "id": "s1", "code": "32"}],
            "rootOrg": {"id": "o1", "orgName": "Org One"},
            "profileUserTypes": [{"type": "administrator", "subType": "hm"}],
        },
        "createdAt": "2023-01-12T06:30:56.829Z",
        "updatedAt": "2023-03-01T00:00:00Z",
    }
    event.update(fields)
    return ev(**event)


def driver_map(items: dict[str, str]) -> OrderedMapSerializedKey:
    """A map column as the driver returns it (in the order Cassandra sorts its keys)."""
    found = OrderedMapSerializedKey(UTF8Type, 5)
    for k, v in sorted(items.items()):
        found._insert_unchecked(k, k.encode(), v)
    return found


# What Cassandra holds after full(): as the driver returns it.
def cassandra_row(**changes: Any) -> dict[str, Any]:
    row = {
        "program_id": "p1",
        "user_id": "u1",
        "program_externalid": "EXT-A",
        "program_name": "Name A",
        "pii_consent_required": True,
        "user_locations": driver_map({"state_name": "Kerala", "state_id": "s1",
                                      "state_code": "32"}),
        "organisation_id": "o1",
        "organisation_name": "Org One",
        "user_type": "administrator",
        "user_sub_type": "HM",
        "created_at": Date(dt.date(2023, 1, 12)),
        "updated_at": Date(dt.date(2023, 3, 1)),
    }
    row.update(changes)
    return row


@pytest.fixture
def store(tmp_path) -> Iterator[ExpectedCells]:
    # Two pending keys at most: the file's merge (SQL) is exercised, not only the memory's.
    with ExpectedCells(tmp_path, pending_keys=2) as s:
        yield s


def keys(store: ExpectedCells, **kwargs: Any) -> list[tuple[str, str]]:
    return [k for batch in store.keys_batches(2, **kwargs) for k in batch]


def compare(store: ExpectedCells, rows: dict) -> Differences:
    return store.compare(rows)


def test_a_matching_row_has_no_difference(store: ExpectedCells) -> None:
    store.add(0, 0, 1000, full())
    assert keys(store) == [KEY]
    found = compare(store, {KEY: cassandra_row()})
    assert (found.keys_checked, found.rows_missing, sum(found.cells_differing.values())) == (
        1, 0, 0)


# Each rule holds for records merged in memory and for records merged in the file (SQL).
in_memory_or_file = pytest.mark.parametrize("flush_each", [False, True],
                                            ids=["in_memory", "in_file"])


def feed(store: ExpectedCells, flush_each: bool, *records: tuple[int, int, int, Any]) -> None:
    for record in records:
        store.add(*record)
        if flush_each:
            store.flush()


@in_memory_or_file
def test_within_a_partition_the_last_writer_of_a_group_wins(
    store: ExpectedCells, flush_each: bool
) -> None:
    feed(store, flush_each,
         (0, 0, 5000, full(programName="Old")),
         (0, 1, 1000, full(programName="New")))  # an older timestamp: offsets decide
    assert not compare(store, {KEY: cassandra_row(program_name="New")}).cells_differing
    found = compare(store, {KEY: cassandra_row(program_name="Old")})
    assert found.cells_differing == {"program_name": 1}
    assert found.cell_samples == {"program_name": [(0, 1)]}


def test_records_fed_out_of_order_still_keep_the_highest_offset(store: ExpectedCells) -> None:
    store.add(0, 7, 0, full(programName="New"))
    store.add(1, 0, 0, ev(programId="other", userId="x"))  # flushes the first key
    store.add(2, 0, 0, ev(programId="other", userId="y"))
    store.add(0, 3, 0, full(programName="Old"))  # merged in the file, lower offset: loses
    assert not compare(store, {KEY: cassandra_row(program_name="New")}).cells_differing


@in_memory_or_file
def test_a_group_a_later_event_leaves_alone_keeps_its_earlier_writer(
    store: ExpectedCells, flush_each: bool
) -> None:
    feed(store, flush_each,
         (0, 0, 0, full()),
         (0, 20, 0, ev(programName="Name B", userProfile={"rootOrg": {"id": "o2"}})))
    expected = cassandra_row(program_name="Name B", program_externalid=None,
                             pii_consent_required=False, organisation_id="o2",
                             organisation_name=None)
    assert not compare(store, {KEY: expected}).cells_differing
    # user_locations was last written by offset 0, the organisation by offset 20
    found = compare(store, {KEY: {**expected, "user_locations": None,
                                  "organisation_name": "Org One"}})
    assert found.cells_differing == {"user_locations": 1, "organisation_name": 1}
    assert found.cell_samples == {"user_locations": [(0, 0)], "organisation_name": [(0, 20)]}


def test_a_column_no_retained_event_writes_is_not_checked(store: ExpectedCells) -> None:
    store.add(0, 0, 0, ev(programName="A"))  # no group, no date
    row = cassandra_row(program_name="A", program_externalid=None, pii_consent_required=False)
    assert not compare(store, {KEY: row}).cells_differing  # groups hold whatever they hold


@pytest.mark.parametrize("value", [b"", None, b"not json", b"[1]", ev(userId="  "),
                                   ev(createdAt="12/01/2023")])
def test_a_rejected_or_skipped_event_writes_nothing(store: ExpectedCells, value) -> None:
    store.add(0, 0, 0, full())
    store.add(0, 1, 0, value)
    assert keys(store) == [KEY]
    assert not compare(store, {KEY: cassandra_row()}).cells_differing
    assert sum(store.not_written.values()) == 1
    assert store.records[0] == 2


def test_only_rejected_events_give_no_key(store: ExpectedCells) -> None:
    store.add(0, 0, 0, b"{")
    assert keys(store) == []


def test_a_missing_row_is_reported_with_its_last_event(store: ExpectedCells) -> None:
    store.add(0, 4, 0, full())
    store.add(0, 9, 0, ev(programName="B"))
    found = compare(store, {KEY: None})
    assert (found.rows_missing, found.missing_sample) == (1, [(0, 9)])
    assert not found.cells_differing
    assert found.partitions[0].rows_missing == 1


def test_a_difference_names_column_and_offset_and_no_value(store: ExpectedCells) -> None:
    secret = "Jane Secret-Doe"
    store.add(3, 41, 0, full(programName=secret))
    store.add(3, 42, 0, ev(programId="p2", userId="u2", programName=secret))
    found = compare(store, {KEY: cassandra_row(program_name="tampered"),
                            ("p2", "u2"): None})
    assert found.cells_differing == {"program_name": 1}
    assert found.cell_samples == {"program_name": [(3, 41)]}
    report = store.report([PartitionReport(3, 0, 43)], found)
    assert report.cells_differing == {"program_name": 1}
    assert (report.rows_missing, report.missing_sample) == (1, [(3, 42)])
    assert not report.ok
    for text in (repr(report), report.describe(), repr(found)):
        for value in (secret, "tampered", "p1", "u1", "p2", "u2", "Kerala", "EXT-A"):
            assert value not in text
    assert "program_name: 1 cells differ" in report.describe()
    assert "3/41" in report.describe() and "3/42" in report.describe()


def test_an_empty_map_equals_null(store: ExpectedCells) -> None:
    store.add(0, 0, 0, full(userProfile={"userLocations": []}))
    assert not compare(store, {KEY: cassandra_row(user_locations=None)}).cells_differing
    assert compare(store, {KEY: cassandra_row()}).cells_differing == {"user_locations": 1}
    assert canonical({}) == canonical(None)


def test_maps_compare_by_items_whatever_their_order() -> None:
    assert digest({"a": "1", "b": "2"}) == digest({"b": "2", "a": "1"})
    assert digest(driver_map({"b": "2", "a": "1"})) == digest({"b": "2", "a": "1"})
    assert digest({"a": "1"}) != digest({"a": "2"})


def test_dates_compare_by_calendar_day(store: ExpectedCells) -> None:
    # 02:00 at +05:30 is the day before in UTC
    store.add(0, 0, 0, full(createdAt="2023-01-12T02:00:00+05:30"))
    assert not compare(store, {KEY: cassandra_row(created_at=Date(dt.date(2023, 1, 11)))}
                       ).cells_differing
    assert not compare(store, {KEY: cassandra_row(created_at=dt.date(2023, 1, 11))}
                       ).cells_differing
    assert not compare(store, {KEY: cassandra_row(created_at=dt.datetime(2023, 1, 11, 23))}
                       ).cells_differing
    assert compare(store, {KEY: cassandra_row(created_at=Date(dt.date(2023, 1, 12)))}
                   ).cells_differing == {"created_at": 1}
    assert digest(Date(dt.date(1, 1, 1))) == digest(dt.date(1, 1, 1))


def test_types_are_kept_apart() -> None:
    assert digest("2023-01-12") != digest(dt.date(2023, 1, 12))
    assert digest("true") != digest(True)
    assert digest("") != digest(None)


@in_memory_or_file
def test_across_partitions_the_later_timestamp_wins_ties_by_partition_and_offset(
    store: ExpectedCells, flush_each: bool
) -> None:
    feed(store, flush_each,
         (1, 0, 2000, full(programName="Later")),
         (0, 9, 1000, full(programName="Earlier")),  # higher offset, but older
         (2, 5, 3000, ev(userId="u9")))
    assert not compare(store, {KEY: cassandra_row(program_name="Later")}).cells_differing
    assert store.keys_in_several_partitions() == 1
    # a tie on the timestamp: the higher (partition, offset)
    feed(store, flush_each,
         (2, 0, 2000, full(programName="Tie on p2")),
         (0, 10, 2000, full(programName="Tie on p0")))
    assert not compare(store, {KEY: cassandra_row(program_name="Tie on p2")}).cells_differing


def test_the_recheck_sees_only_the_keys_that_differed(store: ExpectedCells) -> None:
    for user in ("a", "b", "c"):
        store.add(0, ord(user), 0, ev(userId=user, programName="N"))
    row = {"program_externalid": None, "program_name": "N", "pii_consent_required": False}
    first = compare(store, {("p1", "a"): row, ("p1", "b"): None,
                            ("p1", "c"): {**row, "program_name": "X"}})
    assert (first.keys_checked, first.differing_keys) == (3, 2)
    assert keys(store, differing=True) == [("p1", "b"), ("p1", "c")]
    # the re-check: the missing row arrived meanwhile, the other still differs
    again = compare(store, {("p1", "b"): row, ("p1", "c"): {**row, "program_name": "X"}})
    final = first.rechecked(again)
    assert (final.keys_checked, final.rows_missing, dict(final.cells_differing)) == (
        3, 0, {"program_name": 1})
    assert final.partitions[0].keys == 3


def test_a_record_committed_after_the_snapshot_is_the_newer_expectation(
    store: ExpectedCells,
) -> None:
    store.add(0, 0, 0, full())
    assert compare(store, {KEY: cassandra_row(program_name="newer", organisation_id="x")}
                   ).differing_keys == 1
    # committed since the snapshot, merged in the file: the key's difference mark survives it
    store.add(0, 5, 0, ev(programName="newer"), counted=False)
    store.flush()
    assert keys(store, differing=True) == [KEY]
    newer = {"program_name": "newer", "program_externalid": None, "pii_consent_required": False}
    found = compare(store, {KEY: cassandra_row(**newer, organisation_id="x")})
    assert found.cells_differing == {"organisation_id": 1}  # still checked, and still wrong
    assert found.cell_samples == {"organisation_id": [(0, 0)]}
    # ... and a value the newer record does not hold differs from it
    found = compare(store, {KEY: cassandra_row(**{**newer, "program_name": "Name A"})})
    assert found.cells_differing == {"program_name": 1}
    assert found.cell_samples == {"program_name": [(0, 5)]}
    assert store.records == {0: 1}  # the report's records read: the snapshot's only


def test_a_differing_cell_a_record_not_committed_yet_writes_is_unverified(
    store: ExpectedCells,
) -> None:
    store.add(0, 0, 0, full())
    first = compare(store, {KEY: cassandra_row(program_name="wrong", organisation_id="x")})
    assert first.differing_keys == 1
    # not committed: a run may be writing it, or nothing ever will
    store.uncommitted(0, 7, ev(programName="newer"))  # the always-written group only
    store.uncommitted(0, 9, ev(programName="newest"))
    again = compare(store, {KEY: cassandra_row(program_name="wrong", organisation_id="x")})
    # the cells it writes that still match are fine; the one that differs cannot be checked
    assert again.cells_differing == {"organisation_id": 1}
    assert (again.cells_unverified, again.unverified_sample) == (1, [(0, 7)])
    report = store.report([PartitionReport(0, 0, 1)], first.rechecked(again))
    assert (report.cells_unverified, report.unverified_sample) == (1, [(0, 7)])
    assert not report.ok
    assert ("1 differing cells could not be checked: records not committed yet write them "
            "again, at (partition, offset): 0/7.") in report.describe()


def test_unverified_cells_alone_fail_the_verification(store: ExpectedCells) -> None:
    store.add(0, 0, 0, full())
    first = compare(store, {KEY: cassandra_row(program_name="wrong")})
    store.uncommitted(0, 3, ev(programName="newer"))
    report = store.report([PartitionReport(0, 0, 1)],
                          first.rechecked(compare(store, {KEY: cassandra_row(
                              program_name="wrong")})))
    assert (report.rows_missing, report.cells_differing, report.cells_unverified) == (0, {}, 1)
    assert not report.ok


def test_keys_batches_cover_every_key_once_in_order(tmp_path) -> None:
    with ExpectedCells(tmp_path, pending_keys=7) as store:
        expected = sorted((f"p{i % 3}", f"u{i}") for i in range(50))
        for i, (p, u) in enumerate(reversed(expected)):
            store.add(0, i, 0, ev(programId=p, userId=u))
        batches = list(store.keys_batches(8))
        assert [k for b in batches for k in b] == expected
        assert max(len(b) for b in batches) == 8


def test_the_file_goes_with_the_store(tmp_path) -> None:
    with ExpectedCells(tmp_path) as store:
        store.add(0, 0, 0, full())
        store.flush()
        assert list(tmp_path.iterdir())
    assert not list(tmp_path.iterdir())


def test_partition_lines() -> None:
    assert PartitionReport(2, 0, None).describe() == (
        "partition 2: never committed, nothing to check")
    line = PartitionReport(0, 0, 10000, records=10000, keys=2500).describe()
    assert line == ("partition 0: 10000 records below committed 10000 (from 0), 2500 keys "
                    "checked, 0 rows missing, 0 cells differ")
    assert "nothing to check" in PartitionReport(1, 50, 40).describe()


def test_a_key_seen_in_several_partitions_stays_counted_once(store: ExpectedCells) -> None:
    feed(store, True, (0, 0, 10, full()), (1, 0, 20, full()), (1, 1, 30, full()))
    assert store.keys_in_several_partitions() == 1
