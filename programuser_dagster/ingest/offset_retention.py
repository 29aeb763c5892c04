"""Offsets that outlive Kafka's offset retention (core/kept_commit.py): the kept commits read
beside Kafka's committed state (lost partitions, which the sensor, schedule and drain skip and a
run refuses), the renewal of commits before the broker removes them (the health sensor), and
the kept record written after each commit."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..cassandra.client import CassandraResource
from ..cassandra.kept_commits import keep_commit, kept_commits
from ..core.kept_commit import lost, lost_line, renew_after_s, renewal_due
from ..core.offsets import PartitionOffsets
from ..kafka.resource import KafkaResource, KafkaUnavailable, Superseded


def lost_partitions(kafka: KafkaResource, cassandra: CassandraResource,
                    offsets: Sequence[PartitionOffsets]) -> dict[int, str]:
    """Each lost partition of `offsets` and its line (core/kept_commit.py). Cassandra is read only
    when a partition has lag or no commit (a partition that cannot be lost has neither: its
    committed offset is at or past the kept one, which was at most the high-water mark); each
    finding is confirmed by reading the partition's offsets again, so that a commit landing
    between the two reads is not taken for a loss. Raises CassandraWriteFailed."""
    if not any(o.lag > 0 or o.committed is None for o in offsets):
        return {}
    kept = kept_commits(cassandra, kafka.group_id, kafka.input_topic)
    found = {}
    for o in offsets:
        record = kept.get(o.partition)
        if record is not None and lost(o, record):
            again = kafka.partition_offsets(o.partition)
            if lost(again, record):
                found[o.partition] = lost_line(again, record)
    return found


def refusal(kafka: KafkaResource, cassandra: CassandraResource, partition: int,
            read: Callable[[], PartitionOffsets]) -> tuple[PartitionOffsets, str | None]:
    """A run's check: the partition's offsets (`read`), and why it must not run (None: it may).
    The kept commit is read first: it is never newer than the state Kafka returns after it."""
    record = kept_commits(cassandra, kafka.group_id, kafka.input_topic).get(partition)
    offsets = read()
    if record is not None and lost(offsets, record):
        return offsets, f"Partition {partition}: {lost_line(offsets, record)}"
    return offsets, None


def renew_commits(
    kafka: KafkaResource, cassandra: CassandraResource, offsets: Sequence[PartitionOffsets],
    setting_s: int | None, busy: Callable[[int], bool], say: Callable[[str], None],
    warn: Callable[[str], None], now: float | None = None,
) -> list[int]:
    """Renew each partition's commit that is due (core/kept_commit.py: renewal_due) and not
    `busy` (a run of it queued or in progress), through the fence, and keep it; returns the
    partitions renewed. Cheap when none is due: no broker config, run records or Cassandra are
    read then."""
    now = time.time() if now is None else now
    # The broker's retention is read only when some commit is older than the smallest threshold
    # it could give: a minute, or the setting.
    floor = min(60.0, float(setting_s)) if setting_s else 60.0
    if not any(renewal_due(o, now, floor) for o in offsets):
        return []
    after_s, warning = renew_after_s(setting_s, kafka.offsets_retention_s())
    if warning:
        warn(warning)
    renewed = []
    for o in offsets:
        if not renewal_due(o, now, after_s) or busy(o.partition):
            continue
        try:
            with kafka.fenced_commit(o.partition, o.state) as txn:
                txn.renew()
        except Superseded:
            continue  # committed since it was read: renewed by that commit
        except KafkaUnavailable as exc:
            warn(f"Partition {o.partition}'s commit was not renewed this time: {exc}")
            continue
        keep_commit(cassandra, kafka.group_id, kafka.input_topic, txn.kept, warn)
        age = "of unknown age" if o.committed_at <= 0 else f"{now - o.committed_at:.0f} s old"
        say(f"Partition {o.partition}: renewed its commit at {o.committed} (token {o.token}; it "
            f"was {age}, renewed after {after_s:.0f} s) so that Kafka's offset retention keeps "
            "it.")
        renewed.append(o.partition)
    return renewed
