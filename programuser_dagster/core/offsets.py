"""A partition's offsets and committed state: plain values, read from Kafka by kafka/offsets.py
and decided on by planning.py (no client library here)."""

from __future__ import annotations

from dataclasses import dataclass

# A new partition's claim: (old partition, the offset it must commit first), growth.py.
Barrier = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PartitionOffsets:
    partition: int
    low: int
    high: int
    committed: int | None  # None: the group never committed on this partition
    token: int = 0  # the fence's token of that commit (0: none, or not ours)
    clock: int = 0  # the write clock recorded with that commit, us (0: none; clock.py)
    # Recorded with that commit (growth.py): the topic's partition count its run saw (0:
    # none), and the barrier of a new partition's claim (empty once a run committed it).
    partitions: int = 0
    barrier: Barrier = ()
    clock_host: str = ""  # the host that committed it ("": unknown; clock_skew.py)
    committed_at: float = 0.0  # when, s since the epoch (0: unknown; kept_commit.py)

    @property
    def state(self) -> CommitState:
        return CommitState(self.committed, self.token)

    @property
    def next_offset(self) -> int:
        """Where the next run starts: the committed offset, but never below the oldest record."""
        return self.low if self.committed is None else max(self.committed, self.low)

    @property
    def lost_to_retention(self) -> int:
        """Records deleted by retention between the committed offset and the low watermark."""
        return 0 if self.committed is None else max(0, self.low - self.committed)

    @property
    def lag(self) -> int:
        return max(0, self.high - self.next_offset)

    @property
    def beyond_end(self) -> bool:
        """The committed offset is past the log's end (an unclean leader election, a broker
        restored from an older snapshot, offsets written by another tool): lag is 0, yet the
        records that arrive below the committed offset will never be read."""
        return self.committed is not None and self.committed > self.high

    def beyond_end_warning(self) -> str:
        """What every surface says of a partition beyond_end (after "partition P: "), with the
        command that repairs it: replay rewinds to the log end, and what arrives there is read."""
        return (f"committed offset {self.committed} is beyond the log end {self.high}: records "
                f"below {self.committed} will be skipped; to re-read them: `programuser-dagster "
                f"replay --partition {self.partition} --to-offset {self.high} --apply`")


def why_read_stalled(position: int, end: int, high: int | None) -> str:
    """Why a read_committed reader got nothing at `position` of a range ending at `end`, from
    the partition's high-water mark as a read_uncommitted reader sees it (None: the broker did
    not answer for it either). Only then is the broker the suspect."""
    if high is None:
        return "and did not answer for the partition's offsets either. Is the broker up?"
    if high <= position:
        return (f"because the partition ends at {high}: offsets {high} to {end} hold no record "
                "(a committed offset beyond the log end? `programuser-dagster lag` says).")
    return (f"though records reach {high}: offset {position} is in a producer transaction "
            "still open on the topic, and a read_committed reader waits until its producer "
            "commits or aborts it (or the broker aborts it after the producer's "
            "transaction.timeout.ms). Find the producer writing transactions to the topic, or "
            "wait for its transaction to end.")


@dataclass(frozen=True)
class CommitState:
    """A partition's committed offset (None: never committed) and the token of that commit."""

    offset: int | None
    token: int

    def describe(self) -> str:
        return f"offset {'none' if self.offset is None else self.offset}, token {self.token}"
