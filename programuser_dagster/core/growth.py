"""Partitions added to the input topic: a new partition waits for the old partitions' backlog.

Producers key by programId:userId, so a key's events stay in one partition while the partition
count stays. When partitions are added, a key's later events may go to a new partition while its
earlier ones still wait in an old partition's backlog; written after them, with later write
times (clock.py), the earlier events would win every column group. So:

  * every commit records the partition count its run saw (`partitions=N` in its metadata); the
    largest count recorded on the topic's partitions is the count ingestion knows;
  * a partition at or above that count is new: before any run reads it, it is *claimed*: a
    commit at its next offset, through the same fence as every commit, that records the barrier
    (each old partition's high-water mark, where it had a backlog) and a clock at least every
    old partition's committed clock;
  * a claimed partition is held until every old partition of its barrier has committed up to
    its mark; its first run then starts its clock above those partitions' clocks too
    (start_clock), and that run's commit, like any, records no barrier.

A topic on which no commit records a count (a fresh deployment, or commits made before this
rule) has no new partitions: its first runs need no hold.

Pure: no I/O, no client library. kafka/metadata.py writes and parses the commit metadata;
ingest/backlog.py (sensor, schedule), ingest/drain.py and ingest/job.py (every run) apply the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .offsets import Barrier, CommitState, PartitionOffsets


@dataclass(frozen=True)
class Claim:
    """The commit that claims new partition `partition` (fenced on its state `expected`)."""

    partition: int
    expected: CommitState
    offset: int  # where it commits: the partition's next offset (nothing is read)
    partitions: int  # the count it records: the partition is known from then on
    barrier: Barrier
    clock: int


def known_count(topic: Sequence[PartitionOffsets]) -> int:
    """The partition count ingestion knows: the largest recorded by a commit (0: none)."""
    return max((o.partitions for o in topic), default=0)


def claims(topic: Sequence[PartitionOffsets]) -> list[Claim]:
    """The claims to commit before any run reads the topic (`topic`: every partition's offsets,
    read together): one per partition added since a commit recorded the count, none otherwise.

    Two claimers reading the topic at different times cannot hold two partitions on each other:
    a partition is in a barrier only if it was known when the barrier was read.
    """
    known = known_count(topic)
    if not known:
        return []
    old = [o for o in topic if o.partition < known]
    barrier = tuple((o.partition, o.high) for o in old if o.high > o.next_offset)
    clock = max((o.clock for o in old), default=0)
    count = max(o.partition for o in topic) + 1
    return [Claim(o.partition, o.state, o.next_offset, count, barrier, clock)
            for o in topic if o.partition >= known]


def holders(o: PartitionOffsets, topic: Sequence[PartitionOffsets]) -> dict[int, int]:
    """The old partitions that `o` still waits for, each with the offset it must commit."""
    next_offset = {t.partition: t.next_offset for t in topic}
    # A partition missing from `topic` cannot be: Kafka never removes one.
    return {q: mark for q, mark in o.barrier if next_offset.get(q, mark) < mark}


def hold(o: PartitionOffsets, topic: Sequence[PartitionOffsets]) -> str | None:
    """Why `o` must not be read yet (None: it may), in an operator's words."""
    waits = holders(o, topic)
    if not waits:
        return None
    next_offset = {t.partition: t.next_offset for t in topic}
    behind = ", ".join(f"partition {q} commits offset {mark} (it is at {next_offset[q]})"
                       for q, mark in sorted(waits.items()))
    return (f"held until {behind}: partition {o.partition} was added to the topic while "
            "those partitions had a backlog, which may hold older events of the keys now sent "
            "to it; they are written first. Nothing to do: their runs release it.")


def start_clock(o: PartitionOffsets, topic: Sequence[PartitionOffsets]) -> int:
    """The committed clock that a run of `o` starts after (WriteClock.starting): its own and,
    while its claim's barrier stands, that of each partition of the barrier as it is now (they
    committed the backlog since the claim), so its writes come after theirs."""
    clocks = {t.partition: t.clock for t in topic}
    return max([o.clock, *(clocks.get(q, 0) for q, _ in o.barrier)])
