"""redrive: write the dead letters that today's rules accept, at the write time of their event.

A letter is re-driven at its `write_time` header (core/clock.py), so it changes exactly the columns
that no later event of its key wrote; a letter without one (older, or another tool's) at its
`source_timestamp`. In two passes, so that memory holds offsets and times, never the letters
(of a too_large letter's key, a digest):
1. scan the dead-letter topic (read_committed); among copies of one source offset keep the one
   with the highest write time (re-runs and replays deliver later copies), then the filters
   decide on that copy (so a filter never re-drives an older copy than another run would);
2. per source partition, drop what an earlier redrive recorded (by source offset and write
   time, in the keyspace), re-read the chosen letters in batches (a `too_large` letter's value
   from the input topic while it is retained, if the record at its offset has the letter's
   key, timestamp and size: else another record is there), flatten them with today's rules,
   and with --apply write those that pass and record them. Those that still fail stay, by
   reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pandas as pd

from ..cassandra.redriven import record_redriven, redriven
from ..cassandra.writes import WRITE_TIMES, CassandraWriter
from ..core.events import flatten
from ..kafka.dead_letters import Origin, key_digest, not_the_original, origin
from ..kafka.resource import KafkaResource, record_time_ms
from .outcomes import Refused

# Letters flattened and written together; each batch's values are all that is held at once.
BATCH = 2_000
STILL_RETAINED = "too_large: the original is no longer retained in the input topic"
NO_TIME = "no write_time or source_timestamp header: no time to write it at"
LETTER_GONE = "the letter is no longer retained in the dead-letter topic"
ORIGINAL_GONE = "the original was deleted before its letter was sent"


@dataclass(frozen=True)
class Filters:
    reasons: frozenset[str] = frozenset()  # a letter's reason (a too_large one's original too)
    partitions: frozenset[int] = frozenset()  # source partitions
    since_ms: int | None = None  # on source_timestamp, inclusive
    until_ms: int | None = None  # exclusive

    def __post_init__(self) -> None:
        if (self.since_ms is not None and self.until_ms is not None
                and self.since_ms >= self.until_ms):
            raise Refused("--since must be before --until.")

    def match(self, letter: Origin) -> bool:
        if self.reasons and not {letter.reason, letter.original_reason} & self.reasons:
            return False
        if self.partitions and letter.source_partition not in self.partitions:
            return False
        if self.since_ms is None and self.until_ms is None:
            return True
        ts = letter.source_timestamp_ms
        return ts is not None and (self.since_ms is None or ts >= self.since_ms) and (
            self.until_ms is None or ts < self.until_ms)


def original_replaced(differs: Sequence[str]) -> str:
    """Why a too_large letter is unrecoverable when another record is at its original's offset:
    what told them apart (not_the_original)."""
    what = " and ".join([", ".join(differs[:-1]), differs[-1]] if len(differs) > 1 else differs)
    return (f"too_large: another record is now at the original's offset (its {what} "
            f"differ{'s' if len(differs) == 1 else ''} from the letter's: the input topic was "
            "recreated, or is a mirror)")


def write_time(letter: Origin) -> int | None:
    """What a letter is re-driven at: its event's write time, else its append time (us)."""
    if letter.write_time_us is not None:
        return letter.write_time_us
    if letter.source_timestamp_ms is not None:
        return letter.source_timestamp_ms * 1000
    return None


@dataclass
class _Chosen:
    letter: Origin
    write_time: int | None
    letter_partition: int  # where the letter itself is, in the dead-letter topic
    letter_offset: int
    copies: int = 1
    # A too_large letter's key, as key_digest: its original is recognised by it (not_the_original).
    key: bytes | None = None

    @property
    def value_kept(self) -> bool:
        return self.letter.value_kept


