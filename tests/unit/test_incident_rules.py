"""The pure rules of the incident tools: which dead letters a re-drive takes and at what write
time, how a letter's headers are read back, replay's targets, lag in seconds when unknown."""

from __future__ import annotations

import pytest

from programuser_dagster.core.offsets import PartitionOffsets
from programuser_dagster.core.planning import Plan
from programuser_dagster.incidents.outcomes import Refused
from programuser_dagster.incidents.redrive import Filters, original_replaced, write_time
from programuser_dagster.incidents.replay import Target, parse_time, plan_rewind
from programuser_dagster.ingest.backlog import BacklogPlan
from programuser_dagster.kafka.dead_letters import (
    Origin,
    Source,
    key_digest,
    letter,
    not_the_original,
    origin,
)


def _origin(**fields: object) -> Origin:
    base = {"reason": "not_json", "source_topic": "t", "source_partition": 0,
            "source_offset": 5, "source_timestamp_ms": 1_000, "write_time_us": 7_000_000,
            "original_reason": None}
    return Origin(**{**base, **fields})  # type: ignore[arg-type]


def test_a_letters_headers_read_back_as_its_origin_ignoring_the_originals_own() -> None:
    source = Source("t", 3, 41, b"k", b"v", [("reason", b"theirs"), ("write_time", b"1")],
                    1_700_000_000_000, 1_700_000_000_000_123)
    found = origin(letter(source, "not_json", 10_000).headers)
    assert found == Origin("not_json", "t", 3, 41, 1_700_000_000_000,
                           1_700_000_000_000_123, None)
    assert origin([("trace", b"x")]) is None


def test_a_too_large_letter_keeps_its_original_reason_and_a_deleted_one_says_so() -> None:
    big = Source("t", 0, 1, b"k", b"x" * 5000, [], 5, 9)
    found = origin(letter(big, "wrong_type:userId", 1000).headers)
    assert found is not None and not found.value_kept
    assert found.original_reason == "wrong_type:userId"
    gone = Source("t", 0, 2, None, None, [("original_deleted", b"true")], None, None)
    deleted = origin(letter(gone, "not_json", 1000).headers)
    assert deleted is not None and deleted.original_deleted


def test_a_too_large_letters_original_is_recognised_by_key_timestamp_and_size() -> None:
    value = b"x" * 5000
    kept = letter(Source("t", 0, 1, b"k", value, [], 5, 9), "wrong_type:userId", 1000)
    assert kept.reason == "too_large" and kept.key == b"k"
    found = origin(kept.headers)
    assert found is not None and found.original_bytes == 5000
    key = key_digest(kept.key)
    assert not_the_original(found, key, b"k", 5, value) == []
    assert not_the_original(found, key, b"other", 5, value) == ["key"]
    assert not_the_original(found, key, None, 6, value) == ["key", "timestamp"]
    assert not_the_original(found, key, b"k", None, b"y" * 10) == ["timestamp", "size"]
    # Its key dropped to fit: any key may be the original's; timestamp and size still decide.
    keyless = letter(Source("t", 0, 1, b"k" * 900, value, [], 5, 9), "not_json", 1000)
    assert keyless.key is None
    found = origin(keyless.headers)
    assert found is not None
    assert not_the_original(found, key_digest(keyless.key), b"anything", 5, value) == []
    assert not_the_original(found, None, b"anything", 5, value[1:]) == ["size"]
    assert original_replaced(["key", "timestamp", "size"]).startswith(
        "too_large: another record is now at the original's offset (its key, timestamp and "
        "size differ from the letter's")
    assert "(its size differs from" in original_replaced(["size"])


def test_a_letter_is_redriven_at_its_write_time_else_its_append_time() -> None:
    assert write_time(_origin()) == 7_000_000
    assert write_time(_origin(write_time_us=None)) == 1_000_000
    assert write_time(_origin(write_time_us=None, source_timestamp_ms=None)) is None


def test_filters_match_reason_original_reason_partition_and_time() -> None:
    assert Filters().match(_origin())
    assert Filters(reasons=frozenset({"not_json"})).match(_origin())
    assert not Filters(reasons=frozenset({"bad_date:createdAt"})).match(_origin())
    assert Filters(reasons=frozenset({"not_json"})).match(
        _origin(reason="too_large", original_reason="not_json"))
    assert not Filters(partitions=frozenset({1})).match(_origin())
    assert Filters(since_ms=1_000, until_ms=1_001).match(_origin())
    assert not Filters(since_ms=1_001).match(_origin())
    assert not Filters(until_ms=1_000).match(_origin())
    assert not Filters(since_ms=0).match(_origin(source_timestamp_ms=None))
    with pytest.raises(Refused, match="--since must be before --until"):
        Filters(since_ms=5, until_ms=5)


def test_replay_targets_and_times() -> None:
    with pytest.raises(Refused, match="exactly one"):
        Target(offset=1, earliest=True)
    with pytest.raises(Refused, match="exactly one"):
        Target()
    assert parse_time("2026-11-30T14:00:00Z") == 1_796_047_200_000
    assert parse_time("2026-11-30T19:30:00+05:30") == 1_796_047_200_000
    with pytest.raises(Refused, match="no UTC offset"):
        parse_time("2026-11-30T14:00:00")
    with pytest.raises(Refused, match="not an ISO-8601 time"):
        parse_time("yesterday 14:00")


def test_a_rewind_never_moves_forward_and_stops_at_the_oldest_record() -> None:
    o = PartitionOffsets(partition=0, low=10, high=100, committed=50)
    assert plan_rewind(o, 20, "offset 20").records_again == 30
    low = plan_rewind(o, 0, "offset 0")
    assert low.target == 10 and "below the oldest retained record" in low.note
    with pytest.raises(Refused, match="replay only rewinds"):
        plan_rewind(o, 51, "offset 51")
    # By time, a partition not processed up to that time has nothing to rewind.
    behind = plan_rewind(o, 80, "time T", by_time=True)
    assert behind.records_again == 0 and behind.target == 50
    # No commit, or one below the oldest record: the effective start is the low watermark.
    fresh = PartitionOffsets(partition=0, low=10, high=100, committed=None)
    with pytest.raises(Refused):
        plan_rewind(fresh, 11, "offset 11")


def test_a_lag_whose_record_time_did_not_arrive_is_unknown_not_zero() -> None:
    offsets = [PartitionOffsets(0, 0, 10, 5), PartitionOffsets(1, 0, 10, 10),
               PartitionOffsets(2, 0, 10, 0)]
    plan = BacklogPlan(decision=Plan(offsets=offsets, launches=[], waiting={}),
                       new_partitions=[], run_requests=[])
    md = plan.lag_observation({0: 9_000, 2: None}, now_ms=10_000).metadata
    values = {k: v.value for k, v in md.items()}
    assert values["lag_s_partition_0"] == 1.0 and values["lag_s_partition_1"] == 0
    assert "lag_s_partition_2" not in values and values["lag_s_unknown_partitions"] == 1
    assert values["lag_s_max"] == 1.0
