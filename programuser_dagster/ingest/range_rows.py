"""One partition's offset range as flattened rows: what flatten_events hands the IO manager.

The range is read from Kafka and flattened a chunk at a time as the Cassandra IO manager iterates
it: it takes the next chunk while its last writes of this one are in flight, so flattening
overlaps Cassandra's work and a run holds a chunk or two, never the range. What reading and
flattening find is counted on the range's report (offsets read; skips and dead letters by
offset and reason), which the IO manager completes with what Cassandra acknowledged. Message
content never leaves this object and the IO manager (it is personal data).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
from dagster import Failure

from ..cassandra.writes import RECORD_TIMES, WRITE_TIMES
from ..core.clock import WriteClock
from ..core.events import flatten
from ..core.report import RangeReport
from ..kafka.resource import KafkaResource, KafkaUnavailable, Message, record_time_ms
from ..settings import DEAD_LETTERS_PER_RUN


@dataclass(frozen=True)
class Chunking:
    messages: int  # per chunk
    bytes: int  # of message values per chunk, about
    dead_letter_bytes: int  # the range is cut where its letters reach this many bytes,
    dead_letters: int = DEAD_LETTERS_PER_RUN  # or this many letters


class RangeRows:
    """The DataFrames of one range's flattened rows, one per chunk, in offset order."""

    def __init__(
        self, kafka: KafkaResource | None, report: RangeReport, chunking: Chunking,
        on_failure: str,
    ) -> None:
        self.kafka, self.report, self.chunking = kafka, report, chunking
        self.clock = WriteClock(report.start, report.write_base)
        # What the operator is told to do if the range is not committed (said by whichever
        # step fails: reading here, writing in the IO manager).
        self.on_failure = on_failure

    @classmethod
    def nothing(cls, report: RangeReport, on_failure: str) -> RangeRows:
        """A range with nothing to read (superseded, or held): no reader, so no chunk."""
        return cls(None, report, Chunking(1, 1, 1), on_failure)

    def failed(self, what: str) -> str:
        """An operator's account of a failure that left the range uncommitted."""
        r = self.report
        return (f"{what} Nothing of partition {r.partition} offsets [{r.start}, {r.end}) was "
                f"committed. {self.on_failure}")

    def __iter__(self) -> Iterator[pd.DataFrame]:
        if self.kafka is not None:
            try:
                yield from self._frames(self.kafka)
            except KafkaUnavailable as exc:
                raise Failure(description=self.failed(str(exc))) from exc
            except Exception as exc:  # a client error or a bug: what failed, and what next
                raise Failure(description=self.failed(
                    f"Reading or flattening partition {self.report.partition} failed "
                    f"({type(exc).__name__}: {exc})."
                )) from exc
        # Only now may the range be committed up to its end: every chunk of it was handed on.
        self.report.read_to_end = True

    def _frames(self, kafka: KafkaResource) -> Iterator[pd.DataFrame]:
        # Not in a thread: flattening is pure Python, and a thread holding the GIL delays the
        # driver's I/O thread so much that a run took ~25% longer (docs/performance.md).
        r, c = self.report, self.chunking
        pending: list[Message] = []
        pending_bytes = 0
        # Nothing is written before the first chunk is flattened: a small first chunk starts
        # Cassandra's work sooner, the rest come in full chunks, whatever each fetch returned.
        size, limit = max(1, c.messages // 5), max(1, c.bytes // 5)
        for messages in kafka.iter_range(r.partition, r.start, r.end, batch_size=c.messages,
                                         lost=r.lose):
            if r.first_read_at is None:
                r.first_read_at = time.time()
            for m in messages:
                pending.append(m)
                pending_bytes += len(m.value() or b"")
                if len(pending) >= size or pending_bytes >= limit:
                    yield self._flatten(pending)
                    if (r.letter_bytes >= c.dead_letter_bytes
                            or len(r.dead_letters) >= c.dead_letters):
                        # Ends here: the chunk's last offset, not the rest of this fetch.
                        r.cut_at(pending[-1].offset() + 1)
                        return
                    pending, pending_bytes = [], 0
                    size, limit = c.messages, c.bytes
        if pending:
            yield self._flatten(pending)

    def _flatten(self, messages: list[Message]) -> pd.DataFrame:
        r = self.report
        r.read += len(messages)
        batch = flatten((m.offset(), m.value()) for m in messages)
        if batch.rejects:
            sizes = {m.offset(): len(m.value() or b"") for m in messages}
            skipped = Counter(x.reason for x in batch.rejects if x.outcome == "skipped")
            for reason, n in skipped.items():
                r.skipped[reason] = r.skipped.get(reason, 0) + n
            letters = [(x.offset, x.reason) for x in batch.rejects if x.outcome == "dead_lettered"]
            r.dead_letters += letters
            r.letter_bytes += sum(sizes[o] for o, _ in letters)
        rows = batch.rows
        # The record times of the events written, for their ages when Cassandra acknowledges
        # them (the IO manager measures those): the broker's append times on the stack's topics.
        rejected = {x.offset for x in batch.rejects}
        rows[WRITE_TIMES] = pd.Series(self.clock.stamp(rows["writers"].tolist()),
                                      index=rows.index, dtype=object)
        # Set last: pandas copies a frame's attrs on every column access.
        rows.attrs[RECORD_TIMES] = [t for m in messages if m.offset() not in rejected
                                    and (t := record_time_ms(m)) is not None]
        return rows
