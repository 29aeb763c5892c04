"""What the commit step decides, as plain functions of the range's report: whether it goes to
the fence at all (not read to its end, superseded, held, nothing to commit), the clocks it
commits and stamps letters with, and what it tells the operator. job.commit_offsets is the
wiring: Kafka, run tags and logs. No Dagster, Kafka or Cassandra here, so each decision is
unit-tested without a server (tests/unit/test_commit_plan.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.clock import WriteClock
from ..core.report import RangeReport, offset_runs
from .run_tags import HELD, NO_PROGRESS, SUPERSEDED


@dataclass(frozen=True)
class Stop:
    """The run ends before the fence: the outcome it is tagged with (None: no tag), and what it
    says (a warning, or an info when `warn` is False)."""

    outcome: str | None
    message: str
    warn: bool = True


@dataclass(frozen=True)
class CommitPlan:
    """What the commit step does before any Kafka call, in this order: fail (`failure`), or
    correct the run's end tag (`end_tag`), warn, and then either stop or go to the fence."""

    failure: str | None = None
    end_tag: int | None = None
    warnings: list[str] = field(default_factory=list)
    stop: Stop | None = None


def plan_commit(report: RangeReport, not_committed: str) -> CommitPlan:
    """The decisions before the fence. `not_committed`: what becomes of a failed range, in
    the words of whoever launched the run."""
    if not report.read_to_end:
        return CommitPlan(failure=(
            f"The range [{report.start}, {report.end}) of partition {report.partition} was not "
            f"read to its end; nothing was committed. {not_committed}"
        ))
    warnings = []
    if report.requested_end is not None:
        warnings.append(
            f"Partition {report.partition}: the range ends at {report.end}, not "
            f"{report.requested_end}: its dead letters reached {len(report.dead_letters)} "
            f"letters, {report.letter_bytes} bytes, as many as one run sends; the next run goes "
            "on from there."
        )
    if report.lost_while_reading:
        warnings.append(
            f"Partition {report.partition}: retention deleted records of the range while this "
            f"run read it, before it got them: offsets {offset_runs(report.lost_while_reading)} "
            "(counted lost_to_retention, not read). Retention is outrunning ingestion: raise "
            "the input topic's retention.ms or retention.bytes, or ingest faster."
        )
    end_tag = None if report.requested_end is None else report.end
    return CommitPlan(end_tag=end_tag, warnings=warnings, stop=_stop(report))


def _stop(report: RangeReport) -> Stop | None:
    """Why the run ends without going to the fence; None: it goes."""
    if report.superseded:
        return superseded(report.superseded)
    if report.held:
        return Stop(HELD, f"Partition {report.partition} read nothing: {report.held}")
    if report.end <= report.start:
        # Nothing read, nothing to commit: committing would only bump the token. Records left
        # past the start make it no progress (a failed attempt for the sensor's back-off).
        if report.high_watermark > report.start:
            return Stop(NO_PROGRESS, (
                f"Partition {report.partition}: the range [{report.start}, {report.end}) is "
                f"empty though records reach {report.high_watermark}; nothing was committed."))
        return Stop(None, f"Partition {report.partition} has nothing past {report.start}.",
                    warn=False)
    return None


def superseded(why: str) -> Stop:
    """The run ends without committing: not a failure (its range is another run's), and not a
    range in the accounting (no materialization)."""
    return Stop(SUPERSEDED, f"Superseded: {why}")


def letter_times(report: RangeReport) -> tuple[WriteClock, Callable[[int], int] | None]:
    """The range's write clock, and each dead letter's write time from it. A report from before
    write times (no base) gives its letters none: a re-drive then writes them at their
    source_timestamp."""
    clock = WriteClock(report.start, report.write_base)
    return clock, clock.at if report.write_base else None


def committed_clock(clock: WriteClock, report: RangeReport, now_us: int) -> int:
    """The clock to commit with `end`: after every write of the range, and at least the
    range's length (in us) past now, so that a run which read the same state before this
    commit landed (it is superseded, but its writes go in at up to its start + its length)
    never outruns the next run's writes (docs/contract.md: Write times)."""
    return max(clock.after(report.end), now_us + (report.end - report.start))


def dead_letter_summary(report: RangeReport, dlq_topic: str) -> str | None:
    """The warning of a committed range with dead letters; None without."""
    if not report.dead_letters:
        return None
    return (f"Dead-lettered {report.dead_lettered_total} messages to {dlq_topic!r}: "
            f"{dict(sorted(report.dead_lettered.items()))}")


def committed_message(report: RangeReport, lag: dict[str, int | float], token: int) -> str:
    """What a committed run says: the range, the lag left (unknown when the broker did not
    tell) and the fence token it committed."""
    return (f"Committed {report.end}: {report.describe()}; lag left "
            f"{lag.get('lag_left', 'unknown')} records, {lag.get('lag_left_s', 'unknown')} s; "
            f"fence token {token}.")
