"""Event-age histogram (programuser_dagster/core/event_ages.py): percentiles within 1% of the exact
ones in bounded memory, clamping counted, merging and the JSON round trip lossless."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from programuser_dagster.core.event_ages import MAX_AGE_MS, Ages, _bucket, _upper, lag_seconds

QS = [0, 1, 10, 50, 90, 99, 99.9, 100]


def _random_ages(seed: int, n: int = 20_000) -> list[int]:
    rng = random.Random(seed)
    # Mostly lognormal (ms to minutes), some uniform over the whole 30 days, some zeros.
    ages = [int(rng.lognormvariate(7, 2.5)) for _ in range(n)]
    ages += [rng.randrange(MAX_AGE_MS + 1) for _ in range(n // 10)]
    ages += [0] * (n // 100)
    return [min(a, MAX_AGE_MS) for a in ages]


def _ages(values: list[int]) -> Ages:
    ages = Ages()
    ages.add(values)
    return ages


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_are_within_1_percent_above_the_exact_ones(seed: int) -> None:
    values = _random_ages(seed)
    ages = _ages(values)
    for q in QS:
        exact = float(np.percentile(values, q, method="inverted_cdf"))  # nearest rank
        got = ages.percentile(q)
        assert exact <= got <= exact * 1.01, (q, exact, got)
    # And against the default (interpolating) percentile on this much data, too.
    assert ages.p50_ms == pytest.approx(float(np.percentile(values, 50)), rel=0.01)
    assert ages.p99_ms == pytest.approx(float(np.percentile(values, 99)), rel=0.01)
    assert ages.max_ms == max(values) == ages.percentile(100)
    assert ages.count == len(values)
    assert ages.clamped == 0


def test_every_age_is_reported_at_most_1_percent_high() -> None:
    small = range(0, 200_000)
    large = random.Random(0).sample(range(200_000, MAX_AGE_MS + 1), 100_000)
    for age in [*small, *large, MAX_AGE_MS]:
        upper = _upper(_bucket(age))
        assert age <= upper <= age * 1.01, age


@given(st.lists(st.integers(0, MAX_AGE_MS), min_size=1, max_size=300),
       st.floats(0, 100))
def test_any_percentile_of_any_ages_is_within_1_percent(values: list[int], q: float) -> None:
    exact = float(np.percentile(values, q, method="inverted_cdf"))
    got = _ages(values).percentile(q)
    assert exact <= got <= exact * 1.01
    assert got <= max(values)


def test_memory_is_bounded_by_the_bucket_count_not_the_event_count() -> None:
    ages = _ages(_random_ages(4, n=200_000))
    assert ages.count > 200_000
    assert len(ages.buckets) <= _bucket(MAX_AGE_MS) + 1 < 2_300


def test_ages_from_write_times_and_out_of_range_ones_are_clamped_and_counted() -> None:
    acked = 1_700_000_000_000
    ages = Ages()
    ages.add_written([acked - 1_000, acked - 2_000, acked - 3_000], acked)
    assert (ages.count, ages.clamped, ages.max_ms) == (3, 0, 3_000)
    assert ages.p50_ms == pytest.approx(2_000, rel=0.01)

    # A record stamped after its acknowledgement (clock skew) and one older than 30 days.
    ages.add_written([acked + 5_000, acked - MAX_AGE_MS - 1], acked)
    assert (ages.count, ages.clamped, ages.max_ms) == (5, 2, MAX_AGE_MS)
    assert ages.percentile(0) == 0.0
    assert ages.percentile(100) == MAX_AGE_MS
    assert ages.metadata()["event_ages_clamped"] == 2


def test_merge_equals_adding_everything_to_one() -> None:
    values = _random_ages(5)
    parts = [values[:7], values[7:5_000], [], values[5_000:]]
    merged = Ages()
    for part in parts:
        merged.merge(_ages(part))
    assert merged == _ages(values)
    assert [merged.percentile(q) for q in QS] == [_ages(values).percentile(q) for q in QS]

    clamped = Ages()
    clamped.add_written([10, 20], 0)
    merged.merge(clamped)
    assert merged.clamped == 2
    assert merged.count == len(values) + 2


def test_to_dict_round_trips_through_json_and_stays_small() -> None:
    ages = _ages(_random_ages(6, n=100_000))
    ages.add_written([1], 0)  # one clamped
    text = json.dumps(ages.to_dict())
    back = Ages.from_dict(json.loads(text))
    assert back == ages
    assert back.metadata() == ages.metadata()
    assert len(text) < 40_000
    assert Ages.from_dict(json.loads(json.dumps(Ages().to_dict()))) == Ages()


def test_from_dict_refuses_another_scheme_or_counts_that_do_not_add_up() -> None:
    data = _ages([1, 2, 3]).to_dict()
    with pytest.raises(ValueError, match="growth"):
        Ages.from_dict({**data, "growth": 1.02})
    with pytest.raises(ValueError, match="add up"):
        Ages.from_dict({**data, "count": 4})


def test_metadata_is_in_seconds_rounded_and_empty_without_events() -> None:
    assert Ages().metadata() == {}
    with pytest.raises(ValueError, match="no ages"):
        Ages().percentile(50)
    md = _ages([1_500, 2_500, 123_456]).metadata()
    assert set(md) == {"event_age_p50_s", "event_age_p99_s", "event_age_max_s",
                       "event_ages_clamped"}
    assert md["event_age_max_s"] == 123.456
    assert md["event_age_p99_s"] == 123.456  # the top bucket's bound is capped at max
    assert 2.5 <= md["event_age_p50_s"] <= 2.525
    assert md["event_ages_clamped"] == 0
    assert json.loads(json.dumps(md)) == md


def test_percentile_outside_0_to_100_is_refused() -> None:
    for q in (-1, 100.5):
        with pytest.raises(ValueError, match="within"):
            _ages([1]).percentile(q)


def test_lag_seconds() -> None:
    now = 1_700_000_000_000
    assert lag_seconds(None, now) == (0.0, False)
    assert lag_seconds(now - 1_500, now) == (1.5, False)
    assert lag_seconds(now, now) == (0.0, False)
    assert lag_seconds(now + 10, now) == (0.0, True)
    assert lag_seconds(now - MAX_AGE_MS, now) == (MAX_AGE_MS / 1000, False)
    assert lag_seconds(now - MAX_AGE_MS - 1, now) == (MAX_AGE_MS / 1000, True)
