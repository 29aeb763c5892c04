"""A partition's last commit, kept where Kafka's offset retention cannot remove it, and what
Kafka's committed state means beside it: pure (no client library).

Kafka removes a group's committed offset `offsets.retention.minutes` (7 days by default) after
its last commit while the group has no active member, and this pipeline never joins its group.
So:

  * an idle partition's commit is *renewed* before that (renewal_due): the same offset, token,
    clock, partition count and barrier, committed again through the fence with a new time;
  * every commit (a run's, a renewal, replay, reset-clock) is also kept in Cassandra (KeptCommit,
    cassandra/kept_commits.py), without TTL;
  * a partition whose committed offset is missing from Kafka, or behind the kept one by an older
    commit, is *lost* (lost_line): it is not run (it would restart from the oldest retained
    record and ingest history again); the line says what happened and the replay command that
    resumes where it was.

The renewal keeps the token. The fence's token answers "has any range been committed since this
run read the partition?": a renewal commits no range and changes nothing a run read (offset,
clock, count, barrier), so a run that read the state before a renewal is still right to commit
it, and a run that read an older state is still refused (the renewal is only committed if the
state is still the one it read, so it never writes an old offset over a newer commit).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from .offsets import PartitionOffsets

# Kafka's default offsets.retention.minutes: what is assumed when the broker does not say.
DEFAULT_OFFSETS_RETENTION_S = 7 * 24 * 3600


@dataclass(frozen=True)
class KeptCommit:
    """The last commit of a partition as kept in Cassandra (cassandra/kept_commits.py)."""

    partition: int
    offset: int
    token: int
    clock: int  # the write clock committed, us
    partitions: int  # the topic's partition count it recorded (core/growth.py)
    committed_at: float  # when, s since the epoch (the committing host's clock)
    host: str = ""

    @classmethod
    def of(cls, o: PartitionOffsets) -> KeptCommit:
        """The kept record of a committed state, as Kafka returns it."""
        assert o.committed is not None
        return cls(o.partition, o.committed, o.token, o.clock, o.partitions, o.committed_at,
                   o.clock_host)

    def when(self) -> str:
        return datetime.fromtimestamp(self.committed_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def lost(o: PartitionOffsets, kept: KeptCommit | None) -> bool:
    """Kafka no longer has the partition's last commit: its committed offset is missing, or is
    behind the kept one and was not committed after it (an older or foreign state: a later
    commit of ours, e.g. a replay backwards, has a higher token). No kept record (a first run,
    or a deployment from before kept records): not lost."""
    if kept is None:
        return False
    if o.committed is None:
        return True
    return o.committed < kept.offset and o.token <= kept.token


def resume_command(partition: int, offset: int) -> str:
    return f"programuser-dagster replay --partition {partition} --to-offset {offset} --apply"


def lost_line(o: PartitionOffsets, kept: KeptCommit) -> str:
    """What every surface says of a lost partition (after "partition P: "): one line, with the
    replay command that resumes where it was."""
    last = (f"last committed {kept.offset} at {kept.when()}"
            + (f" by {kept.host}" if kept.host else ""))
    # No semicolon: the sensor's skip reason joins partitions' lines with them.
    if o.committed is None:
        what = (f"Kafka no longer has the committed offset ({last}, kept in Cassandra: the "
                "broker removes a group's offsets offsets.retention.minutes after its last "
                "commit when it has no active member)")
    else:
        what = (f"Kafka's committed offset {o.committed} (token {o.token}) is behind the last "
                f"commit ({last}, token {kept.token}: moved by another tool, or the broker "
                "lost commits)")
    return (f"{what}, so it is not run: its next run would start at {o.next_offset} and ingest "
            f"history again — resume with `{resume_command(o.partition, kept.offset)}` (or "
            "another --to-offset or --to-time of your choosing)")


def renew_after_s(setting_s: int | None, retention_s: float | None) -> tuple[float, str | None]:
    """How old a commit may get before it is renewed, and a warning for the operator (None:
    none): the setting (PROGRAMUSER_OFFSET_RENEW_S) if below the broker's retention, otherwise
    half of the retention (the broker's, or Kafka's default when it could not be read)."""
    warning = None
    if retention_s is None:
        warning = ("Could not read offsets.retention.minutes from the broker: assuming Kafka's "
                   f"default, {DEFAULT_OFFSETS_RETENTION_S // 60} minutes.")
        retention_s = DEFAULT_OFFSETS_RETENTION_S
    if setting_s is None:
        return retention_s / 2, warning
    if setting_s >= retention_s:
        return retention_s / 2, (
            f"PROGRAMUSER_OFFSET_RENEW_S={setting_s} is not below the broker's "
            f"offsets.retention.minutes ({retention_s / 60:g} minutes): commits are renewed "
            f"after {retention_s / 2:.0f} s instead, half of it.")
    return float(setting_s), warning


def renewal_due(o: PartitionOffsets, now_s: float, after_s: float) -> bool:
    """The partition's commit is older than `after_s` (or of unknown age: made before commits
    recorded their time), so it is renewed unless a run of it is queued or in progress (the
    caller checks). A partition never committed has nothing to renew."""
    if o.committed is None:
        return False
    return o.committed_at <= 0 or now_s - o.committed_at >= after_s
