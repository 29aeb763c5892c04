"""prune_history's work: read Dagster's history from the instance, ask core/history.py what to
keep, delete the rest in batches.

Runs go through Dagster's public API (`instance.delete_run`: the run, its tags and its event
log; the compute log manager's `delete_logs`: its stdout/stderr). Dagster has no API that deletes
runless events (the sensor's lag observations, the health sensor's check evaluations) or check
executions short of wiping the asset, so those rows are deleted by id with SQLAlchemy statements
on Dagster's own tables, which PostgreSQL and sqlite both run. On sqlite Dagster leaves two
things behind that are deleted here too: a deleted run's tags (sqlite does not enforce the
cascade) and its event-log file (one database file per run).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as db
from dagster import DagsterInstance, DagsterRunStatus, RunRecord, RunsFilter
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetEventTagsTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.schema import RunTagsTable
from dagster._core.storage.tags import BACKFILL_ID_TAG

from ..core import history
from ..core.history import Event, Protected, Run
from ..ingest.backlog import failed_attempts
from ..ingest.run_tags import PARTITION_TAG
from ..kafka.resource import KafkaResource

# Rows per read and per delete statement: short transactions, bounded memory.
BATCH = 500
RUNLESS_RUN_ID = ""  # Dagster's run id of events reported without a run
UNFINISHED_BACKFILL = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING,
                       BulkActionStatus.FAILING]
CHECK_EVALUATION = "ASSET_CHECK_EVALUATION"

Say = Callable[[str], None]


@dataclass
class PruneReport:
    """What a prune deleted (or, dry, would delete), and what old history it kept."""

    applied: bool
    keep_days: float
    oldest_kept: float  # epoch seconds
    runs: int = 0  # runs deleted, with their event logs and compute logs
    run_events: int | None = 0  # their event-log rows (None: one file per run, sqlite)
    runs_kept: dict[str, int] = field(default_factory=dict)  # old runs kept, by reason
    runless_events: dict[str, int] = field(default_factory=dict)  # by event type
    check_executions: int = 0
    seconds: float = 0.0
    seconds_by_kind: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        verb = "deleted" if self.applied else "would delete"
        since = datetime.fromtimestamp(self.oldest_kept, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        events = "" if self.run_events is None else f" ({self.run_events} event-log rows)"
        kept = ", ".join(f"{n} {why}" for why, n in sorted(self.runs_kept.items())) or "none"
        runless = ", ".join(f"{n} {kind}" for kind, n in sorted(self.runless_events.items()))
        return [
            f"keeping {self.keep_days:g} days of history: everything since {since}",
            f"{verb} {self.runs} runs{events}, with their compute logs",
            f"kept {sum(self.runs_kept.values())} older runs: {kept}",
            f"{verb} {sum(self.runless_events.values())} runless events: {runless or 'none'}",
            f"{verb} {self.check_executions} asset check executions",
            f"in {self.seconds:.1f} s ("
            + ", ".join(f"{kind} {s:.1f} s" for kind, s in self.seconds_by_kind.items()) + ")"
            + ("" if self.applied else
                                          " (dry run: nothing deleted; --apply deletes)"),
        ]

    def metadata(self) -> dict[str, float | int | str]:
        meta: dict[str, float | int | str] = {
            "applied": str(self.applied), "keep_days": self.keep_days, "runs_deleted": self.runs,
            "check_executions_deleted": self.check_executions,
            "runless_events_deleted": sum(self.runless_events.values()),
            "seconds": round(self.seconds, 3),
            "oldest_kept": datetime.fromtimestamp(self.oldest_kept, UTC).isoformat()}
        if self.run_events is not None:
            meta["run_event_rows_deleted"] = self.run_events
        meta.update({f"seconds_{kind}": round(s, 3) for kind, s in self.seconds_by_kind.items()})
        meta.update({f"runs_kept_{why}": n for why, n in self.runs_kept.items()})
        meta.update({f"deleted_{kind.lower()}": n for kind, n in self.runless_events.items()})
        return meta


def prune(instance: DagsterInstance, kafka: KafkaResource, keep_days: float, apply: bool,
          say: Say, now: float | None = None) -> PruneReport:
    """Delete (apply) or count (dry) the history older than `keep_days` that no rule keeps."""
    started = time.monotonic()
    now = time.time() if now is None else now
    oldest_kept = history.cutoff(now, keep_days)
    report = PruneReport(applied=apply, keep_days=keep_days, oldest_kept=oldest_kept)
    protected = _protected(instance, kafka)
    for kind, step in (("runs", lambda: _prune_runs(instance, protected, oldest_kept, apply,
                                                     report, say)),
                       ("runless_events", lambda: _prune_runless_events(
                           instance, oldest_kept, apply, report)),
                       ("check_executions", lambda: _prune_check_executions(
                           instance, oldest_kept, apply, report))):
        began = time.monotonic()
        step()
        report.seconds_by_kind[kind] = time.monotonic() - began
    report.seconds = time.monotonic() - started
    return report


# -- runs -----------------------------------------------------------------------------------


def _plain(record: RunRecord) -> Run:
    run = record.dagster_run
    ended = record.end_time or record.update_timestamp.timestamp()
    return Run(run.run_id, run.job_name, run.tags.get(PARTITION_TAG), run.status.value, ended,
               run.tags.get(BACKFILL_ID_TAG))


def _protected(instance: DagsterInstance, kafka: KafkaResource) -> Protected:
    """What must stay whatever its age, except the newest successes (looked up per batch)."""
    attempts = {r.dagster_run.run_id for o in kafka.offsets() for r in failed_attempts(instance, o)}
    backfills = {b.backfill_id for b in instance.get_backfills(
        filters=BulkActionsFilter(statuses=UNFINISHED_BACKFILL))}
    latest = instance.get_latest_materialization_events(instance.get_asset_keys())
    return Protected(failed_attempts=attempts, unfinished_backfills=backfills,
                     latest_events={e.run_id for e in latest.values() if e is not None})


class _NewestSuccesses:
    """The newest successful run of each (job, partition), asked of the instance once each."""

    def __init__(self, instance: DagsterInstance) -> None:
        self.instance = instance
        self.found: dict[tuple[str, str | None], Run | None] = {}

    def of(self, runs: Sequence[Run]) -> list[Run]:
        for run in runs:
            key = (run.job, run.partition)
            if run.status == history.SUCCESS and key not in self.found:
                tags = {} if run.partition is None else {PARTITION_TAG: run.partition}
                newest = self.instance.get_run_records(
                    RunsFilter(job_name=run.job, statuses=[DagsterRunStatus.SUCCESS], tags=tags),
                    limit=1)
                self.found[key] = _plain(newest[0]) if newest else None
        return [r for r in self.found.values() if r is not None]


def _old_runs(instance: DagsterInstance, oldest_kept: float) -> Iterator[list[RunRecord]]:
    """Runs last updated before `oldest_kept`, oldest first, a batch at a time. The batch's last
    run is the next read's cursor: the caller deletes it only after that read."""
    before = datetime.fromtimestamp(oldest_kept, UTC)
    cursor = None
    while True:
        batch = instance.get_run_records(RunsFilter(updated_before=before), limit=BATCH,
                                         cursor=cursor, ascending=True)
        if not batch:
            return
        yield list(batch)
        cursor = batch[-1].dagster_run.run_id


