"""Latency and lag in seconds (issue 13, item 5), on the real servers: each run records the
ages of its events when Cassandra acknowledged them and the lag it leaves, in seconds."""

from __future__ import annotations

import time
from typing import Any

import pytest

from programuser_dagster.settings import Settings
from tests.support.pipeline import event, produce, run_partition

pytestmark = pytest.mark.stack


def _materialized(result: Any) -> dict[str, Any]:
    [mat] = result.asset_materializations_for_node("commit_offsets")
    return {k: v.value for k, v in mat.metadata.items()}


def test_a_run_records_its_events_ages_and_the_lag_it_leaves_in_seconds(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    produce(s, [event("p", f"old{i}") for i in range(20)])
    time.sleep(1.5)
    produce(s, [event("p", f"new{i}") for i in range(10)])
    before = time.monotonic()
    # Only the first 25: the 5 left are the lag, ~1.5 s younger than the oldest written.
    result = run_partition(instance, s, end_offset=25)
    assert result.success
    elapsed = time.monotonic() - before
    md = _materialized(result)
    assert md["messages_written"] == 25
    assert 1.5 <= md["event_age_max_s"] <= 1.5 + elapsed + 1
    assert md["event_age_p50_s"] <= md["event_age_p99_s"] <= md["event_age_max_s"] * 1.01
    assert md["event_age_p50_s"] >= 1.5  # 20 of the 25 are the old ones
    assert md["event_ages_clamped"] == 0
    assert md["lag_left"] == 5
    assert 0 < md["lag_left_s"] < md["event_age_max_s"]
    caught_up = run_partition(instance, s)
    md = _materialized(caught_up)
    assert md["lag_left"] == 0 and md["lag_left_s"] == 0
