"""Which partitions get a run now, and why the others wait: the planning rule, on plain data.

A partition gets a run of [committed offset, high-water mark) when it has records past its
committed offset and no run of it is queued or in progress. A range whose run failed is
requested again (the sensor is the one owner of retries), after a back-off that doubles with
each failed attempt at the same committed state (offset and fence token): the caller passes only
the failed attempts at each partition's current state, so a commit (a new token) starts the count
afresh. What counts as a failed attempt (a failure, a cancel, a run that succeeded without moving
the offset; not a superseded run) is the caller's reading of the run records (ingest/backlog.py). A
partition added to the topic waits for the old partitions' backlog (growth.py). Given a trigger
(trigger.py: the sensor's), a partition's first attempt also waits until its lag or the age of
its oldest uncommitted record reaches the trigger's.

No I/O and no client library here (no dagster, confluent_kafka or cassandra): ingest/backlog.py
reads the broker and the instance, and turns the launches into Dagster run requests.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from .growth import hold
from .offsets import PartitionOffsets
from .trigger import Trigger

RETRY_BASE_S = 30.0
RETRY_MAX_S = 900.0


def retry_wait_s(failed_attempts: int) -> float:
    """Back-off before the next attempt at a range that failed `failed_attempts` times."""
    if failed_attempts <= 0:
        return 0.0
    return min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (failed_attempts - 1))


@dataclass(frozen=True)
class Launch:
    """One run to start: partition `partition`, offsets [start, end), from the committed state
    of fence token `token`, the `attempt`-th at that state."""

    partition: int
    start: int
    end: int
    token: int
    attempt: int = 1

    @classmethod
    def of(cls, offsets: PartitionOffsets, attempt: int = 1) -> Launch:
        """The run of a partition's whole backlog, as its offsets stand."""
        return cls(offsets.partition, offsets.next_offset, offsets.high, offsets.token, attempt)

    @property
    def run_key(self) -> str:
        """Unique per range, committed state and attempt: Dagster starts one run per key, so a
        tick that sees the same backlog again requests nothing new."""
        return (f"partition-{self.partition}:{self.start}-{self.end}:token-{self.token}:"
                f"attempt-{self.attempt}")


@dataclass
class Plan:
    offsets: list[PartitionOffsets]
    launches: list[Launch] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)  # partition -> why no run now

    def summary(self) -> str:
        if not self.offsets:
            return "The input topic has no partitions."
        lag = sum(o.lag for o in self.offsets)
        if lag == 0 and not self.waiting:
            return f"Every partition is caught up ({len(self.offsets)} partitions, lag 0)."
        parts = [f"{len(self.launches)} run(s) requested, total lag {lag}"]
        parts += [f"partition {p}: {why}" for p, why in sorted(self.waiting.items())]
        return "; ".join(parts)


def decide(
    offsets: Sequence[PartitionOffsets],
    in_flight: Collection[int],
    failed_ends: Mapping[int, Sequence[float | None]],
    now: float,
    topic: Sequence[PartitionOffsets] = (),
    trigger: Trigger | None = None,
    ages_s: Mapping[int, float | None] | None = None,
) -> Plan:
    """The plan for these partitions at time `now` (seconds since the epoch).

    `in_flight`: the partitions with a run queued or in progress. `failed_ends`: per partition,
    the end times of its failed attempts at its current committed state (None: unknown, taken as
    long ago); a partition missing from it has none. `topic`: every partition's offsets, read
    with `offsets` (default: `offsets` are all of them), for the holds of new partitions.
    `trigger`: when a partition's first attempt starts (None: as soon as it has lag), given
    `ages_s`, per partition the age of its oldest uncommitted record (missing or None: unknown).
    """
    plan = Plan(offsets=list(offsets))
    for o in offsets:
        if o.beyond_end:  # no lag, yet not caught up: said, never launched
            plan.waiting[o.partition] = o.beyond_end_warning()
            continue
        if o.lag == 0:
            continue
        held = hold(o, topic or offsets)
        if held:
            plan.waiting[o.partition] = f"lag {o.lag}, {held}"
            continue
        if o.partition in in_flight:
            plan.waiting[o.partition] = f"lag {o.lag}, a run is queued or in progress"
            continue
        ends = failed_ends.get(o.partition, ())
        wait = retry_wait_s(len(ends))
        last_end = max((end or 0.0 for end in ends), default=0.0)
        if ends and now - last_end < wait:
            plan.waiting[o.partition] = (
                f"lag {o.lag}, {len(ends)} failed attempt(s) at offset {o.next_offset}, "
                f"retrying in {wait - (now - last_end):.0f}s"
            )
            continue
        if not ends and trigger is not None:
            why = trigger.wait_reason(o.lag, (ages_s or {}).get(o.partition))
            if why:
                plan.waiting[o.partition] = why
                continue
        plan.launches.append(Launch.of(o, attempt=len(ends) + 1))
    return plan
