"""Write times: each event's cells are written at a time that orders them as the partition does.

Cassandra keeps, for every cell, the write with the highest timestamp. With the driver's
client-side timestamps the last write *sent* wins, so a run paused and resumed after a newer
run committed (a zombie) would put older values back. Instead each partition has a hybrid
clock, kept with its committed offset (in the commit's metadata): a run that starts at offset S
with the committed clock C takes base = max(now, C + 1) and writes the event at offset o at
base + (o - S) microseconds; its commit of E records base + (E - S) (at least now + (E - S):
ingest/job.py), so the next run's writes are later than every write of this one, whatever order
they reach Cassandra in, while staying close to the wall clock (a row edited by hand is still
updated by the next event).

Offsets are 1 us apart on purpose: an INSERT of a map deletes the old map at its timestamp - 1,
so the next event's map (one microsecond later) replaces exactly the previous one's cells.
A replay of N records runs up to N us ahead of the wall clock. docs/contract.md: "Write times".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class WriteClock:
    """The write times of one run's range, which starts at offset `start`."""

    start: int
    base: int  # the write time of the event at `start`

    @classmethod
    def starting(cls, start: int, committed_clock: int, now: int) -> WriteClock:
        """The clock of a run starting at `start`, after the commit that recorded
        `committed_clock` (0 when there is none: lost, reset by another tool, or the first)."""
        return cls(start, max(now, committed_clock + 1))

    def at(self, offset: int) -> int:
        """The write time of the event at `offset`."""
        return self.base + (offset - self.start)

    def after(self, end: int) -> int:
        """The clock recorded with the commit of `end`: above every write time of the range."""
        return self.base + (end - self.start)

    def stamp(self, writers: Sequence[tuple[int | None, ...]]) -> list[tuple[int | None, ...]]:
        """Per row, the write time of each column group's writer (None: not written)."""
        base = self.base - self.start
        return [tuple(None if o is None else base + o for o in row) for row in writers]
