"""When the sensor starts a partition's run: at a number of records, or at an age.

At a trickle every tick finds a few records on every partition; a run per partition per tick
costs Dagster's fixed price per run (a process, ~2 s of imports, ~24 storage events) for a
handful of rows. So the sensor lets a partition's records gather until either its lag reaches
`lag_records` (a backlog starts at once) or its oldest uncommitted record is `age_s` old (a
trickle is written within the age, plus a sensor interval, plus one run). A due retry of a
failed range is not held back (core/planning.py). `drain` and the schedule do not wait: drain
is "catch up now", and the schedule's cron is its own pace.

An age that is unknown (the record did not arrive: Kafka did not answer the read) launches:
waiting on it could wait forever, and a run costs one run; if Kafka is really down the run
fails and the retry back-off paces the next. A record time far ahead of this host's clock (a
producer's wrong clock) is unknown too: its age would hold the partition back for as long.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .offsets import PartitionOffsets

# A record time up to this far ahead of the clock reads as age 0 (clocks differ by a little);
# further ahead it is not believed.
FUTURE_ALLOWANCE_S = 60.0


@dataclass(frozen=True)
class Trigger:
    """A partition's run starts at `lag_records` records or when its oldest uncommitted record
    is `age_s` seconds old."""

    lag_records: int
    age_s: float

    def wait_reason(self, lag: int, age_s: float | None) -> str | None:
        """Why a partition with `lag` records, the oldest `age_s` seconds old (None: unknown),
        waits; None when its run starts now."""
        if lag >= self.lag_records or age_s is None or age_s < -FUTURE_ALLOWANCE_S:
            return None
        if age_s >= self.age_s:
            return None
        return (f"{lag:,} records, oldest {max(age_s, 0.0):.0f} s, launches at "
                f"{self.lag_records:,} records or {self.age_s:,.0f} s")

    def holds(
        self, offsets: Iterable[PartitionOffsets], ages_s: Mapping[int, float | None]
    ) -> set[int]:
        """The partitions with lag that wait for the trigger: not stalled, gathering."""
        return {o.partition for o in offsets
                if o.lag > 0 and self.wait_reason(o.lag, ages_s.get(o.partition))}
