"""What a prune of Dagster's history deletes and what it keeps, on plain records.

housekeeping/history.py reads the records from the instance (and the committed state from Kafka)
and deletes what these rules give, in batches. A run older than the window is deleted unless:
it is in flight; it is the newest successful run of its job and partition (the stall check and
the partitions page read it); it is a failed attempt at its partition's committed state (the
sensor's back-off counts them); it belongs to a backfill that has not finished; or it holds an
asset's newest materialization. A runless event (an observation, a check evaluation) or a check
execution older than the window is deleted unless it is the newest of its kind, so the asset page
still shows the latest state.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

# DagsterRunStatus values (core/ imports no Dagster).
IN_FLIGHT = frozenset({"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"})
SUCCESS = "SUCCESS"
# A check execution not yet evaluated: its run writes the result into it.
PLANNED = "PLANNED"

SECONDS_PER_DAY = 86_400.0

# Why an old run is kept, in the order the rules are tried (a run is counted once).
IN_FLIGHT_REASON = "in_flight"
NEWEST_SUCCESS = "newest_success"
FAILED_ATTEMPT = "failed_attempt"
UNFINISHED_BACKFILL = "unfinished_backfill"
LATEST_EVENT = "latest_event"
KEPT_REASONS = (IN_FLIGHT_REASON, NEWEST_SUCCESS, FAILED_ATTEMPT, UNFINISHED_BACKFILL,
                LATEST_EVENT)


def cutoff(now: float, keep_days: float) -> float:
    """The oldest time (epoch seconds) a prune at `now` keeps everything from."""
    return now - keep_days * SECONDS_PER_DAY


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    job: str
    partition: str | None
    status: str  # a DagsterRunStatus value
    ended: float  # its end time; its last update when it has none (in flight, or never started)
    backfill: str | None = None


@dataclass(frozen=True)
class Protected:
    """What the instance and Kafka say must stay, whatever its age."""

    # The newest successful run of each (job, partition) among all runs, as the instance found
    # them: a batch of old runs alone cannot tell whether a newer success exists.
    newest_successes: Collection[Run] = ()
    # Runs the sensor counts as failed attempts at a partition's committed state.
    failed_attempts: Collection[str] = frozenset()
    unfinished_backfills: Collection[str] = frozenset()
    # Runs holding an asset's newest materialization.
    latest_events: Collection[str] = frozenset()


@dataclass
class RunVerdict:
    delete: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)  # old runs kept, by reason


def _newest_successes(runs: Iterable[Run]) -> set[str]:
    newest: dict[tuple[str, str | None], Run] = {}
    for run in runs:
        if run.status != SUCCESS:
            continue
        key = (run.job, run.partition)
        best = newest.get(key)
        if best is None or (run.ended, run.run_id) > (best.ended, best.run_id):
            newest[key] = run
    return {run.run_id for run in newest.values()}


def keep_reason(run: Run, protected: Protected, newest: Collection[str]) -> str | None:
    """Why an old run stays, or None: it may be deleted."""
    if run.status in IN_FLIGHT:
        return IN_FLIGHT_REASON
    if run.run_id in newest:
        return NEWEST_SUCCESS
    if run.run_id in protected.failed_attempts:
        return FAILED_ATTEMPT
    if run.backfill is not None and run.backfill in protected.unfinished_backfills:
        return UNFINISHED_BACKFILL
    if run.run_id in protected.latest_events:
        return LATEST_EVENT
    return None


def judge_runs(runs: Iterable[Run], protected: Protected, oldest_kept: float) -> RunVerdict:
    """The runs (any batch of them) to delete: those that ended before `oldest_kept` and that no
    rule keeps; and how many old runs each rule kept."""
    runs = list(runs)
    newest = _newest_successes([*runs, *protected.newest_successes])
    verdict = RunVerdict()
    for run in runs:
        if run.ended >= oldest_kept:
            continue
        reason = keep_reason(run, protected, newest)
        if reason is None:
            verdict.delete.append(run.run_id)
        else:
            verdict.kept[reason] = verdict.kept.get(reason, 0) + 1
    return verdict


@dataclass(frozen=True, slots=True)
class Event:
    """A stored row that only its newest of a kind must outlive the window: a runless event
    (kind: asset and event type) or a check execution (kind: asset and check)."""

    id: int  # its storage id: a later row of a kind has a higher one
    kind: Hashable
    time: float
    settled: bool = True  # False: a check execution still PLANNED, which its run will fill in


def judge_events(events: Iterable[Event], newest: Mapping[Hashable, int],
                 oldest_kept: float) -> list[int]:
    """The ids to delete: older than `oldest_kept`, settled, and not the newest of their kind
    (the newest id of each kind among all rows, as the instance found them, or among `events`)."""
    events = list(events)
    latest = dict(newest)
    for e in events:
        if e.id > latest.get(e.kind, -1):
            latest[e.kind] = e.id
    return [e.id for e in events
            if e.time < oldest_kept and e.settled and e.id != latest[e.kind]]
