"""Which partitions need a run now, from the broker and the instance: the planning shared by the
sensor, the schedule and drain.

The rule itself is core/planning.py's (pure); this module reads what it decides from: the topic's
partitions and offsets (the KafkaResource), the runs queued or in progress per partition
(freeing those of a dead drain process), and the failed attempts at each partition's committed
state (from the run records: a failure, a cancel, or a run that succeeded without moving the
offset, outcome no_progress, so that a bad setting cannot loop; not a superseded run, since
another run committed its range), and, for the sensor's trigger, the record time of each lagging
partition's oldest uncommitted record. It turns the launches into Dagster run requests, whose
config and tags are built in one place (launch_request) for the sensor, the schedule and drain.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    AssetObservation,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRecord,
    RunRequest,
    RunsFilter,
)

from ..cassandra.client import CassandraResource, CassandraWriteFailed
from ..core.event_ages import lag_seconds
from ..core.offsets import PartitionOffsets
from ..core.planning import Launch, Plan, decide
from ..core.recording import lag_level
from ..core.trigger import Trigger
from ..kafka.resource import KafkaResource, KafkaUnavailable
from ..settings import Settings
from .assets import JOB_NAME, PROGRAM_ENROLLMENT
from .job import kafka_partitions
from .offset_retention import lost_partitions
from .run_config import run_config
from .run_tags import (
    DRAIN_PROCESS_TAG,
    END_TAG,
    NO_PROGRESS,
    OUTCOME_TAG,
    PARTITION_TAG,
    START_TAG,
    START_TOKEN_TAG,
)

IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


@dataclass(frozen=True)
class OldestRecords:
    """The record time (ms) of each lagging partition's oldest uncommitted record (None: it did
    not arrive), read at `read_ms`; `times_ms` None when not read, or Kafka refused (`why`)."""

    times_ms: dict[int, int | None] | None = None
    read_ms: int = 0
    why: str | None = None

    @classmethod
    def read(cls, kafka: KafkaResource, offsets: Sequence[PartitionOffsets]) -> OldestRecords:
        """One record per lagging partition, read together (<= ~1 s)."""
        try:
            times = kafka.oldest_uncommitted_times(offsets)
        except KafkaUnavailable as exc:  # unknown ages: for the trigger, those partitions launch
            return cls(read_ms=time.time_ns() // 1_000_000, why=str(exc))
        return cls(times, time.time_ns() // 1_000_000)

    def ages_s(self) -> dict[int, float | None]:
        """Per partition read, its oldest record's age in seconds (None: unknown)."""
        return {p: None if t is None else (self.read_ms - t) / 1000
                for p, t in (self.times_ms or {}).items()}


@dataclass
class BacklogPlan:
    decision: Plan  # the pure plan: launches, and why the other partitions with lag wait
    new_partitions: list[str]  # partitions of the topic not yet known to the job
    run_requests: list[RunRequest]  # the launches, as run requests (launch_request)
    # With a trigger, each lagging partition's oldest record time (default: not read).
    oldest: OldestRecords = field(default_factory=OldestRecords)
    warnings: list[str] = field(default_factory=list)  # for the tick's log

    @property
    def offsets(self) -> list[PartitionOffsets]:
        return self.decision.offsets

    @property
    def waiting(self) -> dict[int, str]:
        return self.decision.waiting

    def lag_observation(
        self, oldest_ms: dict[int, int | None] | None = None, now_ms: int = 0
    ) -> AssetObservation:
        """Lag per partition in records and, given the record time of each lagging partition's
        oldest uncommitted record (`oldest_ms`, default: the plan's own), in seconds."""
        if oldest_ms is None and self.oldest.times_ms is not None:
            oldest_ms, now_ms = self.oldest.times_ms, self.oldest.read_ms
        lag: dict[str, int | float] = {f"lag_partition_{o.partition}": o.lag
                                       for o in self.offsets}
        meta: dict[str, int | float] = {"lag_total": sum(o.lag for o in self.offsets), **lag}
        if oldest_ms is not None:
            # A lagging partition whose oldest record's time did not arrive is left out: its
            # lag in seconds is unknown, not 0.
            seconds = {o.partition: lag_seconds(oldest_ms.get(o.partition), now_ms)
                       for o in self.offsets
                       if o.lag == 0 or oldest_ms.get(o.partition) is not None}
            meta["lag_s_max"] = round(max((s for s, _ in seconds.values()), default=0.0), 3)
            meta.update({f"lag_s_partition_{p}": round(s, 3) for p, (s, _) in seconds.items()})
            unknown = len(self.offsets) - len(seconds)
            if unknown:
                meta["lag_s_unknown_partitions"] = unknown
            clamped = sum(c for _, c in seconds.values())
            if clamped:
                meta["lag_s_clamped"] = clamped
        # Lag 0 there does not mean caught up: the records that arrive below will be skipped.
        beyond = [o for o in self.offsets if o.beyond_end]
        meta.update({f"beyond_end_partition_{o.partition}": (o.committed or 0) - o.high
                     for o in beyond})
        return AssetObservation(PROGRAM_ENROLLMENT, metadata=meta, description="; ".join(
            f"partition {o.partition}: {o.beyond_end_warning()}" for o in beyond) or None)

    def summary(self) -> str:
        return self.decision.summary()

    def lag_seen(self, lag_records: int) -> dict[str, Any]:
        """What the lag observation is recorded on a change of (core/recording.py): each
        partition's lag level, and the partitions committed beyond the log end."""
        return {"levels": {str(o.partition): lag_level(o.lag, lag_records)
                           for o in self.offsets},
                "beyond_end": sorted(o.partition for o in self.offsets if o.beyond_end)}


