"""Generate N days of Dagster history on PostgreSQL at today's rate, then time prune_history on it
(docs/performance.md, "Pruning history").

    python -m devtools.history --days 4 --keep-days 2      # make bench-history

A throwaway PostgreSQL (devtools/stack/postgres.py) with deploy/dagster.yaml; the real job runs
once, in process, on a private topic of the local stack: that run's rows (runs, run_tags,
event_logs, asset_check_executions) are the template, copied --runs-per-day times a day with
INSERT ... SELECT (each copy its own run id, in its rows and in their serialized bodies, its
partition 0-3, its times spread over the days). The sensors' runless rows are added at their
rate too: a lag observation every 30 s and four check evaluations a minute (each with its check
execution row). Then the prune runs dry and applied, and the database size is printed before,
after, and after VACUUM FULL (PostgreSQL reuses deleted rows' space but returns it to the
disk only then).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as db
from dagster import AssetCheckEvaluation, AssetObservation, DagsterInstance

from programuser_dagster.core.history import SECONDS_PER_DAY
from programuser_dagster.housekeeping.history import prune
from programuser_dagster.ingest.checks import (
    ACCOUNTING_CHECK,
    DEAD_LETTER_SHARE_CHECK,
    MATCHES_SOURCE_CHECK,
    STALLED_CHECK,
)
from programuser_dagster.ingest.instance import hold_connections
from programuser_dagster.ingest.job import kafka_partitions, program_user_info
from programuser_dagster.ingest.run_tags import END_TAG, START_TAG, START_TOKEN_TAG
from programuser_dagster.names import PROGRAM_ENROLLMENT
from programuser_dagster.resources import build_resources, kafka_resource
from programuser_dagster.settings import Settings, temporary_env

from .stack.postgres import deploy_yaml, postgres_server

REPO = Path(__file__).resolve().parents[1]
RUNS_PER_DAY = 11_517  # issue 26's measurement: 1 event/s, 4 partitions, the 30 s sensor
OBSERVATIONS_PER_DAY = 2_880  # the backlog sensor's lag observation, every 30 s
CHECKS_PER_DAY = 1_440  # each check, evaluated by the health sensor every minute
CHECKS = (STALLED_CHECK, DEAD_LETTER_SHARE_CHECK, ACCOUNTING_CHECK, MATCHES_SOURCE_CHECK)
COPIES_PER_STATEMENT = 5_000


def _columns(conn: Any, table: str) -> list[str]:
    return [r[0] for r in conn.execute(db.text(
        "SELECT column_name FROM information_schema.columns WHERE table_name = :t "
        "ORDER BY ordinal_position"), {"t": table})]


def _copy(conn: Any, table: str, where: str, overrides: dict[str, str], params: dict[str, Any],
          ) -> None:
    """INSERT one copy per row of `gen` of the template rows of `table` (`t`, chosen by
    `where`), with `overrides` (SQL over t and gen) for some columns; `id` is the table's own."""
    cols = [c for c in _columns(conn, table) if c != "id"]
    select = ", ".join(overrides.get(c, f"t.{c}") for c in cols)
    conn.execute(db.text(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {select} "
                         f"FROM {table} t CROSS JOIN gen WHERE {where}"), params)


def _series(conn: Any, n: int, first: float, step: float) -> None:
    conn.execute(db.text("DROP TABLE IF EXISTS gen"))
    conn.execute(db.text(
        "CREATE TEMP TABLE gen AS SELECT g, gen_random_uuid()::text AS run_id, "
        "(to_timestamp(:first + g * :step) AT TIME ZONE 'UTC') AS at "
        "FROM generate_series(0, :n - 1) g"), {"n": n, "first": first, "step": step})


def copy_runs(conn: Any, template: str, n: int, first: float, step: float) -> None:
    """n copies of run `template`, the k-th at first + k * step (epoch seconds)."""
    _series(conn, n, first, step)
    p = {"tid": template}
    shift = "gen.at + (t.{col} - (SELECT create_timestamp FROM runs WHERE run_id = :tid))"
    _copy(conn, "runs", "t.run_id = :tid", {
        "run_id": "gen.run_id", "run_body": "replace(t.run_body, :tid, gen.run_id)",
        "partition": "(gen.g % 4)::text",
        "create_timestamp": "gen.at", "update_timestamp": shift.format(col="update_timestamp"),
        "start_time": "extract(epoch FROM gen.at)",
        "end_time": "extract(epoch FROM gen.at) + (t.end_time - t.start_time)"}, p)
    _copy(conn, "run_tags", "t.run_id = :tid", {
        "run_id": "gen.run_id",
        # Each copy its own partition and range, as the sensor's runs: copies sharing the
        # template's start offset and token would all be attempts at one committed state.
        "value": "CASE t.key WHEN 'dagster/partition' THEN (gen.g % 4)::text "
                 f"WHEN '{START_TAG}' THEN (1000 + gen.g * 100)::text "
                 f"WHEN '{END_TAG}' THEN (1100 + gen.g * 100)::text "
                 f"WHEN '{START_TOKEN_TAG}' THEN (1000 + gen.g)::text ELSE t.value END",
    }, p)
    _copy(conn, "event_logs", "t.run_id = :tid", {
        "run_id": "gen.run_id", "event": "replace(t.event, :tid, gen.run_id)",
        "timestamp": shift.format(col="timestamp")}, p)
    _copy(conn, "asset_check_executions", "t.run_id = :tid", {
        "run_id": "gen.run_id", "evaluation_event": "replace(t.evaluation_event, :tid, gen.run_id)",
        "evaluation_event_timestamp": "gen.at", "create_timestamp": "gen.at"}, p)


