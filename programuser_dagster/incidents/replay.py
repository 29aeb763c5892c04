"""replay: rewind the consumer group of chosen partitions so that the sensor re-ingests from there.

It only rewinds. A target above a partition's effective start (the committed offset, or the
low watermark when there is no commit or it is below it) is refused, so no committed offset
ever moves past records that were not processed. The rewind is a commit through the same
fenced transaction as runs: it cannot race the sensor or a run (a run that started before it
is superseded at its commit), and it carries the partition's write clock forward, so that the
re-ingested events are written after everything written so far (core/clock.py): a replay rewrites
what it replays, hand edits included.

A partition whose commit Kafka lost (core/kept_commit.py: its committed offset was removed by the
broker's offset retention, or is behind the last commit kept in Cassandra) is resumed: its
effective start is the kept commit's offset, and the replay commits the kept clock, partition
count and a token above the kept one, as if the commit had never been lost. Every replay's
commit is kept in Cassandra, so that a deliberate rewind is not taken for a loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..core.clock import now_us
from ..core.kept_commit import KeptCommit, lost
from ..core.offsets import PartitionOffsets
from ..kafka.resource import CommitUnknown, KafkaResource, KafkaUnavailable, Superseded
from .outcomes import CouldNotComplete, Refused


@dataclass(frozen=True)
class Target:
    """Where to rewind to: exactly one of an offset, a time (epoch ms) or the earliest."""

    offset: int | None = None
    time_ms: int | None = None
    earliest: bool = False

    def __post_init__(self) -> None:
        given = (self.offset is not None) + (self.time_ms is not None) + self.earliest
        if given != 1:
            raise Refused("Give exactly one of --to-offset, --to-time and --to-earliest.")
        if self.offset is not None and self.offset < 0:
            raise Refused(f"--to-offset must be 0 or more, not {self.offset}.")

    def describe(self) -> str:
        if self.offset is not None:
            return f"offset {self.offset}"
        if self.time_ms is not None:
            return f"time {datetime.fromtimestamp(self.time_ms / 1000).astimezone().isoformat()}"
        return "the earliest retained record"


def parse_time(text: str, option: str = "--to-time") -> int:
    """An ISO-8601 time with its UTC offset or Z -> epoch milliseconds."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Refused(f"{option} {text!r} is not an ISO-8601 time "
                      "(e.g. 2026-11-30T14:00:00Z or 2026-11-30T19:30:00+05:30).") from None
    if moment.tzinfo is None:
        raise Refused(f"{option} {text!r} has no UTC offset: add Z or +HH:MM, so that it "
                      "means one moment whatever this machine's time zone.")
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Rewind:
    """One partition's rewind: from its effective start to the target."""

    offsets: PartitionOffsets  # the state it was planned on: the commit is fenced on it
    target: int
    note: str = ""  # e.g. the target was below the oldest retained record
    # The last commit, when Kafka lost it (core/kept_commit.py): the replay resumes from it.
    resumed: KeptCommit | None = None

    @property
    def partition(self) -> int:
        return self.offsets.partition

    @property
    def committed(self) -> int | None:
        return self.offsets.committed

    @property
    def start(self) -> int:
        """The effective start: where the next run would begin (for a partition whose commit
        Kafka lost: where its last commit left it)."""
        if self.resumed is not None:
            return max(self.resumed.offset, self.offsets.low)
        return self.offsets.next_offset

    @property
    def due(self) -> bool:
        """There is something to commit: records to read again, or a lost commit to restore."""
        return self.records_again > 0 or self.resumed is not None

    @property
    def records_again(self) -> int:
        return self.start - self.target

    def line(self, applied: bool) -> str:
        committed = "none" if self.committed is None else str(self.committed)
        if self.resumed is not None:
            verb = "resumed at" if applied else "would resume at"
            return (f"partition {self.partition}: committed {committed}, but Kafka lost its last "
                    f"commit ({self.resumed.offset} at {self.resumed.when()}, kept in "
                    f"Cassandra): {verb} {self.target}, with its clock and a token after "
                    f"{self.resumed.token}: {self.records_again} records "
                    f"{'will' if applied else 'would'} be read again{self.note}")
        if self.records_again == 0:
            return (f"partition {self.partition}: committed {committed}, target {self.target}: "
                    f"nothing to read again{self.note}")
        verb = "rewound to" if applied else "would rewind to"
        if self.offsets.beyond_end:  # the offsets up to the committed one hold no record yet
            high = self.offsets.high
            return (f"partition {self.partition}: committed {committed}, beyond the log end "
                    f"{high}, {verb} {self.target}: {max(0, high - self.target)} records "
                    f"{'will' if applied else 'would'} be read again, and those that arrive "
                    f"from {high} on read{self.note}")
        return (f"partition {self.partition}: committed {committed}, {verb} {self.target}: "
                f"{self.records_again} records {'will' if applied else 'would'} be read "
                f"again{self.note}")