def _prune_runs(instance: DagsterInstance, protected: Protected, oldest_kept: float,
                apply: bool, report: PruneReport, say: Say) -> None:
    newest = _NewestSuccesses(instance)
    sharded = isinstance(instance.event_log_storage, SqliteEventLogStorage)
    report.run_events = None if sharded else 0
    held: list[str] = []  # the last batch's cursor, deleted after the next read
    for batch in _old_runs(instance, oldest_kept):
        if held:
            _delete_runs(instance, held, sharded)
        runs = [_plain(r) for r in batch]
        verdict = history.judge_runs(
            runs, Protected(newest.of(runs), protected.failed_attempts,
                            protected.unfinished_backfills, protected.latest_events),
            oldest_kept)
        for why, n in verdict.kept.items():
            report.runs_kept[why] = report.runs_kept.get(why, 0) + n
        report.runs += len(verdict.delete)
        if report.run_events is not None:
            report.run_events += _count_run_events(instance, verdict.delete)
        if not apply:
            continue
        cursor = batch[-1].dagster_run.run_id
        held = [cursor] if cursor in verdict.delete else []
        _delete_runs(instance, [r for r in verdict.delete if r != cursor], sharded)
        if report.runs and report.runs % (BATCH * 20) < len(verdict.delete):
            say(f"deleted {report.runs} runs so far")
    if held:
        _delete_runs(instance, held, sharded)


def _count_run_events(instance: DagsterInstance, run_ids: Sequence[str]) -> int:
    if not run_ids:
        return 0
    table = SqlEventLogStorageTable
    with _index(instance) as conn:
        return conn.execute(db.select(db.func.count()).select_from(table).where(
            table.c.run_id.in_(run_ids))).scalar_one()


def _delete_runs(instance: DagsterInstance, run_ids: Sequence[str], sharded: bool) -> None:
    storage = instance.event_log_storage
    for run_id in run_ids:
        instance.delete_run(run_id)
        instance.compute_log_manager.delete_logs(prefix=[run_id])
        if sharded:
            assert isinstance(storage, SqliteEventLogStorage)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(storage.path_for_shard(run_id) + suffix)
            # A later read in this process makes an empty file again, not a table-less one.
            getattr(storage, "_initialized_dbs", set()).discard(run_id)
    if run_ids:
        # PostgreSQL's cascade has removed them already; sqlite's foreign keys are off.
        with instance.run_storage.connect() as conn:  # type: ignore[attr-defined]
            conn.execute(RunTagsTable.delete().where(RunTagsTable.c.run_id.in_(run_ids)))


# -- runless events and check executions ----------------------------------------------------


def _index(instance: DagsterInstance) -> Any:
    return instance.event_log_storage.index_connection()  # type: ignore[attr-defined]


