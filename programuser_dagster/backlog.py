"""Which partitions need a run now: the one planning rule shared by sensor, schedule and drain.

A partition gets a run request when it has records past its committed offset and no run of it
is queued or in progress. A range whose run failed is requested again (the sensor is the one
owner of retries), after a back-off that doubles with each failed attempt at the same committed
state (offset and fence token). A run that succeeded without moving the offset (outcome
no_progress) is a failed attempt too, so a bad setting cannot loop; a superseded run is not
(another run committed its range).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dagster import (
    AssetObservation,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRecord,
    RunRequest,
    RunsFilter,
)

from .assets import PROGRAM_ENROLLMENT
from .jobs import (
    END_TAG,
    JOB_NAME,
    NO_PROGRESS,
    OUTCOME_TAG,
    START_TAG,
    START_TOKEN_TAG,
    kafka_partitions,
)
from .resources.kafka import KafkaResource, PartitionOffsets

IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
PARTITION_TAG = "dagster/partition"
# On runs executed by `drain`: the process that executes them (see runs_in_flight).
DRAIN_PROCESS_TAG = "programuser/drain_process"
RETRY_BASE_S = 30.0
RETRY_MAX_S = 900.0


@dataclass
class BacklogPlan:
    offsets: list[PartitionOffsets]
    new_partitions: list[str]
    run_requests: list[RunRequest] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)  # partition -> why no run now

    def lag_observation(self) -> AssetObservation:
        lag = {f"lag_partition_{o.partition}": o.lag for o in self.offsets}
        return AssetObservation(
            PROGRAM_ENROLLMENT, metadata={"lag_total": sum(lag.values()), **lag}
        )

    def summary(self) -> str:
        if not self.offsets:
            return "The input topic has no partitions."
        lag = sum(o.lag for o in self.offsets)
        if lag == 0:
            return f"Every partition is caught up ({len(self.offsets)} partitions, lag 0)."
        parts = [f"{len(self.run_requests)} run(s) requested, total lag {lag}"]
        parts += [f"partition {p}: {why}" for p, why in sorted(self.waiting.items())]
        return "; ".join(parts)


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


def retry_wait_s(failed_attempts: int) -> float:
    """Back-off before the next attempt at a range that failed `failed_attempts` times."""
    if failed_attempts <= 0:
        return 0.0
    return min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (failed_attempts - 1))


def sync_partitions(instance: DagsterInstance, kafka: KafkaResource) -> tuple[list[int], list[str]]:
    """The topic's partitions, and those not yet known as dynamic partitions of the job."""
    partitions = kafka.partitions()
    known = set(instance.get_dynamic_partitions(kafka_partitions.name or ""))
    return partitions, [str(p) for p in partitions if str(p) not in known]


def plan_backlog(
    instance: DagsterInstance,
    kafka: KafkaResource,
    now: float | None = None,
    partitions: Sequence[int] | None = None,
) -> BacklogPlan:
    now = time.time() if now is None else now
    all_partitions, new = sync_partitions(instance, kafka)
    offsets = kafka.offsets(all_partitions if partitions is None else partitions)
    plan = BacklogPlan(offsets=offsets, new_partitions=new)
    for o in offsets:
        if o.lag == 0:
            continue
        if runs_in_flight(instance, o.partition):
            plan.waiting[o.partition] = f"lag {o.lag}, a run is queued or in progress"
            continue
        failed = failed_attempts(instance, o)
        wait = retry_wait_s(len(failed))
        last_end = max((r.end_time or 0.0 for r in failed), default=0.0)
        if failed and now - last_end < wait:
            plan.waiting[o.partition] = (
                f"lag {o.lag}, {len(failed)} failed attempt(s) at offset {o.next_offset}, "
                f"retrying in {wait - (now - last_end):.0f}s"
            )
            continue
        start, end = o.next_offset, o.high
        plan.run_requests.append(
            RunRequest(
                run_key=f"partition-{o.partition}:{start}-{end}:token-{o.token}:"
                f"attempt-{len(failed) + 1}",
                partition_key=str(o.partition),
                run_config={"ops": {"flatten_events": {"config": {"end_offset": end}}}},
                tags=range_tags(o),
            )
        )
    return plan


def range_tags(o: PartitionOffsets) -> dict[str, str]:
    """The tags of a run requested for a partition's backlog (the run corrects them to the
    range it really reads)."""
    return {START_TAG: str(o.next_offset), START_TOKEN_TAG: str(o.token), END_TAG: str(o.high)}


def failed_attempts(instance: DagsterInstance, o: PartitionOffsets) -> list[RunRecord]:
    """Runs at the partition's committed state that failed, were canceled, or succeeded
    without moving it (no progress). A run that committed moved the state on (its token), and
    a superseded run's range was another run's: neither is counted."""
    tags = {PARTITION_TAG: str(o.partition), START_TAG: str(o.next_offset),
            START_TOKEN_TAG: str(o.token)}
    records = instance.get_run_records(
        RunsFilter(
            job_name=JOB_NAME,
            statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED,
                      DagsterRunStatus.SUCCESS],
            tags=tags,
        ),
        limit=100,
    )
    return [
        r for r in records
        if r.dagster_run.status != DagsterRunStatus.SUCCESS
        or r.dagster_run.tags.get(OUTCOME_TAG) == NO_PROGRESS
    ]
