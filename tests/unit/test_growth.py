"""Partitions added to the input topic (programuser_dagster/core/growth.py): which are claimed, what
holds them, and the clock their first run starts after; on plain data."""

from __future__ import annotations

from programuser_dagster.core.growth import Claim, claims, hold, holders, start_clock
from programuser_dagster.core.offsets import CommitState, PartitionOffsets
from programuser_dagster.core.planning import Launch, decide
from programuser_dagster.kafka.metadata import _barrier, _clock, _token, commit_metadata

NOW = 1_000_000.0


def at(partition: int, high: int, committed: int | None = None, low: int = 0, token: int = 0,
       clock: int = 0, partitions: int = 0,
       barrier: tuple[tuple[int, int], ...] = ()) -> PartitionOffsets:
    return PartitionOffsets(partition, low, high, committed, token, clock, partitions, barrier)


def test_a_fresh_topic_claims_nothing_however_many_partitions_it_has() -> None:
    # No commit records a count: a fresh deployment (or commits from before the rule).
    assert claims([at(0, high=5), at(1, high=3), at(2, high=0)]) == []
    # One partition committed by a run that predates counts: still nothing to claim.
    assert claims([at(0, high=5, committed=5, token=1), at(1, high=3)]) == []


def test_a_topic_at_its_known_count_claims_nothing() -> None:
    # Partition 1 never committed (no records yet) but was known: not new.
    assert claims([at(0, high=5, committed=2, token=1, partitions=2), at(1, high=0)]) == []


def test_partitions_past_the_known_count_are_claimed_behind_the_old_backlogs() -> None:
    topic = [
        at(0, high=9, committed=4, token=3, clock=700, partitions=3),  # backlog to 9
        at(1, high=6, committed=6, token=2, clock=900, partitions=3),  # caught up
        at(2, high=5, low=1),  # old, never committed, a backlog from its oldest record
        at(3, high=2),  # new
        at(4, high=0),  # new, empty
    ]
    barrier = ((0, 9), (2, 5))
    assert claims(topic) == [
        Claim(3, CommitState(None, 0), 0, 5, barrier, 900),
        Claim(4, CommitState(None, 0), 0, 5, barrier, 900),
    ]


def test_a_claimed_partition_is_known_and_its_claim_a_barrier_for_later_growth() -> None:
    # 1 -> 2 claimed (held on partition 0), then 2 -> 3: partition 2 waits for both.
    topic = [
        at(0, high=9, committed=4, token=3, partitions=1),
        at(1, high=2, committed=0, token=1, partitions=2, barrier=((0, 9),)),
        at(2, high=1),
    ]
    [claim] = claims(topic)
    assert (claim.partition, claim.partitions, claim.barrier) == (2, 3, ((0, 9), (1, 2)))


def test_a_new_partition_is_held_until_each_old_partition_commits_its_mark() -> None:
    new = at(2, high=3, committed=0, token=1, partitions=3, barrier=((0, 9), (1, 5)))
    topic = [at(0, high=12, committed=8, partitions=2), at(1, high=5, committed=5), new]
    assert holders(new, topic) == {0: 9}
    why = hold(new, topic)
    assert why is not None
    assert why.startswith("held until partition 0 commits offset 9 (it is at 8)")
    released = [at(0, high=12, committed=9), at(1, high=5, committed=5), new]
    assert hold(new, released) is None
    # Retention past the mark releases it too: those records can no longer be written.
    assert hold(new, [at(0, high=12, low=10, committed=3), released[1], new]) is None


def test_a_new_partition_starts_its_clock_above_every_old_partition() -> None:
    # Its claim recorded the old clocks of the time (1000); partition 0 committed since.
    new = at(1, high=3, committed=0, token=1, clock=1000, barrier=((0, 9),))
    topic = [at(0, high=9, committed=9, clock=5000), new]
    assert start_clock(new, topic) == 5000
    # After its first commit (no barrier) only its own clock counts.
    assert start_clock(at(1, high=3, committed=3, clock=2000), topic) == 2000


def test_the_plan_holds_a_new_partition_and_launches_it_once_released() -> None:
    new = at(1, high=1, committed=0, token=1, partitions=2, barrier=((0, 1),))
    plan = decide([at(0, high=1, committed=0, token=1, partitions=1), new], in_flight=(),
                  failed_ends={}, now=NOW)
    assert plan.launches == [Launch(0, 0, 1, 1)]
    assert plan.waiting[1].startswith("lag 1, held until partition 0 commits offset 1")
    # Planning only the new partition still judges it by the whole topic.
    only = decide([new], (), {}, NOW, topic=[at(0, high=1, committed=0), new])
    assert only.launches == [] and 1 in only.waiting
    later = decide([at(0, high=1, committed=1), new], (), {}, NOW)
    assert later.launches == [Launch(1, 0, 1, 1)]


def test_the_commit_metadata_carries_the_count_and_barrier_and_reads_back() -> None:
    text = commit_metadata(4, 123, 3, ((0, 9), (12, 40)))
    assert text == "programuser-dagster token=4 clock=123 id=2 partitions=3 barrier=0:9,12:40"
    assert (_token(text), _clock(text), _barrier(text)) == (4, 123, ((0, 9), (12, 40)))
    # A commit of an older version: no count, no barrier.
    assert _barrier("programuser-dagster token=4 clock=123 id=2") == ()
    assert commit_metadata(4, 123) == "programuser-dagster token=4 clock=123 id=2"