def launch_tags(launch: Launch) -> dict[str, str]:
    """The tags of a run launched for a range (the run corrects them to the range it really
    reads)."""
    return {START_TAG: str(launch.start), START_TOKEN_TAG: str(launch.token),
            END_TAG: str(launch.end)}


def launch_request(launch: Launch, settings: Settings) -> RunRequest:
    """The run request of a launch: the one place a launched run's config and tags are made
    (sensor, schedule, drain), so the settings' limits (PROGRAMUSER_MAX_MESSAGES, ...) bound
    every run."""
    return RunRequest(
        run_key=launch.run_key,
        partition_key=str(launch.partition),
        run_config=run_config(settings, end_offset=launch.end),
        tags=launch_tags(launch),
    )


def _where() -> str:
    """This host and PID namespace: pids are only comparable within both."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}/{namespace}"


def process_token(pid: int | None = None) -> str | None:
    """`host/pid-namespace/pid:start-time` of a process (this one by default), or None if it
    is gone (or there is no /proc). The start time tells it from a later process reusing the pid.
    """
    pid = os.getpid() if pid is None else pid
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime), counted after the parenthesised command name.
    return f"{_where()}/{pid}:{stat.rsplit(')', 1)[1].split()[19]}"


def _dead_drain_process(run: DagsterRun) -> bool:
    """True if the run was executed by a `drain` process that is gone, and we can tell (same
    host and PID namespace); runs of other machines are left to run monitoring's max_runtime."""
    token = run.tags.get(DRAIN_PROCESS_TAG)
    # A re-execution (from the UI) copies its parent's tags, this one included, but runs in a
    # run worker of its own: only drain's own runs (never re-executions) are judged.
    if not token or run.parent_run_id is not None or process_token() is None:
        return False
    where, _, process = token.rpartition("/")
    if where != _where():
        return False
    return process_token(int(process.split(":")[0])) != token


def runs_in_flight(instance: DagsterInstance, partition: int) -> int:
    """Runs of the partition queued or in progress.

    A run that `drain` executed in its own process has no run worker that Dagster watches: if
    that process is killed, the run would stay STARTED (holding its partition) until run
    monitoring's max_runtime. Such a run, whose drain process on this host is gone, is marked
    failed here, so that the next sensor tick, schedule tick or drain frees its partition.
    """
    records = instance.get_run_records(
        RunsFilter(job_name=JOB_NAME, statuses=IN_FLIGHT, tags={PARTITION_TAG: str(partition)}),
        limit=5,
    )
    alive = 0
    for record in records:
        run = record.dagster_run
        if run.status == DagsterRunStatus.STARTED and _dead_drain_process(run):
            instance.report_run_failed(
                run,
                f"The drain process that executed this run ({run.tags[DRAIN_PROCESS_TAG]}) is "
                "gone (killed?). Marked failed to free partition "
                f"{partition}; its range is requested again from the committed offset.",
            )
            continue
        alive += 1
    return alive