def _naive_utc(epoch: float) -> datetime:
    """As Dagster stores event times: UTC without a time zone."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


def _epoch(stored: datetime) -> float:
    return stored.replace(tzinfo=UTC).timestamp()


def _prune_runless_events(instance: DagsterInstance, oldest_kept: float, apply: bool,
                          report: PruneReport) -> None:
    """Observations, check evaluations, ... reported without a run: the newest of each asset and
    event type stays, and of each check (the check's name is in its execution row)."""
    with _index(instance) as conn:
        _prune_runless_in(conn, oldest_kept, apply, report.runless_events, by_check=True)
    storage = instance.event_log_storage
    if isinstance(storage, SqliteEventLogStorage):
        # sqlite also keeps them in run id ''s own file, which nothing reads: the same rule,
        # per asset and event type, counted once (above).
        with storage.run_connection(RUNLESS_RUN_ID) as conn:
            _prune_runless_in(conn, oldest_kept, apply, {}, by_check=False)


def _prune_runless_in(conn: Any, oldest_kept: float, apply: bool, counts: dict[str, int],
                      by_check: bool) -> None:
    table, checks = SqlEventLogStorageTable, AssetCheckExecutionsTable
    runless = table.c.run_id == RUNLESS_RUN_ID
    newest: dict[Hashable, int] = {
        (key, kind, None): top for key, kind, top in conn.execute(
            db.select(table.c.asset_key, table.c.dagster_event_type, db.func.max(table.c.id))
            .where(runless).group_by(table.c.asset_key, table.c.dagster_event_type))}
    if by_check:
        newest.update({(key, CHECK_EVALUATION, name): top for key, name, top in conn.execute(
            db.select(checks.c.asset_key, checks.c.check_name,
                      db.func.max(checks.c.evaluation_event_storage_id))
            .where(checks.c.run_id == RUNLESS_RUN_ID)
            .group_by(checks.c.asset_key, checks.c.check_name))})
    last = 0
    while True:
        rows = conn.execute(
            db.select(table.c.id, table.c.asset_key, table.c.dagster_event_type, table.c.timestamp)
            .where(runless, table.c.timestamp < _naive_utc(oldest_kept), table.c.id > last)
            .order_by(table.c.id).limit(BATCH)).all()
        if not rows:
            return
        last = rows[-1].id
        checked = _checks_of(conn, [r.id for r in rows]) if by_check else {}
        events = [Event(r.id, checked.get(r.id, (r.asset_key, r.dagster_event_type, None)),
                        _epoch(r.timestamp)) for r in rows]
        doomed = history.judge_events(events, newest, oldest_kept)
        kinds = {r.id: r.dagster_event_type for r in rows}
        for event_id in doomed:
            counts[kinds[event_id]] = counts.get(kinds[event_id], 0) + 1
        if apply and doomed:
            conn.execute(AssetEventTagsTable.delete().where(
                AssetEventTagsTable.c.event_id.in_(doomed)))
            conn.execute(table.delete().where(table.c.id.in_(doomed)))


def _checks_of(conn: Any, event_ids: Sequence[int]) -> dict[int, Hashable]:
    """The kind of each of these events that is a check evaluation: its asset and check (the
    event row has neither), as its execution row says."""
    checks = AssetCheckExecutionsTable
    return {event_id: (key, CHECK_EVALUATION, name) for event_id, key, name in conn.execute(
        db.select(checks.c.evaluation_event_storage_id, checks.c.asset_key, checks.c.check_name)
        .where(checks.c.run_id == RUNLESS_RUN_ID,
               checks.c.evaluation_event_storage_id.in_(event_ids)))}


def _prune_check_executions(instance: DagsterInstance, oldest_kept: float, apply: bool,
                            report: PruneReport) -> None:
    """A row per check evaluation (in a run or not), which the asset's Checks tab lists: the
    newest of each check stays, and those still planned."""
    checks = AssetCheckExecutionsTable
    when = db.func.coalesce(checks.c.evaluation_event_timestamp, checks.c.create_timestamp)
    with _index(instance) as conn:
        newest: dict[Hashable, int] = {
            (key, name): top for key, name, top in conn.execute(
                db.select(checks.c.asset_key, checks.c.check_name, db.func.max(checks.c.id))
                .group_by(checks.c.asset_key, checks.c.check_name))}
        last = 0
        while True:
            rows = conn.execute(
                db.select(checks.c.id, checks.c.asset_key, checks.c.check_name,
                          checks.c.execution_status, when.label("at"))
                .where(when < _naive_utc(oldest_kept), checks.c.id > last)
                .order_by(checks.c.id).limit(BATCH)).all()
            if not rows:
                return
            last = rows[-1].id
            doomed = history.judge_events(
                [Event(r.id, (r.asset_key, r.check_name), _epoch(r.at),
                       settled=r.execution_status != history.PLANNED) for r in rows],
                newest, oldest_kept)
            report.check_executions += len(doomed)
            if apply and doomed:
                conn.execute(checks.delete().where(checks.c.id.in_(doomed)))
