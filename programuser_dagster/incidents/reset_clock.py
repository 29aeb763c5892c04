"""reset-clock: set a partition's committed write clock back to this host's clock, when it is
wrong: further ahead of the wall clock than any run leaves it (a host whose clock was ahead
committed it, or another tool wrote it), so that runs refuse to write (core/clock_skew.py).

The committed offset stays; the reset is a commit through the same fenced transaction as runs
(a run that started before it is superseded at its commit). Cells already written at the
wrong times keep them: later events do not overwrite those cells until the wall clock passes
the old clock. Run it from a host whose clock is right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core.clock import now_us
from ..core.clock_skew import utc_time
from ..core.kept_commit import KeptCommit
from ..core.offsets import PartitionOffsets
from ..kafka.resource import KafkaResource, KafkaUnavailable, Superseded
from ..settings import MAX_RANGE_MESSAGES
from .outcomes import CouldNotComplete


@dataclass(frozen=True)
class ClockReset:
    """One partition's committed state, read at `now` (this host's clock, us)."""

    offsets: PartitionOffsets
    now: int

    @property
    def lead_us(self) -> int:
        return self.offsets.clock - self.now

    @property
    def wrong(self) -> bool:
        """Ahead by more than any run leaves it (a run's length, at most MAX_RANGE_MESSAGES
        us): lowering a healthy clock would let the next run's writes lose to the last run's."""
        return self.offsets.committed is not None and self.lead_us > MAX_RANGE_MESSAGES

    def line(self, applied: bool) -> str:
        o = self.offsets
        if not self.wrong:
            return (f"partition {o.partition}: committed clock "
                    f"{utc_time(o.clock) if o.clock else 'none'} is not ahead of this host's clock "
                    f"by more than a run's length: nothing to reset")
        by = f" (committed from host {o.clock_host})" if o.clock_host else ""
        verb = "reset to" if applied else "would reset to"
        return (f"partition {o.partition}: committed offset {o.committed}, clock "
                f"{utc_time(o.clock)}{by}, {self.lead_us / 1e6:.3f} s ahead of this host's clock: "
                f"{verb} this host's clock ({utc_time(self.now)}); until the wall clock reaches "
                f"{utc_time(o.clock)}, later events do not overwrite cells written at times after "
                "the reset")


def plan(kafka: KafkaResource, partitions: Sequence[int] | None) -> list[ClockReset]:
    now = now_us()
    return [ClockReset(o, now) for o in kafka.offsets(kafka.chosen_partitions(partitions))]


def apply(kafka: KafkaResource, resets: Sequence[ClockReset],
          applied: Callable[[ClockReset], None],
          keep: Callable[[KeptCommit | None], None] = lambda _: None) -> list[ClockReset]:
    """Commit each wrong clock's reset against the state it was planned on (the offset is
    committed again, unchanged), and give `keep` what was committed (cassandra/kept_commits.py:
    a replay that resumes a lost commit must not bring the wrong clock back); raises
    CouldNotComplete at the first that could not be."""
    done: list[ClockReset] = []
    for reset in resets:
        if not reset.wrong:
            continue
        o = reset.offsets
        try:
            with kafka.fenced_commit(o.partition, o.state) as txn:
                assert o.committed is not None  # reset.wrong
                txn.commit(o.committed, clock=now_us(), lower_clock=True)
        except (Superseded, KafkaUnavailable) as exc:
            raise CouldNotComplete(
                f"partition {o.partition}: its clock was not reset ({exc}). Reset before it: "
                f"partitions {', '.join(str(r.offsets.partition) for r in done) or 'none'}. "
                "Run reset-clock again (its dry run shows the new state).") from exc
        done.append(reset)
        keep(txn.kept)
        applied(reset)
    return done