def plan_rewind(
    offsets: PartitionOffsets, target: int, asked: str, by_time: bool = False,
    kept: KeptCommit | None = None,
) -> Rewind:
    """The rewind of one partition to `target` (an offset, already resolved), or Refused.
    `by_time`: the target is the partition's first record at or after a time; on a partition
    whose records from before that time are not all processed yet, there is nothing to
    rewind (rather than a refusal that would stop every other partition's rewind). `kept`: the
    partition's kept commit (core/kept_commit.py); when Kafka lost it, the rewind resumes it."""
    resumed = kept if kept is not None and lost(offsets, kept) else None
    start = Rewind(offsets, 0, resumed=resumed).start
    note = ""
    if by_time and target > start:
        return Rewind(offsets, start, f" (its records before {asked} are not all processed "
                      "yet: nothing to rewind)", resumed)
    if target < offsets.low:
        note = (f" ({asked} is below the oldest retained record, {offsets.low}: "
                "replay starts there)")
        target = offsets.low
    if target > start:
        raise Refused(
            f"partition {offsets.partition}: {asked} is offset {target}, past where the next "
            f"run starts ({start}): replay only rewinds, and moving the offset forward would "
            "skip records that were not processed. Nothing was changed."
        )
    return Rewind(offsets, target, note, resumed)


def plan(kafka: KafkaResource, partitions: Sequence[int] | None, target: Target,
         kept: Mapping[int, KeptCommit]) -> list[Rewind]:
    """Every chosen partition's rewind, or Refused for the first that cannot be (then none is
    applied). `kept`: the partitions' kept commits (read before the offsets: a kept commit is
    never newer than the state Kafka returns after it)."""
    chosen = kafka.chosen_partitions(partitions)
    offsets = kafka.offsets(chosen)
    resolved: dict[int, int] = {}
    if target.time_ms is not None:
        resolved = kafka.offsets_for_time(chosen, target.time_ms)
    rewinds = []
    for o in offsets:
        if target.offset is not None:
            to = target.offset
        elif target.time_ms is not None:
            to = resolved[o.partition]
        else:
            to = o.low
        rewinds.append(plan_rewind(o, to, target.describe(), by_time=target.time_ms is not None,
                                   kept=kept.get(o.partition)))
    return rewinds


def apply(
    kafka: KafkaResource, rewinds: Sequence[Rewind], applied: Callable[[Rewind], None],
    keep: Callable[[KeptCommit | None], None] = lambda _: None,
) -> list[Rewind]:
    """Commit each rewind through the fenced commit, against the state it was planned on; the
    clock is carried forward (a resumed partition's from its kept commit). `applied` is told of
    each rewind as soon as it is committed (so that it is recorded even if a later one fails),
    after `keep` is given what it committed (cassandra/kept_commits.py). Returns the rewinds
    applied; raises
    CouldNotComplete at the first partition that could not be rewound (another committer
    changed it since, or the broker failed); the ones before it stay applied."""
    done: list[Rewind] = []
    for rewind in rewinds:
        if not rewind.due:
            continue
        state, resumed = rewind.offsets, rewind.resumed
        try:
            with kafka.fenced_commit(rewind.partition, state.state) as txn:
                # The fence carries the count, a claim's barrier and the clock forward: a
                # rewind releases no hold and never turns the clock back (core/growth.py).
                if resumed is None:
                    txn.commit(rewind.target, clock=now_us())
                else:  # what Kafka lost comes from the kept commit
                    txn.commit(rewind.target, clock=max(now_us(), resumed.clock),
                               partitions=resumed.partitions or None,
                               token_floor=resumed.token)
        except (Superseded, KafkaUnavailable) as exc:
            before = ", ".join(str(r.partition) for r in done) or "none"
            why = ("a run committed it while replay ran" if isinstance(exc, Superseded)
                   else "the broker failed")
            # An unknown outcome says so itself, with how to find out; otherwise none landed.
            outcome = "" if isinstance(exc, CommitUnknown) else "; it was not rewound"
            raise CouldNotComplete(
                f"partition {rewind.partition}: {why} ({exc}){outcome}. Rewound "
                f"before it: partitions {before}. Run replay again (its dry run shows the new "
                "state)."
            ) from exc
        done.append(rewind)
        keep(txn.kept)
        applied(rewind)
    return done
