"""A partition's offsets and committed state: plain values, read from Kafka by resources/kafka.py
and decided on by planning.py (no client library here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartitionOffsets:
    partition: int
    low: int
    high: int
    committed: int | None  # None: the group never committed on this partition
    token: int = 0  # the fence's token of that commit (0: none, or not ours)
    clock: int = 0  # the write clock recorded with that commit, us (0: none; clock.py)
    clock_host: str = ""  # the host that committed it ("": unknown; clock_skew.py)

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


@dataclass(frozen=True)
class CommitState:
    """A partition's committed offset (None: never committed) and the token of that commit."""

    offset: int | None
    token: int

    def describe(self) -> str:
        return f"offset {'none' if self.offset is None else self.offset}, token {self.token}"