def copy_runless(conn: Any, event_id: int, n: int, first: float, step: float) -> None:
    """n copies of runless event `event_id` (and its check execution row, if it is one)."""
    _series(conn, n, first, step)
    _copy(conn, "event_logs", "t.id = :id", {"timestamp": "gen.at"}, {"id": event_id})
    _copy(conn, "asset_check_executions", "t.evaluation_event_storage_id = :id",
          {"evaluation_event_timestamp": "gen.at", "create_timestamp": "gen.at",
           "evaluation_event_storage_id": "NULL"}, {"id": event_id})


def _template_run(instance: DagsterInstance, base: Settings) -> str:
    """Run the real job once for partition 0 of a private topic; its run id."""
    from .bench import Area

    area = Area.create(base, partitions=1)
    try:
        area.produce(100, seed=26)
        instance.add_dynamic_partitions(kafka_partitions.name or "", ["0"])
        result = program_user_info.execute_in_process(
            instance=instance, partition_key="0", resources=build_resources(area.settings))
        assert result.success, "the template run failed"
        return result.run_id
    finally:
        area.cleanup()


def _size(conn: Any) -> int:
    return conn.execute(db.text("SELECT pg_database_size(current_database())")).scalar_one()


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def generate(instance: DagsterInstance, base: Settings, days: float, runs_per_day: int,
             now: float) -> None:
    template = _template_run(instance, base)
    for check in CHECKS:
        instance.report_runless_asset_event(AssetCheckEvaluation(
            asset_key=PROGRAM_ENROLLMENT, check_name=check, passed=True))
    instance.report_runless_asset_event(AssetObservation(PROGRAM_ENROLLMENT, metadata={
        "lag_total": 4, **{f"lag_partition_{p}": 1 for p in range(4)}, "lag_s_max": 12.5,
        **{f"lag_s_partition_{p}": 12.5 for p in range(4)}}))
    first = now - days * SECONDS_PER_DAY
    storage = instance.event_log_storage
    with storage.index_connection() as conn:  # type: ignore[attr-defined]
        runless = [r[0] for r in conn.execute(db.text(
            "SELECT id FROM event_logs WHERE run_id = '' ORDER BY id"))]
    total = int(days * runs_per_day)
    step = days * SECONDS_PER_DAY / total
    for start in range(0, total, COPIES_PER_STATEMENT):
        n = min(COPIES_PER_STATEMENT, total - start)
        with storage.index_connection() as conn:  # type: ignore[attr-defined]
            copy_runs(conn, template, n, first + start * step, step)
        print(f"  {start + n:,} of {total:,} runs", flush=True)
    for event_id in runless:  # one evaluation of each check, then the observation
        n = int(days * (OBSERVATIONS_PER_DAY if event_id == runless[-1] else CHECKS_PER_DAY))
        with storage.index_connection() as conn:  # type: ignore[attr-defined]
            copy_runless(conn, event_id, n, first, days * SECONDS_PER_DAY / n)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.history", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=float, default=4.0, help="days of history (default 4)")
    parser.add_argument("--runs-per-day", type=int, default=RUNS_PER_DAY)
    parser.add_argument("--keep-days", type=float, default=2.0, help="the prune's window")
    args = parser.parse_args(argv)
    base = Settings.from_env()
    with postgres_server() as env, temporary_env(env):
        home = Path(tempfile.mkdtemp(prefix="programuser-history-"))
        (home / "dagster.yaml").write_text(deploy_yaml(REPO))
        with DagsterInstance.from_config(str(home)) as instance:
            hold_connections(instance)  # as the CLI's instance and prune_history's op do
            now = time.time()
            started = time.monotonic()
            print(f"generating {args.days:g} days at {args.runs_per_day:,} runs a day ...")
            generate(instance, base, args.days, args.runs_per_day, now)
            generated = time.monotonic() - started
            storage = instance.event_log_storage
            with storage.index_connection() as conn:  # type: ignore[attr-defined]
                before = _size(conn)
                rows = {t: conn.execute(db.text(f"SELECT count(*) FROM {t}")).scalar_one()
                        for t in ("runs", "run_tags", "event_logs", "asset_check_executions")}
            print(f"generated in {generated:.0f} s: {rows}; database {_mb(before)}")
            kafka = kafka_resource(base)
            try:
                for apply in (False, True):
                    report = prune(instance, kafka, args.keep_days, apply=apply, say=print,
                                   now=now)
                    print("\n".join(report.lines()))
            finally:
                kafka.close()
        server = db.create_engine(
            f"postgresql+psycopg2://{env['DAGSTER_PG_USERNAME']}@{env['DAGSTER_PG_HOST']}:"
            f"{env['DAGSTER_PG_PORT']}/{env['DAGSTER_PG_DB']}", isolation_level="AUTOCOMMIT")
        with server.connect() as conn:
            after = _size(conn)
            conn.execute(db.text("VACUUM FULL"))
            vacuumed = _size(conn)
        server.dispose()
        shutil.rmtree(home, ignore_errors=True)
        print(f"database: {_mb(before)} before, {_mb(after)} after the prune, "
              f"{_mb(vacuumed)} after VACUUM FULL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
