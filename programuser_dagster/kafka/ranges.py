"""Reading exact offset ranges: a run's range (iter_range), and single offsets (iter_offsets,
for dead letters and re-drives), past holes and records retention deleted."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from confluent_kafka import (
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)

from ..core.offsets import why_read_stalled
from .errors import KafkaUnavailable
from .offsets import KafkaOffsets

# Dead-letter offsets at most this far apart are re-read in one pass rather than two.
_READ_GAP = 1_000


class RangeReader(KafkaOffsets):
    """Reads offset ranges of one partition with the resource's one assigned consumer."""

    def read_range(
        self, partition: int, start: int, end: int, idle_timeout_s: float = 30.0
    ) -> list[Message]:
        """Every record of [start, end) of one partition, in offset order."""
        chunks = self.iter_range(partition, start, end, idle_timeout_s)
        return [m for chunk in chunks for m in chunk]

    def iter_range(
        self,
        partition: int,
        start: int,
        end: int,
        idle_timeout_s: float = 30.0,
        batch_size: int = 10_000,
        topic: str | None = None,
        until_end_of_partition: bool = False,
        lost: Callable[[int, int], None] | None = None,
    ) -> Iterator[list[Message]]:
        """Chunks of the records of [start, end) of the input topic (or `topic`), in offset
        order; `until_end_of_partition`: or up to where the partition ends for this reader
        (a read_committed reader stops before a transaction still open).

        Offsets may have holes (compaction, transaction markers, aborted transactions), so
        completion is judged by the consumer's position, not by counting records. Records
        retention deletes before they are fetched are skipped, the reader going on from the
        new oldest record; `lost(first, end)` is told each such run of offsets [first, end).
        """
        topic = topic or self.input_topic
        if end <= start:
            return
        tp = TopicPartition(topic, partition, start)
        consumer = self.consumer
        consumer.assign([tp])
        try:
            position = start
            last_progress = time.monotonic()
            while position < end:
                # consume() returns when it has num_messages or the timeout passed: never ask
                # for more than the range still holds, or the last batch of every run would
                # wait out the whole timeout (1 s per run). Holes (compaction, transaction
                # markers) only make it wait for the partition-EOF event instead.
                want = max(1, min(batch_size, end - position))
                msgs = consumer.consume(num_messages=want, timeout=1.0)
                chunk: list[Message] = []
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            position = max(position, m.offset())
                            if until_end_of_partition:
                                position = end
                            continue
                        if err.code() == KafkaError._AUTO_OFFSET_RESET:
                            # The fetch at `position` found it deleted: nothing after it in
                            # this batch (the fetch stopped there).
                            position = self._past_deleted(consumer, topic, partition, position,
                                                          end, lost)
                            last_progress = time.monotonic()
                            break
                        raise KafkaUnavailable(
                            f"{self._where()} failed while reading partition {partition} at "
                            f"offset {position}: {err.str()}"
                        )
                    off = m.offset()
                    if off >= end:
                        position = end
                        break
                    chunk.append(m)
                    position = off + 1
                if chunk:
                    last_progress = time.monotonic()
                    yield chunk
                elif position < end:
                    pos = consumer.position([TopicPartition(topic, partition)])[0]
                    if pos.offset >= end:
                        break
                    if time.monotonic() - last_progress > idle_timeout_s:
                        raise KafkaUnavailable(
                            f"{self._where()} returned nothing for {idle_timeout_s:.0f}s while "
                            f"reading {topic!r} partition {partition} at offset "
                            f"{position} (range ends at {end}), "
                            + why_read_stalled(position, end, self._high_or_none(topic,
                                                                                  partition))
                        )
        finally:
            # A reader left suspended by a failed write ends when it is collected, maybe after
            # the resource closed its consumer at the run's end: only a live one is unassigned.
            if self._consumer is consumer:
                consumer.unassign()

    def _past_deleted(
        self, consumer: Consumer, topic: str, partition: int, position: int, end: int,
        lost: Callable[[int, int], None] | None,
    ) -> int:
        """The reader's next position once `position` was found out of range: the partition's
        oldest record (reassigned there), or `end` when none is left below it. The offsets
        skipped are below the new low watermark: deleted by retention, reported to `lost`."""
        low, high = self._watermarks(topic, partition)
        if low <= position:
            # Out of range above the end of the log: the offsets went back.
            raise KafkaUnavailable(
                f"{self._where()} has no offset {position} in {topic!r} partition {partition} "
                f"any more (its records now run from {low} to {high}): the topic was deleted "
                "and recreated, or its log truncated, while it was read. Check the topic; "
                "the range cannot be read past that offset.")
        resume = min(low, end)
        if lost is not None:
            lost(position, resume)
        if resume < end:
            consumer.assign([TopicPartition(topic, partition, resume)])
        return resume

    def iter_offsets(
        self, partition: int, offsets: Sequence[int], topic: str | None = None
    ) -> Iterator[tuple[int, Message | None]]:
        """The records at these offsets (sorted) of the input topic (or `topic`), one by one;
        None for an offset that no longer holds a record (deleted by retention or compaction
        since it was read, or past the end of a topic recreated since)."""
        topic = topic or self.input_topic
        wanted = sorted(set(offsets))
        # Once: the low watermark only rises, and a record deleted later is simply not found.
        low, high = self._watermarks(topic, partition) if wanted else (0, 0)
        i = 0
        while i < len(wanted):
            j = i
            while j + 1 < len(wanted) and wanted[j + 1] - wanted[j] <= _READ_GAP:
                j += 1
            segment = set(wanted[i:j + 1])
            found: set[int] = set()
            start, stop = max(wanted[i], low), min(wanted[j] + 1, high)
            if start < stop:
                for chunk in self.iter_range(partition, start, stop, batch_size=256,
                                             topic=topic):
                    for m in chunk:
                        if m.offset() in segment:
                            found.add(m.offset())
                            yield m.offset(), m
            for missing in sorted(segment - found):
                yield missing, None
            i = j + 1