@dataclass
class Counts:
    """One source partition's re-drive, in an operator's terms."""

    partition: int
    letters: int = 0  # letters of the input topic matching the filters, copies included
    duplicates: int = 0  # older copies of a source offset, dropped
    already: int = 0  # written by an earlier redrive
    redriven: int = 0  # written now (or, in a dry run, would be)
    still_failing: Counter[str] = field(default_factory=Counter)  # by reason
    unrecoverable: Counter[str] = field(default_factory=Counter)  # by why

    def line(self, applied: bool) -> str:
        verb = "re-driven" if applied else "would be re-driven"
        text = (f"source partition {self.partition}: {self.letters} letters match, "
                f"{self.duplicates} older copies dropped, {self.already} already re-driven; "
                f"{self.redriven} {verb}, {sum(self.still_failing.values())} still fail")
        if self.still_failing:
            reasons = sorted(self.still_failing.items())
            text += " (" + ", ".join(f"{r} {n}" for r, n in reasons) + ")"
        if self.unrecoverable:
            text += f", {sum(self.unrecoverable.values())} unrecoverable (" + ", ".join(
                f"{r}: {n}" for r, n in sorted(self.unrecoverable.items())) + ")"
        return text

    def metadata(self) -> dict[str, int]:
        return {"letters_matching": self.letters, "older_copies_dropped": self.duplicates,
                "already_redriven": self.already, "redriven": self.redriven,
                "still_failing": sum(self.still_failing.values()),
                "unrecoverable": sum(self.unrecoverable.values())}


def scan(kafka: KafkaResource, filters: Filters) -> tuple[dict[int, dict[int, _Chosen]], int]:
    """Pass 1: per source partition, per source offset, the copy to re-drive if the filters
    match it; and how many records of the topic were not the input topic's letters (another
    tool's, or unreadable)."""
    chosen: dict[int, dict[int, _Chosen]] = {}
    foreign = 0
    for letter_partition in kafka.dead_letter_partitions():
        for messages in kafka.iter_dead_letters(letter_partition):
            for m in messages:
                letter = origin(m.headers())
                if letter is None or letter.source_topic != kafka.input_topic:
                    foreign += 1
                    continue
                mine = chosen.setdefault(letter.source_partition, {})
                candidate = _Chosen(letter, write_time(letter), letter_partition, m.offset(),
                                    key=None if letter.value_kept else key_digest(m.key()))
                best = mine.get(letter.source_offset)
                if best is None:
                    mine[letter.source_offset] = candidate
                    continue
                candidate.copies = best.copies + 1
                if (candidate.write_time or -1) >= (best.write_time or -1):
                    mine[letter.source_offset] = candidate
                else:
                    best.copies = candidate.copies
    matching = {
        partition: {o: c for o, c in letters.items() if filters.match(c.letter)}
        for partition, letters in chosen.items()
    }
    return {p: letters for p, letters in matching.items() if letters}, foreign


def redrive(
    kafka: KafkaResource, writer: CassandraWriter, filters: Filters, apply: bool,
    say: Callable[[str], None],
) -> list[Counts]:
    """Re-drive the matching letters (a dry run unless `apply`); says one line per source
    partition and returns the counts."""
    chosen, foreign = scan(kafka, filters)
    results = []
    for partition in sorted(chosen):
        counts = _partition(kafka, writer, partition, chosen[partition], apply)
        say(counts.line(applied=apply))
        results.append(counts)
    if not chosen:
        say("no dead letter matches" + (" the filters" if filters != Filters() else ""))
    if foreign:
        say(f"{foreign} records of {kafka.dlq_topic!r} are not dead letters of "
            f"{kafka.input_topic!r}: left alone")
    if not apply:
        say("dry run: nothing was written; add --apply (the job: apply) to re-drive.")
    return results


