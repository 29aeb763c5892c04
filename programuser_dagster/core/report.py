"""What one run did to one partition's offset range, and the check that nothing went missing.

Each term is counted where it happens (read at the consumer, written from Cassandra's
acknowledgements, dead-lettered from the broker's delivery reports, skipped by the core), so
`read == written + skipped + dead_lettered` is a real check, not arithmetic.
Only offsets, counts and reasons live here: no message content (it is personal data).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from .event_ages import Ages


def balances(read: int, written: int, skipped: int, dead_lettered: int) -> bool:
    """The accounting rule: every message read was written, skipped or dead-lettered."""
    return read == written + skipped + dead_lettered


def offset_runs(runs: list[tuple[int, int]]) -> str:
    """Runs of offsets as an operator reads them: "[4, 6), [9, 10)"."""
    return ", ".join(f"[{a}, {b})" for a, b in runs)


@dataclass
class RangeReport:
    partition: int
    start: int
    end: int  # exclusive; may end up below requested_end (see cut_at)
    high_watermark: int
    # Records deleted by retention before this run read them (see lose), as [first, end) runs.
    lost_offsets: list[tuple[int, int]] = field(default_factory=list)
    # The partition's committed state when the run started (offset, fence token): the commit
    # lands only if it is still this (kafka/fence.py: fenced_commit).
    committed_before: int | None = None
    token_before: int = 0
    # The write clock committed then, and this range's: the event at offset o is written at
    # write_base + (o - start) us (clock.py).
    clock_before: int = 0
    write_base: int = 0
    read: int = 0
    written: int = 0
    rows_upserted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    # (offset, reason) of each message to dead-letter: the committing step re-reads and sends
    # them in its transaction (no message content crosses steps).
    dead_letters: list[tuple[int, str]] = field(default_factory=list)
    # Why this run has nothing to commit: its range was committed by another run first.
    superseded: str | None = None
    # Why this run read nothing: its partition is new and held (growth.py).
    held: str | None = None
    # The topic's partition count when the range was planned: its commit records it (growth.py).
    partitions: int = 0
    # Bytes of the values to dead-letter: a range whose letters reach the run's
    # dead_letter_bytes (or has settings.DEAD_LETTERS_PER_RUN letters) is cut short (the end its
    # run was planned for stays in requested_end).
    letter_bytes: int = 0
    requested_end: int | None = None
    # Every chunk of [start, end) was read and handed to the writer (the range's iterator ran
    # to its end): the commit step commits nothing otherwise.
    read_to_end: bool = False
    # The ages of the events written, at Cassandra's acknowledgement (ages.Ages.to_dict()).
    ages: dict[str, Any] | None = None
    # When the range's first records arrived from Kafka (epoch s): how long a run took to start
    # reading (the UI shows it beside the run's start).
    first_read_at: float | None = None

    def lose(self, first: int, end: int) -> None:
        """Offsets [first, end) were deleted by retention before this run read them: below its
        start (committed offset to low watermark, when it planned), or inside its range (while
        it read). They are not read, so not in the balance: counted here instead."""
        if end > first:
            self.lost_offsets.append((first, end))

    @property
    def lost_to_retention(self) -> int:
        return sum(end - first for first, end in self.lost_offsets)

    @property
    def lost_while_reading(self) -> list[tuple[int, int]]:
        """The lost offsets inside the range: deleted after the run planned it."""
        return [(a, b) for a, b in self.lost_offsets if a >= self.start]

    def cut_at(self, end: int) -> None:
        """End the range early at `end` (the rest is the next run's); no cut at or past its end."""
        if end >= self.end:
            return
        if self.requested_end is None:
            self.requested_end = self.end
        self.end = end
        # Losses past the cut are the next run's (it finds them below its start when it plans).
        self.lost_offsets = [(first, min(last, end)) for first, last in self.lost_offsets
                             if first < end]

    def to_bytes(self) -> bytes:
        """The report as compressed JSON (offsets, counts and reasons: no message content)."""
        return zlib.compress(json.dumps(asdict(self), separators=(",", ":")).encode())

    @classmethod
    def from_bytes(cls, data: bytes) -> RangeReport:
        stored = json.loads(zlib.decompress(data))
        # Fields this version does not know (a receipt of a newer one, then a rollback) are
        # left out rather than refused; the ones it needs are all in every receipt.
        fields = {k: v for k, v in stored.items() if k in cls.__dataclass_fields__}
        fields["dead_letters"] = [(int(o), str(r)) for o, r in fields["dead_letters"]]
        lost = stored.get("lost_offsets")
        if lost is None and stored.get("lost_to_retention"):
            # A receipt of the version before lost_offsets: it lost only below its start.
            lost = [(stored["start"] - stored["lost_to_retention"], stored["start"])]
        fields["lost_offsets"] = [(int(a), int(b)) for a, b in lost or ()]
        return cls(**fields)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    @property
    def balanced(self) -> bool:
        return balances(self.read, self.written, self.skipped_total, self.dead_lettered_total)

    def imbalance(self) -> str:
        return (
            f"read {self.read} != written {self.written} + skipped {self.skipped_total} "
            f"+ dead-lettered {self.dead_lettered_total}"
        )

    def describe(self) -> str:
        """One line an operator can read."""
        text = (
            f"partition {self.partition} offsets [{self.start}, {self.end}): read {self.read}, "
            f"written {self.written} ({self.rows_upserted} rows upserted), "
            f"skipped {self.skipped_total}, dead-lettered {self.dead_lettered_total}"
        )
        if self.lost_to_retention:
            text += (f", {self.lost_to_retention} lost to retention before they were read "
                     f"(offsets {offset_runs(self.lost_offsets)})")
        return text

    def metadata(self) -> dict[str, Any]:
        """Numeric metadata (so the UI plots it) plus the per-reason breakdowns."""
        meta: dict[str, Any] = {
            "partition": self.partition,
            "start_offset": self.start,
            "end_offset": self.end,
            "messages_read": self.read,
            "messages_written": self.written,
            "messages_skipped": self.skipped_total,
            "messages_dead_lettered": self.dead_lettered_total,
            "rows_upserted": self.rows_upserted,
            "lost_to_retention": self.lost_to_retention,
        }
        if self.lost_offsets:
            meta["lost_to_retention_offsets"] = offset_runs(self.lost_offsets)
        if self.skipped:
            meta["skipped_by_reason"] = dict(sorted(self.skipped.items()))
        if self.dead_lettered:
            meta["dead_lettered_by_reason"] = dict(sorted(self.dead_lettered.items()))
        if self.ages:
            meta.update(Ages.from_dict(self.ages).metadata())
        return meta
