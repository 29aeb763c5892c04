"""prune_history on the shipped instance configs, sqlite (./dagster.yaml) and PostgreSQL
(deploy/dagster.yaml on a real server): a history of real runs of the job and of run records as
the sensor tags them, runless observations and check evaluations, some older than the window
and some newer; a dry run deletes nothing, then the prune deletes exactly what no rule keeps.

Ages are real: the old history is written, a moment passes, the new history is written, and the
prune keeps a window of that moment (PROGRAMUSER_HISTORY_KEEP_DAYS takes fractions of a day).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as db
from dagster import (
    AssetCheckEvaluation,
    AssetObservation,
    DagsterInstance,
    DagsterRunStatus,
)
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.schema import RunTagsTable
from dagster._core.storage.tags import BACKFILL_ID_TAG

from devtools.stack.postgres import deploy_yaml, fresh_database
from programuser_dagster.core import history
from programuser_dagster.housekeeping.history import prune
from programuser_dagster.ingest.checks import ACCOUNTING_CHECK, STALLED_CHECK
from programuser_dagster.names import PROGRAM_ENROLLMENT
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings, temporary_env
from tests.support.dagster_dev import REPO
from tests.support.pipeline import add_run, event, produce, run_partition

pytestmark = pytest.mark.stack


@pytest.fixture(params=["sqlite", "postgres"])
def shipped_instance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DagsterInstance]:
    """A fresh instance of ./dagster.yaml (sqlite) or deploy/dagster.yaml (PostgreSQL)."""
    home = tmp_path / "home"
    home.mkdir()
    with ExitStack() as stack:
        if request.param == "sqlite":
            (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
        else:
            env = fresh_database(request.getfixturevalue("postgres"),
                                 f"prune_{uuid.uuid4().hex[:8]}")
            stack.enter_context(temporary_env(env))
            (home / "dagster.yaml").write_text(deploy_yaml(REPO))
        instance = stack.enter_context(DagsterInstance.from_config(str(home)))
        yield instance


def _check(name: str, passed: bool = True) -> AssetCheckEvaluation:
    return AssetCheckEvaluation(asset_key=PROGRAM_ENROLLMENT, check_name=name, passed=passed)


def _lag(n: int) -> AssetObservation:
    return AssetObservation(PROGRAM_ENROLLMENT, metadata={"lag_total": n})


def _run_ids(instance: DagsterInstance) -> set[str]:
    return {r.dagster_run.run_id for r in instance.get_run_records()}


def _check_rows(instance: DagsterInstance) -> list[tuple[str, str]]:
    table = AssetCheckExecutionsTable
    with instance.event_log_storage.index_connection() as conn:  # type: ignore[attr-defined]
        return sorted((r.check_name, r.run_id or "") for r in conn.execute(
            db.select(table.c.check_name, table.c.run_id)))


def _tag_rows(instance: DagsterInstance, run_id: str) -> int:
    with instance.run_storage.connect() as conn:  # type: ignore[attr-defined]
        return conn.execute(db.select(db.func.count()).select_from(RunTagsTable).where(
            RunTagsTable.c.run_id == run_id)).scalar_one()


def _logs(instance: DagsterInstance, run_id: str) -> Path:
    return Path(instance.compute_log_manager._base_dir) / run_id  # type: ignore[attr-defined]


def test_prune_keeps_what_the_rules_say_and_deletes_the_rest(
    shipped_instance: DagsterInstance, kafka_topics: Settings
) -> None:
    instance, s = shipped_instance, kafka_topics
    for p in (0, 1):
        produce(s, [event(f"p{p}", f"u{i}") for i in range(3)], partition=p)

    # -- old history --
    old_p0 = run_partition(instance, s, 0)  # a real run; partition 0 succeeds again later
    newest_p1 = run_partition(instance, s, 1)  # partition 1's newest success
    assert old_p0.success and newest_p1.success
    attempt = add_run(instance, 2, DagsterRunStatus.FAILURE)  # at p2's committed state: counted
    other_state = add_run(instance, 2, DagsterRunStatus.FAILURE, token=7)  # not counted
    in_flight = add_run(instance, 3, DagsterRunStatus.STARTED)
    instance.add_backfill(PartitionBackfill(
        "unfinished", BulkActionStatus.REQUESTED, from_failure=False, tags={},
        backfill_timestamp=time.time(), asset_selection=[PROGRAM_ENROLLMENT]))
    # (at another committed state than partition 3's: not failed attempts the sensor counts)
    backfill_run = add_run(instance, 3, DagsterRunStatus.FAILURE, token=5,
                           **{BACKFILL_ID_TAG: "unfinished"})
    done_backfill_run = add_run(instance, 3, DagsterRunStatus.FAILURE, token=5,
                                **{BACKFILL_ID_TAG: "gone"})
    for n in range(3):
        instance.report_runless_asset_event(_lag(n))
    for passed in (True, False):
        instance.report_runless_asset_event(_check(STALLED_CHECK, passed))
    instance.report_runless_asset_event(_check("only_old"))  # its newest is old: it stays
    time.sleep(1.5)
    middle = time.time()
    time.sleep(1.5)

    # -- new history --
    produce(s, [event("p0", "later")], partition=0)
    newest_p0 = run_partition(instance, s, 0)
    recent_failure = add_run(instance, 3, DagsterRunStatus.FAILURE, token=9)
    instance.report_runless_asset_event(_lag(0))
    instance.report_runless_asset_event(_check(STALLED_CHECK))

    before = _run_ids(instance)
    assert _logs(instance, old_p0.run_id).is_dir()  # its compute logs, to be deleted with it
    checks_before = _check_rows(instance)
    old_events = len(instance.all_logs(old_p0.run_id))
    kafka = kafka_resource(s)
    try:
        now = time.time()
        keep_days = (now - middle) / history.SECONDS_PER_DAY
        dry = prune(instance, kafka, keep_days, apply=False, say=print, now=now)
        assert _run_ids(instance) == before and _check_rows(instance) == checks_before
        done = prune(instance, kafka, keep_days, apply=True, say=print, now=now)
        again = prune(instance, kafka, keep_days, apply=False, say=print, now=now)
    finally:
        kafka.close()

    deleted = {old_p0.run_id, other_state.run_id, done_backfill_run.run_id}
    for report in (dry, done):
        assert report.runs == len(deleted)
        assert report.runs_kept == {history.NEWEST_SUCCESS: 1, history.FAILED_ATTEMPT: 1,
                                    history.IN_FLIGHT_REASON: 1,
                                    history.UNFINISHED_BACKFILL: 1}
        # Three older lag observations, the older stalled check evaluations (only_old's is
        # its newest); the old runs' accounting evaluations go with the check executions.
        assert report.runless_events == {"ASSET_OBSERVATION": 3, "ASSET_CHECK_EVALUATION": 2}
        assert report.check_executions == 4
    assert (again.runs, again.runless_events, again.check_executions) == (0, {}, 0)
    # Counted where one database holds every run's events; sqlite keeps a file per run.
    sharded = isinstance(instance.event_log_storage, SqliteEventLogStorage)
    assert dry.run_events == done.run_events and (dry.run_events is None) == sharded
    assert sharded or dry.run_events == old_events  # the run records added have none

    assert _run_ids(instance) == before - deleted
    assert {newest_p1.run_id, attempt.run_id, in_flight.run_id, backfill_run.run_id,
            newest_p0.run_id, recent_failure.run_id} <= _run_ids(instance)
    # A deleted run's events, tags and compute logs are gone; on sqlite its event-log file too.
    assert _tag_rows(instance, old_p0.run_id) == 0
    assert not _logs(instance, old_p0.run_id).exists()
    storage = instance.event_log_storage
    if isinstance(storage, SqliteEventLogStorage):
        assert not os.path.exists(storage.path_for_shard(old_p0.run_id))
    assert not instance.all_logs(old_p0.run_id)
    # The asset page still shows the latest state: newest materialization, observation, and
    # each check's newest evaluation.
    latest = instance.get_latest_materialization_event(PROGRAM_ENROLLMENT)
    assert latest is not None and latest.run_id == newest_p0.run_id
    observations = instance.fetch_observations(PROGRAM_ENROLLMENT, limit=10).records
    assert [o.asset_observation.metadata["lag_total"].value for o in observations] == [0]
    assert _check_rows(instance) == sorted([
        (ACCOUNTING_CHECK, newest_p0.run_id), (STALLED_CHECK, ""), ("only_old", "")])


def test_the_job_records_each_prune_on_dagster_history_and_a_dry_run_nothing(
    instance: DagsterInstance, kafka_topics: Settings
) -> None:
    from programuser_dagster.housekeeping.job import DAGSTER_HISTORY, build_prune_job

    job = build_prune_job(kafka_topics)
    resources = {"kafka": kafka_resource(kafka_topics)}
    dry = job.execute_in_process(run_config={"ops": {"prune": {"config": {"dry_run": True}}}},
                                 instance=instance, resources=resources)
    assert dry.success and instance.get_latest_materialization_event(DAGSTER_HISTORY) is None
    applied = job.execute_in_process(instance=instance, resources=resources)
    assert applied.success
    latest = instance.get_latest_materialization_event(DAGSTER_HISTORY)
    assert latest is not None and latest.run_id == applied.run_id
    meta = latest.asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["runs_deleted"].value == 0 and meta["keep_days"].value == 14.0


def test_the_cli_is_a_dry_run_unless_apply(
    kafka_topics: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from programuser_dagster.cli import main

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with temporary_env({**kafka_topics.environment(), "DAGSTER_HOME": str(home)}):
        with DagsterInstance.get() as instance:
            old = add_run(instance, 2, DagsterRunStatus.FAILURE, token=3)
            add_run(instance, 2, DagsterRunStatus.SUCCESS, token=3)  # the newest success
        time.sleep(1.0)
        assert main(["prune-history", "--keep-days", "0.00001"]) == 0
        assert "would delete 1 runs" in capsys.readouterr().out
        with DagsterInstance.get() as instance:
            assert instance.has_run(old.run_id)
        assert main(["prune-history", "--keep-days", "0.00001", "--apply"]) == 0
        assert "deleted 1 runs" in capsys.readouterr().out
        with DagsterInstance.get() as instance:
            assert not instance.has_run(old.run_id)
        with pytest.raises(SystemExit) as refused:
            main(["prune-history", "--keep-days", "0"])
        assert refused.value.code == 2
        assert "must be above 0" in capsys.readouterr().err