def _partition(
    kafka: KafkaResource, writer: CassandraWriter, partition: int,
    letters: dict[int, _Chosen], apply: bool,
) -> Counts:
    counts = Counts(partition, letters=sum(c.copies for c in letters.values()))
    counts.duplicates = counts.letters - len(letters)
    done = redriven(writer, kafka.input_topic, partition, create_schema=apply)
    todo: list[tuple[int, _Chosen]] = []
    for source_offset, c in sorted(letters.items(), key=lambda kv: (kv[1].write_time or 0, kv[0])):
        if c.letter.original_deleted:
            counts.unrecoverable[ORIGINAL_GONE] += 1
        elif c.write_time is None:
            counts.unrecoverable[NO_TIME] += 1
        elif (source_offset, c.write_time) in done:
            counts.already += 1
        else:
            todo.append((source_offset, c))
    for start in range(0, len(todo), BATCH):
        batch = todo[start:start + BATCH]
        values = _values(kafka, partition, batch, counts)
        _write(kafka, writer, partition, batch, values, counts, apply)
    return counts


def _values(kafka: KafkaResource, partition: int, batch: Sequence[tuple[int, _Chosen]],
            counts: Counts) -> dict[int, bytes | None]:
    """Source offset -> the event's value: the letter's, or a too_large one's from the input
    topic (absent when it is gone)."""
    values: dict[int, bytes | None] = {}
    by_letter_partition: dict[int, dict[int, int]] = {}
    originals: dict[int, _Chosen] = {}
    for source_offset, c in batch:
        if c.value_kept:
            by_letter_partition.setdefault(c.letter_partition, {})[c.letter_offset] = source_offset
        else:
            originals[source_offset] = c
    for letter_partition, wanted in by_letter_partition.items():
        for offset, m in kafka.iter_offsets(letter_partition, list(wanted), topic=kafka.dlq_topic):
            if m is None:  # deleted by retention between the two passes
                counts.unrecoverable[LETTER_GONE] += 1
            else:
                values[wanted[offset]] = m.value()
    for source_offset, m in kafka.iter_offsets(partition, list(originals)):
        if m is None:
            counts.unrecoverable[STILL_RETAINED] += 1
            continue
        c = originals[source_offset]
        differs = not_the_original(c.letter, c.key, m.key(), record_time_ms(m), m.value())
        if differs:  # the offset alone would re-drive another record as this letter's
            counts.unrecoverable[original_replaced(differs)] += 1
        else:
            values[source_offset] = m.value()
    return values


def _write(
    kafka: KafkaResource, writer: CassandraWriter, partition: int,
    batch: Sequence[tuple[int, _Chosen]], values: dict[int, bytes | None], counts: Counts,
    apply: bool,
) -> None:
    # Ordinals in write-time order stand for offsets: flatten merges in that order, and each
    # group of a merged row is written at the time of the letter that wrote it last.
    present = [(source_offset, c) for source_offset, c in batch if source_offset in values]
    times = [c.write_time for _, c in present]
    result = flatten((i, values[o]) for i, (o, _) in enumerate(present))
    for reject in result.rejects:
        counts.still_failing[reject.reason] += 1
    rows = result.rows
    if rows.empty:
        return
    rows[WRITE_TIMES] = pd.Series(
        [tuple(None if i is None else times[i] for i in w) for w in rows["writers"].tolist()],
        index=rows.index, dtype=object)
    if not apply:
        counts.redriven += int(rows["message_count"].sum())
        return
    receipt = writer.upsert(rows)
    refused = set(receipt.rejected_offsets)
    if refused:
        counts.still_failing["rejected_by_cassandra"] += len(refused)
    written = [i for offsets in rows["offsets"].tolist() for i in offsets if i not in refused]
    record_redriven(writer, kafka.input_topic, _records(partition, present, written))
    counts.redriven += len(written)


def _records(partition: int, present: Sequence[tuple[int, _Chosen]],
             written: Iterable[int]) -> Iterator[tuple[int, int, int]]:
    for i in written:
        source_offset, c = present[i]
        assert c.write_time is not None
        yield partition, source_offset, c.write_time