def sync_partitions(instance: DagsterInstance, kafka: KafkaResource) -> tuple[list[int], list[str]]:
    """The topic's partitions, and those not yet known as dynamic partitions of the job."""
    partitions = kafka.partitions()
    known = set(instance.get_dynamic_partitions(kafka_partitions.name or ""))
    return partitions, [str(p) for p in partitions if str(p) not in known]


def plan_backlog(
    instance: DagsterInstance,
    kafka: KafkaResource,
    settings: Settings,
    now: float | None = None,
    partitions: Sequence[int] | None = None,
    trigger: Trigger | None = None,
    cassandra: CassandraResource | None = None,
) -> BacklogPlan:
    """The runs to request now (all partitions of the topic, or `partitions`), and the topic's
    partitions not yet known to the job (the caller adds them). With a `trigger` (the sensor's)
    a partition's first attempt waits for its records or their age (core/trigger.py); without
    one, every partition with lag gets its run. Given `cassandra`, a partition whose commit
    Kafka lost waits, with the line that says so (skip_lost)."""
    now = time.time() if now is None else now
    _, new = sync_partitions(instance, kafka)
    # All of them, even for some: a new partition's hold depends on the old ones (core/growth.py).
    topic = kafka.claimed_offsets()
    chosen = None if partitions is None else set(partitions)
    offsets = [o for o in topic if chosen is None or o.partition in chosen]
    lagging = [o for o in offsets if o.lag > 0]  # only these need the instance's run records
    in_flight = {o.partition for o in lagging if runs_in_flight(instance, o.partition)}
    failed_ends = {
        o.partition: [r.end_time for r in failed_attempts(instance, o)]
        for o in lagging
        if o.partition not in in_flight
    }
    oldest = OldestRecords.read(kafka, offsets) if trigger is not None else OldestRecords()
    decision = decide(offsets, in_flight, failed_ends, now, topic, trigger, oldest.ages_s())
    warnings = [] if cassandra is None else skip_lost(decision, kafka, cassandra)
    return BacklogPlan(
        decision=decision,
        new_partitions=new,
        run_requests=[launch_request(launch, settings) for launch in decision.launches],
        oldest=oldest,
        warnings=warnings,
    )


def skip_lost(decision: Plan, kafka: KafkaResource, cassandra: CassandraResource) -> list[str]:
    """Take the partitions whose commit Kafka lost out of the plan's launches, each waiting with
    its line (core/kept_commit.py); the warning when Cassandra could not tell (then the runs
    launched check it themselves, and refuse). Only the partitions about to launch are checked:
    at a trickle most ticks launch nothing, and the health sensor reports every lost one."""
    launching = {launch.partition for launch in decision.launches}
    if not launching:
        return []
    try:
        lost = lost_partitions(kafka, cassandra,
                               [o for o in decision.offsets if o.partition in launching])
    except CassandraWriteFailed as exc:
        return [f"Could not check for commits Kafka lost this tick: {exc}"]
    decision.launches = [launch for launch in decision.launches if launch.partition not in lost]
    decision.waiting.update(lost)
    return []


def failed_attempts(instance: DagsterInstance, o: PartitionOffsets) -> list[RunRecord]:
    """Runs at the partition's committed state that failed, were canceled, or succeeded
    without moving it (no progress). A run that committed moved the state on (its token), and
    a superseded run's range was another run's: neither is counted."""
    return failed_attempts_at(instance, o.partition, str(o.next_offset), str(o.token))


def failed_attempt(run: DagsterRun) -> bool:
    """A run that counts as a failed attempt at its committed state (failed_attempts)."""
    return (run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
            or (run.status == DagsterRunStatus.SUCCESS
                and run.tags.get(OUTCOME_TAG) == NO_PROGRESS))


def failed_attempts_at(instance: DagsterInstance, partition: int, start: str,
                       token: str) -> list[RunRecord]:
    """failed_attempts, at a committed state given as the runs' tags give it (newest first)."""
    tags = {PARTITION_TAG: str(partition), START_TAG: start, START_TOKEN_TAG: token}
    records = instance.get_run_records(
        RunsFilter(
            job_name=JOB_NAME,
            statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED,
                      DagsterRunStatus.SUCCESS],
            tags=tags,
        ),
        limit=100,
    )
    return [r for r in records if failed_attempt(r.dagster_run)]
