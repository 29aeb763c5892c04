"""Event ages (record timestamp -> Cassandra's acknowledgement) as a small, mergeable histogram.

A run may write 100k+ events, so ages are not kept: each goes into a log-scale bucket (a
Counter of at most ~2,200 buckets, since ages are clamped to 30 days), and percentiles are
read off the buckets with < 1% relative error. The histogram is JSON-safe, so it can live in
a run's stored report and runs can be merged later.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_AGE_MS = 30 * 86_400 * 1000
# Bucket i >= 1 holds ages in (GROWTH**(i-2), GROWTH**(i-1)]; bucket 0 holds age 0. Reporting a
# bucket's upper bound is then at most GROWTH-1 = 1% above any age in it.
GROWTH = 1.01
_LOG_GROWTH = math.log(GROWTH)


def _bucket(age_ms: int) -> int:
    if age_ms <= 0:
        return 0
    index = 1 + math.ceil(math.log(age_ms) / _LOG_GROWTH)
    # Rounding in log() can land an age one bucket off: move it to the bucket that holds it.
    while _upper(index) < age_ms:
        index += 1
    while index > 1 and _upper(index - 1) >= age_ms:
        index -= 1
    return index


def _upper(index: int) -> float:
    return 0.0 if index == 0 else GROWTH ** (index - 1)


def _clamp(age_ms: int) -> tuple[int, bool]:
    """The age within [0, 30 days], and whether it was outside (clock skew, bad timestamp)."""
    if age_ms < 0:
        return 0, True
    if age_ms > MAX_AGE_MS:
        return MAX_AGE_MS, True
    return age_ms, False


@dataclass
class Ages:
    """Histogram of event ages in ms; `count`, `max_ms` and `clamped` are exact."""

    buckets: Counter[int] = field(default_factory=Counter)
    count: int = 0
    max_ms: int = 0
    clamped: int = 0  # ages outside [0, 30 days], counted at the nearest bound

    def add(self, ages_ms: Iterable[int]) -> None:
        for raw in ages_ms:
            age, clamped = _clamp(int(raw))
            self.buckets[_bucket(age)] += 1
            self.count += 1
            self.clamped += clamped
            self.max_ms = max(self.max_ms, age)

    def add_written(self, record_times_ms: Sequence[int], acked_ms: int) -> None:
        """Events with these record timestamps were acknowledged by Cassandra at `acked_ms`."""
        self.add(acked_ms - t for t in record_times_ms)

    def merge(self, other: Ages) -> None:
        """Add `other`'s ages to these (in place), as if they had been added here."""
        self.buckets.update(other.buckets)
        self.count += other.count
        self.max_ms = max(self.max_ms, other.max_ms)
        self.clamped += other.clamped

    def percentile(self, q: float) -> float:
        """The q-th percentile (0 <= q <= 100, nearest rank) in ms: the upper bound of the
        bucket holding it, so at most 1% above the exact value, and never above max_ms."""
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be within [0, 100], not {q}")
        if self.count == 0:
            raise ValueError("no ages recorded")
        rank = max(1, math.ceil(q * self.count / 100))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(_upper(index), float(self.max_ms))
        raise AssertionError("bucket counts do not add up to count")  # from_dict checks this

    @property
    def p50_ms(self) -> float:
        return self.percentile(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile(99)

    def metadata(self) -> dict[str, float | int]:
        """Seconds for a run's metadata; empty when no event was written (no age to report)."""
        if self.count == 0:
            return {}
        return {
            "event_age_p50_s": round(self.p50_ms / 1000, 3),
            "event_age_p99_s": round(self.p99_ms / 1000, 3),
            "event_age_max_s": round(self.max_ms / 1000, 3),
            "event_ages_clamped": self.clamped,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (bucket keys as strings); `growth` lets a reader refuse another scheme."""
        return {
            "growth": GROWTH,
            "count": self.count,
            "max_ms": self.max_ms,
            "clamped": self.clamped,
            "buckets": {str(index): n for index, n in sorted(self.buckets.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ages:
        if data.get("growth") != GROWTH:
            raise ValueError(f"ages bucketed with growth {data.get('growth')!r}, not {GROWTH}")
        buckets = Counter({int(index): int(n) for index, n in data["buckets"].items()})
        ages = cls(buckets, int(data["count"]), int(data["max_ms"]), int(data["clamped"]))
        if sum(buckets.values()) != ages.count:
            raise ValueError(f"bucket counts add up to {sum(buckets.values())}, not {ages.count}")
        return ages


def lag_seconds(oldest_uncommitted_record_ms: int | None, now_ms: int) -> tuple[float, bool]:
    """Age of the oldest record not yet committed, in s, and whether it was clamped to
    [0, 30 days] as ages are. (0.0, False) when nothing is uncommitted (the caller tells that
    from a lag whose record time is unknown, which is not 0 s)."""
    if oldest_uncommitted_record_ms is None:
        return 0.0, False
    lag, clamped = _clamp(now_ms - oldest_uncommitted_record_ms)
    return lag / 1000, clamped
