"""`make bench-steady`: months of operation at a trickle, compressed into minutes.

    python -m devtools.steady [--minutes 25] [--idle-minutes 4] [--rate 1] [--age 30]
                              [--keep-minutes 5] [--out steady-results.json]

The production path (dagster-daemon on a throwaway PostgreSQL with deploy/dagster.yaml, the
sensor and the prune_history schedule on) on topics and a keyspace of its own, fed a trickle
(1 event/s round robin over 4 partitions) for `--minutes`, with time scaled down: the trigger
age (default 300 s) to `--age`, the history kept (default 14 days) to `--keep-minutes`, and the
prune (default daily) every minute. The sensor keeps its production interval (30 s), so a
partition's cycle measured here is the scaled age plus the same overhead as at the defaults.

Then the daemon is restarted with the daily prune and nothing produced for `--idle-minutes`:
the cost of the deployment when there is nothing to do.

How CPU is counted: every 0.5 s the daemon's process tree (the daemon, its code server, the
run workers the code server starts) is walked from /proc; its CPU is the sum over the live
processes of utime + stime + cutime + cstime, so a run worker that exited counts through the
cumulative time of its parent that reaped it. The same walk keeps each descendant's own time;
that of the prune_history runs' processes (each run's events carry its pid), a lower bound, is
subtracted from Dagster's figure: at the defaults the prune runs once a day, here once a minute.
Kafka's and Cassandra's CPU is their java process's; the stack is shared, so it includes whatever
else used them meanwhile.

Reported (printed, and written to --out): runs per hour measured and per day extrapolated to the
default age; Dagster's CPU seconds per hour (and per run, net of the idle rate); Kafka's,
Cassandra's and PostgreSQL's CPU; the database's size and rows every minute; per run: event-log
rows, transactions, rows inserted and connections opened (pg_stat_database deltas net of the
idle rates); the events' ages at write (from each run's materialization metadata, read before
the prune deletes it); and whether the table equals what the pure core makes of every event
produced.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from programuser_dagster.housekeeping.job import DAGSTER_HISTORY, PRUNE_JOB
from programuser_dagster.ingest.job import JOB_NAME
from programuser_dagster.ingest.run_tags import PARTITION_TAG
from programuser_dagster.names import PROGRAM_ENROLLMENT
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings

from .bench import REPO, Area, dagster_daemon, machine, pipeline_env
from .samples import sample_events

SECONDS_PER_DAY = 86_400
DEFAULT_AGE_S = 300.0  # PROGRAMUSER_TRIGGER_AGE_S's default, for the extrapolation
DEFAULT_KEEP_DAYS = 14.0
DEFAULT_PRUNE_CRON = "17 3 * * *"
CPU_SAMPLE_S = 0.5
RUNS_POLL_S = 10.0
DB_SAMPLE_S = 60.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """One compressed soak: the trickle, the scaled settings, and the idle phase."""

    seconds: float = 25 * 60
    idle_s: float = 4 * 60
    rate: float = 1.0  # events per second, round robin over `fed`
    trigger_age_s: float = 30.0
    sensor_interval_s: int = 30
    keep_s: float = 5 * 60
    prune_cron: str = "* * * * *"
    fed: Sequence[int] | None = None  # partitions fed throughout (None: all)
    once: Sequence[int] = ()  # partitions fed `once_events` at the start only
    once_events: int = 5
    seed: int = 11

    def scale(self) -> float:
        return DEFAULT_AGE_S / self.trigger_age_s


# --- CPU from /proc ---------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(own CPU ticks, reaped children's CPU ticks) of a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After "pid (comm)": state is fields[0], utime fields[11] ... cstime fields[14].
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def _cmdline(pid: int) -> bytes:  # the PostgreSQL server is found by its port
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


@dataclass
class TreeCpu:
    """CPU of a process tree, exited descendants included (see the module's docstring), and the
    own time last seen of each descendant (to take out the prune runs' share)."""

    root: int
    own: dict[int, int] = field(default_factory=dict)

    def ticks(self) -> int:
        total, todo = 0, [self.root]
        while todo:
            pid = todo.pop()
            stat = _stat(pid)
            if stat is None:
                continue
            total += stat[0] + stat[1]
            if pid != self.root:
                self.own[pid] = max(self.own.get(pid, 0), stat[0])
            todo += _children(pid)
        return total

    def own_s(self, pids: set[int]) -> float:
        return sum(t for pid, t in self.own.items() if pid in pids) / TICKS_PER_S


def server_pid(name: str) -> int | None:
    """The local stack's java process for `name` (kafka, cassandra), from its pid file."""
    from .stack.launcher import stack_dir

    try:
        return int((stack_dir() / name / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def postmaster_pid(port: str) -> int | None:
    """The PostgreSQL server listening on `port` (its backends are its children)."""
    wanted = f"-p\0{port}\0".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            line = _cmdline(int(entry))
            if wanted in line and line.split(b"\0")[0].endswith(b"postgres"):
                return int(entry)
    return None


# --- PostgreSQL ------------------------------------------------------------------------------


@contextmanager
def pg_connection(pg: dict[str, str]) -> Iterator[Any]:
    import psycopg2

    conn = psycopg2.connect(host=pg["DAGSTER_PG_HOST"], port=int(pg["DAGSTER_PG_PORT"]),
                            user=pg["DAGSTER_PG_USERNAME"], dbname=pg["DAGSTER_PG_DB"])
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


DB_STATS = """
SELECT pg_database_size(current_database()),
       (SELECT count(*) FROM runs), (SELECT count(*) FROM event_logs),
       (SELECT count(*) FROM run_tags),
       xact_commit, tup_inserted, tup_deleted, sessions
FROM pg_stat_database WHERE datname = current_database()
"""
DB_FIELDS = ("db_bytes", "runs", "event_logs", "run_tags", "xact_commit", "tup_inserted",
             "tup_deleted", "sessions")


def db_stats(conn: Any) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute(DB_STATS)
        return dict(zip(DB_FIELDS, cur.fetchone(), strict=True))


# --- what the daemon did, read before the prune deletes it ------------------------------------


@dataclass
class Seen:
    """Every run and materialization observed, kept after the prune deletes them."""

    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ages: list[dict[str, float]] = field(default_factory=list)
    prunes: list[dict[str, Any]] = field(default_factory=list)
    cursors: dict[str, str | None] = field(default_factory=dict)
    # The process of each prune run (its events carry it): their CPU is taken out.
    prune_pids: dict[str, int] = field(default_factory=dict)

    def poll(self, instance: Any) -> None:
        from dagster import DagsterEventType

        for r in instance.get_run_records():
            run = r.dagster_run
            self.runs[run.run_id] = {
                "job": run.job_name, "partition": run.tags.get(PARTITION_TAG),
                "status": run.status.value, "created": r.create_timestamp.timestamp(),
                "started": r.start_time, "ended": r.end_time,
            }
        for run_id, run in self.runs.items():
            if run["job"] == PRUNE_JOB and run_id not in self.prune_pids and run["started"]:
                for entry in instance.all_logs(run_id, of_type=DagsterEventType.RUN_START):
                    if entry.dagster_event.pid is not None:
                        self.prune_pids[run_id] = entry.dagster_event.pid
        for record in self._materializations(instance, PROGRAM_ENROLLMENT):
            md = {k: v.value for k, v in record.asset_materialization.metadata.items()}
            if "event_age_p50_s" in md:
                self.ages.append({k: float(md[k]) for k in
                                  ("event_age_p50_s", "event_age_p99_s", "event_age_max_s")})
        for record in self._materializations(instance, DAGSTER_HISTORY):
            md = record.asset_materialization.metadata
            self.prunes.append({"at": record.timestamp, **{k: v.value for k, v in md.items()}})

    def _materializations(self, instance: Any, key: Any) -> Iterator[Any]:
        """The asset's materializations since the last poll, oldest first."""
        name = key.to_user_string()
        while True:
            found = instance.fetch_materializations(key, limit=500, ascending=True,
                                                    cursor=self.cursors.get(name))
            yield from found.records
            if found.records:
                self.cursors[name] = found.cursor
            if not found.has_more:
                return

    def of(self, job: str) -> list[dict[str, Any]]:
        return [r for r in self.runs.values() if r["job"] == job]


# --- the trickle -----------------------------------------------------------------------------


class Trickle(threading.Thread):
    """Produces `rate` sample events a second, round robin over `fed`, until stopped; keeps
    every value sent (the table is checked against them)."""

    def __init__(self, settings: Settings, plan: Plan, fed: Sequence[int]) -> None:
        super().__init__(daemon=True)
        self.settings, self.plan, self.fed = settings, plan, fed
        self.values: list[bytes] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def once(self, partitions: Sequence[int], n: int) -> None:
        events = sample_events(n * len(partitions), seed=self.plan.seed + 1)
        self._send([(p, orjson.dumps(next(events))) for p in partitions for _ in range(n)])

    def _send(self, records: list[tuple[int, bytes]]) -> None:
        kafka = kafka_resource(self.settings)
        from .produce import input_producer

        producer = input_producer(kafka)
        try:
            for partition, value in records:
                producer.produce(self.settings.kafka_input_topic, value=value,
                                 partition=partition)
                self.values.append(value)
            if producer.flush(30):
                raise RuntimeError("the producer did not deliver within 30 s")
        finally:
            kafka.close()

    def run(self) -> None:
        try:
            kafka = kafka_resource(self.settings)
            from .produce import input_producer

            producer = input_producer(kafka)
            events = sample_events(10**7, seed=self.plan.seed)
            started, i = time.monotonic(), 0
            while not self.stop.is_set():
                value = orjson.dumps(next(events))
                producer.produce(self.settings.kafka_input_topic, value=value,
                                 partition=self.fed[i % len(self.fed)])
                self.values.append(value)
                producer.poll(0)
                i += 1
                self.stop.wait(max(0.0, started + i / self.plan.rate - time.monotonic()))
            if producer.flush(30):
                raise RuntimeError("the producer did not deliver within 30 s")
            kafka.close()
        except BaseException as exc:  # reported by the main thread
            self.error = exc


# --- the soak --------------------------------------------------------------------------------


def daemon_env(settings: Settings, pg: dict[str, str], home: Path, plan: Plan,
               prune_cron: str) -> dict[str, str]:
    return {
        **pipeline_env(settings, settings.max_messages), **pg, "DAGSTER_HOME": str(home),
        "PROGRAMUSER_SENSOR_INTERVAL_S": str(plan.sensor_interval_s),
        "PROGRAMUSER_TRIGGER_AGE_S": f"{plan.trigger_age_s:g}",
        # The default, whatever the calling environment (the test session sets 1).
        "PROGRAMUSER_TRIGGER_LAG_RECORDS": "1000",
        "PROGRAMUSER_HISTORY_KEEP_DAYS": repr(plan.keep_s / SECONDS_PER_DAY),
        "PROGRAMUSER_HISTORY_PRUNE_CRON": prune_cron,
    }


class Meter:
    """Samples CPU every 0.5 s, runs and materializations every 10 s, the database every
    minute, while the block it is entered for runs; `check` is called with each sample."""

    def __init__(self, instance: Any, pg: dict[str, str], root: int, say: Say,
                 seen: Seen) -> None:
        self.instance, self.pg, self.say, self.seen = instance, pg, say, seen
        self.dagster = TreeCpu(root)
        pm = postmaster_pid(pg["DAGSTER_PG_PORT"])
        self.others = {name: TreeCpu(pid) for name, pid in
                       (("kafka", server_pid("kafka")), ("cassandra", server_pid("cassandra")),
                        ("postgres", pm)) if pid is not None}
        self.db: list[dict[str, Any]] = []

    def cpu(self) -> dict[str, float]:
        return {"dagster": self.dagster.ticks() / TICKS_PER_S,
                "dagster_prune_runs": self.dagster.own_s(set(self.seen.prune_pids.values())),
                **{k: t.ticks() / TICKS_PER_S for k, t in self.others.items()}}

    def watch(self, seconds: float, alive: Callable[[], None], phase: str,
              until: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Sample for `seconds` (or until `until()`); CPU, database and time at both ends."""
        t0, cpu0 = time.time(), self.cpu()
        with pg_connection(self.pg) as conn:
            db0 = db_stats(conn)
            next_runs, next_db = time.monotonic(), time.monotonic() + DB_SAMPLE_S
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not (until and until()):
                alive()
                self.dagster.ticks()  # keeps the run workers' own time current
                if time.monotonic() >= next_runs:
                    self.seen.poll(self.instance)
                    next_runs += RUNS_POLL_S
                if time.monotonic() >= next_db:
                    self.sample_db(conn, phase)
                    next_db += DB_SAMPLE_S
                time.sleep(CPU_SAMPLE_S)
            self.seen.poll(self.instance)
            db1 = self.sample_db(conn, phase)
        cpu1, t1 = self.cpu(), time.time()
        return {"from": t0, "to": t1, "seconds": t1 - t0,
                "cpu_s": {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1},
                "db_start": db0, "db_end": db1}

    def sample_db(self, conn: Any, phase: str) -> dict[str, Any]:
        stats = {"t": round(time.time(), 1), "phase": phase, **db_stats(conn)}
        self.db.append(stats)
        self.say(f"  {phase}: db {stats['db_bytes'] / 1e6:.1f} MB, {stats['runs']} runs, "
                 f"{stats['event_logs']} event-log rows")
        return stats


def lag(settings: Settings) -> int:
    kafka = kafka_resource(settings)
    try:
        return sum(o.lag for o in kafka.offsets())
    finally:
        kafka.close()


def soak(settings: Settings, pg: dict[str, str], plan: Plan, say: Say = print) -> dict[str, Any]:
    """The compressed soak on `settings`' topics and keyspace and the PostgreSQL of `pg` (a
    fresh database): returns what it measured and the raw observations (see the docstring)."""
    from dagster import DagsterInstance

    from .stack.postgres import deploy_yaml

    fed = list(plan.fed if plan.fed is not None else range(settings.kafka_partitions))
    home = Path(tempfile.mkdtemp(prefix="programuser-steady-"))
    (home / "dagster.yaml").write_text(deploy_yaml(REPO), encoding="utf-8")
    log = home / "daemon.log"
    seen = Seen()
    trickle = Trickle(settings, plan, fed)
    old_env = {k: os.environ.get(k) for k in pg}
    os.environ.update(pg)  # deploy/dagster.yaml reads them for the instance opened here
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            env = daemon_env(settings, pg, home, plan, plan.prune_cron)
            with dagster_daemon(env, home, log) as proc:
                def alive() -> None:
                    if proc.poll() is not None:
                        raise RuntimeError(f"dagster-daemon exited ({proc.returncode}):\n"
                                           + log.read_text(errors="replace")[-4000:])
                    if trickle.error is not None:
                        raise RuntimeError(f"producing failed: {trickle.error}")

                meter = Meter(instance, pg, proc.pid, say, seen)
                say(f"steady: the daemon starts (pid {proc.pid}); trickle of {plan.rate:g} "
                    f"event/s over partitions {fed} for {plan.seconds / 60:g} min")
                # Its start-up (imports, the code server) is not the steady state.
                started = meter.watch(45, alive, "start")
                if plan.once:
                    trickle.once(plan.once, plan.once_events)
                trickle.start()
                active = meter.watch(plan.seconds, alive, "trickle")
                trickle.stop.set()
                trickle.join()
                alive()
                produced = len(trickle.values)
                say(f"steady: {produced} events produced; waiting for the last runs")
                tail = meter.watch(plan.trigger_age_s + 4 * plan.sensor_interval_s + 300,
                                   alive, "tail", until=lambda: not lag(settings) and
                                   not _in_flight(instance, JOB_NAME))
                final = remaining(instance, pg)
            idle = None
            if plan.idle_s:
                # The production schedule again (daily): at the defaults, idle hours see no prune.
                env = daemon_env(settings, pg, home, plan, DEFAULT_PRUNE_CRON)
                with dagster_daemon(env, home, log) as proc:
                    meter.dagster = TreeCpu(proc.pid)
                    say(f"steady: idle for {plan.idle_s / 60:g} min (daemon restarted with the"
                        " daily prune)")
                    meter.watch(45, lambda: None, "idle start")
                    idle = meter.watch(plan.idle_s, lambda: None, "idle")
        lost = _lost(settings, trickle.values)
        result = summarize(plan, fed, seen, meter.db, started, active, tail, idle, lost,
                           lag(settings), log)
        return {**result, "remaining": final}
    finally:
        trickle.stop.set()
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(home, ignore_errors=True)


ORPHAN_EVENT_ROWS = """
SELECT count(*) FROM event_logs e
WHERE e.run_id <> '' AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_id = e.run_id)
"""


def remaining(instance: Any, pg: dict[str, str]) -> dict[str, Any]:
    """The history left once the trickle's runs ended: every run still stored, and the event-log
    rows of runs that no longer exist (a prune that deleted a run but not its events)."""
    runs = [{"run_id": r.dagster_run.run_id, "job": r.dagster_run.job_name,
             "partition": r.dagster_run.tags.get(PARTITION_TAG),
             "status": r.dagster_run.status.value, "ended": r.end_time,
             "created": r.create_timestamp.timestamp()} for r in instance.get_run_records()]
    with pg_connection(pg) as conn, conn.cursor() as cur:
        cur.execute(ORPHAN_EVENT_ROWS)
        orphans = cur.fetchone()[0]
    return {"runs": runs, "orphan_event_rows": orphans}


def _in_flight(instance: Any, job: str) -> bool:
    from dagster import RunsFilter
    from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES, DagsterRunStatus

    return bool(instance.get_runs_count(RunsFilter(job_name=job, statuses=[
        DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, *IN_PROGRESS_RUN_STATUSES])))


def _lost(settings: Settings, values: list[bytes]) -> dict[str, int]:
    """How the table differs from what the pure core makes of every event produced."""
    from devtools.stack import cassandra_cluster
    from tests.support.pipeline import all_rows, expected_rows

    cluster = cassandra_cluster(settings.cassandra_hosts, settings.cassandra_port, timeout=30.0)
    try:
        table = all_rows(cluster.connect(), settings)
    finally:
        cluster.shutdown()
    expected = expected_rows(values)
    return {"expected_rows": len(expected), "table_rows": len(table),
            "missing": sum(1 for k in expected if k not in table),
            "unexpected": sum(1 for k in table if k not in expected),
            "different": sum(1 for k, v in expected.items() if k in table and table[k] != v)}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _per(phase: dict[str, Any], key: str) -> float:
    return phase["db_end"][key] - phase["db_start"][key]


def summarize(plan: Plan, fed: list[int], seen: Seen, db: list[dict[str, Any]],
              started: dict[str, Any], active: dict[str, Any], tail: dict[str, Any],
              idle: dict[str, Any] | None, lost: dict[str, int], lag_left: int,
              log: Path) -> dict[str, Any]:
    ingest = sorted(seen.of(JOB_NAME), key=lambda r: r["created"])
    prunes = seen.of(PRUNE_JOB)
    hours = active["seconds"] / 3600
    # The trickle's runs: those created while producing (the tail's are its last cycle).
    during = [r for r in ingest if active["from"] <= r["created"] < active["to"]]
    per_partition = Counter(r["partition"] for r in during)
    cycle = active["seconds"] / (len(during) / len(fed)) if during else None
    overhead = cycle - plan.trigger_age_s if cycle else None
    default_cycle = DEFAULT_AGE_S + overhead if overhead is not None else None
    gaps = _gaps(ingest)
    cpu = {k: active["cpu_s"][k] + tail["cpu_s"][k] for k in active["cpu_s"]}
    both_s = active["seconds"] + tail["seconds"]
    dagster_s = cpu["dagster"] - cpu["dagster_prune_runs"]
    runs_both = len([r for r in ingest if r["created"] >= active["from"]])
    result: dict[str, Any] = {
        "plan": {**asdict(plan), "scale": plan.scale(), "fed": fed},
        "machine": machine(),
        "events": lost["expected_rows"],
        "runs": {"ingest": len(ingest), "during_trickle": len(during),
                 "per_partition": dict(per_partition),
                 "statuses": dict(Counter(r["status"] for r in ingest)),
                 "prune": len(prunes),
                 "prune_statuses": dict(Counter(r["status"] for r in prunes)),
                 "per_hour": round(len(during) / hours, 1),
                 "cycle_s": cycle and round(cycle, 1),
                 "min_gap_s_per_partition": gaps,
                 "per_day_at_default_age": default_cycle and round(
                     len(fed) * SECONDS_PER_DAY / default_cycle)},
        "cpu_s_per_hour": {
            "dagster": round(dagster_s / both_s * 3600, 1),
            "dagster_prune_runs_seen": round(cpu["dagster_prune_runs"] / both_s * 3600, 1),
            **{k: round(v / both_s * 3600, 1) for k, v in cpu.items()
               if k not in ("dagster", "dagster_prune_runs")}},
        "dagster_core_share": round(dagster_s / both_s, 4),
        "start_cpu_s": round(started["cpu_s"]["dagster"], 1),
        "event_ages_s": {
            "p50_median_run": _round(statistics.median([a["event_age_p50_s"] for a in seen.ages])
                                     if seen.ages else None),
            "p99_of_runs_p99": _round(_percentile([a["event_age_p99_s"] for a in seen.ages],
                                                  0.99)),
            "max": _round(max((a["event_age_max_s"] for a in seen.ages), default=None)),
            "runs": len(seen.ages)},
        "prunes": seen.prunes,
        "db_samples": db,
        "lost": lost, "lag_left": lag_left,
        "daemon_log_errors": _errors(log),
    }
    per_run = _per_run(dagster_s, both_s, runs_both, active, tail, idle)
    result["per_run"] = per_run
    if idle is not None:
        idle_dagster = idle["cpu_s"]["dagster"] - idle["cpu_s"]["dagster_prune_runs"]
        result["idle"] = {
            "seconds": round(idle["seconds"]),
            "dagster_core_share": round(idle_dagster / idle["seconds"], 4),
            **{f"{k}_core_share": round(v / idle["seconds"], 4)
               for k, v in idle["cpu_s"].items() if k not in ("dagster", "dagster_prune_runs")},
            "db_bytes_per_hour": round(_per(idle, "db_bytes") / idle["seconds"] * 3600),
            "event_logs_per_hour": round(_per(idle, "event_logs") / idle["seconds"] * 3600),
            "xact_per_s": round(_per(idle, "xact_commit") / idle["seconds"], 2),
            "sessions_per_hour": round(_per(idle, "sessions") / idle["seconds"] * 3600, 1),
        }
    result["extrapolated"] = extrapolate(result)
    return result


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _gaps(ingest: list[dict[str, Any]]) -> dict[str, float]:
    """Per partition, the shortest time between the creation of two consecutive runs."""
    by: dict[str, list[float]] = {}
    for r in ingest:
        by.setdefault(r["partition"], []).append(r["created"])
    return {p: round(min(b - a for a, b in itertools.pairwise(t)), 1)
            for p, t in by.items() if len(t) > 1}


def _per_run(dagster_s: float, seconds: float, runs: int, active: dict[str, Any],
             tail: dict[str, Any], idle: dict[str, Any] | None) -> dict[str, Any]:
    """What a run costs: the trickle's totals less what the idle daemon spends in as long,
    divided by its runs (prune runs included in the database's counters: a few per minute)."""
    if not runs:
        return {}
    totals = {k: _per(active, k) + _per(tail, k)
              # Counters only: row counts fall as the prune deletes.
              for k in ("xact_commit", "tup_inserted", "sessions")}
    out: dict[str, Any] = {"cpu_s": round(dagster_s / runs, 2)}
    if idle is not None:
        idle_cpu = (idle["cpu_s"]["dagster"] - idle["cpu_s"]["dagster_prune_runs"]) / \
            idle["seconds"]
        out["cpu_s_net_of_idle"] = round((dagster_s - idle_cpu * seconds) / runs, 2)
    for k, v in totals.items():
        if idle is None:  # the idle daemon's share is in it
            out[k] = round(v / runs, 1)
        else:
            out[f"{k}_net_of_idle"] = round((v - _per(idle, k) / idle["seconds"] * seconds)
                                            / runs, 1)
    return out


def extrapolate(result: dict[str, Any]) -> dict[str, Any]:
    """The month at the defaults (age 300 s, 14 days kept, a daily prune)."""
    per_day = result["runs"]["per_day_at_default_age"]
    per_run = result["per_run"]
    idle = result.get("idle")
    if not per_day or not idle or "cpu_s_net_of_idle" not in per_run:
        return {}
    cpu_day = idle["dagster_core_share"] * SECONDS_PER_DAY + per_run["cpu_s_net_of_idle"] * per_day
    bytes_per_run = _db_bytes_per_run(result["db_samples"])
    out: dict[str, Any] = {
        "runs_per_day": per_day,
        "dagster_cpu_s_per_day": round(cpu_day),
        "dagster_core_share": round(cpu_day / SECONDS_PER_DAY, 4),
    }
    if bytes_per_run:
        kept = DEFAULT_KEEP_DAYS * (per_day * bytes_per_run + idle["db_bytes_per_hour"] * 24)
        out.update({"db_bytes_per_run": round(bytes_per_run),
                    "db_bytes_per_day_before_pruning": round(
                        per_day * bytes_per_run + idle["db_bytes_per_hour"] * 24),
                    "db_bytes_kept_at_14_days": round(kept)})
    return out


def _db_bytes_per_run(samples: list[dict[str, Any]]) -> float | None:
    """Database growth per run before the first prune deleted anything (run rows only grow)."""
    trickle = [s for s in samples if s["phase"] in ("trickle", "tail")]
    growing = []
    for a, b in itertools.pairwise(trickle):
        if b["tup_deleted"] != a["tup_deleted"]:
            break
        growing = [trickle[0], b]
    if len(growing) < 2 or growing[1]["runs"] <= growing[0]["runs"]:
        return None
    return (growing[1]["db_bytes"] - growing[0]["db_bytes"]) / (growing[1]["runs"]
                                                                 - growing[0]["runs"])


def _errors(log: Path) -> int:
    try:
        return sum(1 for line in log.read_text(errors="replace").splitlines()
                   if " - ERROR - " in line)
    except OSError:
        return 0


def table(r: dict[str, Any]) -> str:
    p, runs, cpu, ages = r["plan"], r["runs"], r["cpu_s_per_hour"], r["event_ages_s"]
    lines = [
        f"steady: {p['seconds'] / 60:g} min at {p['rate']:g} event/s over {len(p['fed'])} "
        f"partitions, age {p['trigger_age_s']:g} s (x{p['scale']:g} shorter than the default), "
        f"keep {p['keep_s'] / 60:g} min, prune '{p['prune_cron']}'",
        f"  runs: {runs['during_trickle']} while producing ({runs['per_hour']} an hour), "
        f"cycle {runs['cycle_s']} s a partition; statuses {runs['statuses']}; "
        f"{runs['prune']} prunes {runs['prune_statuses']}",
        f"  runs a day at the default age (300 s): {runs['per_day_at_default_age']}",
        f"  CPU s/hour: {cpu}  (Dagster {r['dagster_core_share']:.1%} of a core)",
        f"  per run: {r['per_run']}",
        f"  event ages at write: {ages}",
        f"  lost: {r['lost']}, lag left {r['lag_left']}",
    ]
    if "idle" in r:
        lines.append(f"  idle: {r['idle']}")
    lines.append(f"  extrapolated to the defaults: {r['extrapolated']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.steady", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--idle-minutes", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--age", type=float, default=30.0)
    parser.add_argument("--keep-minutes", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=REPO / "steady-results.json")
    args = parser.parse_args(argv)
    plan = Plan(seconds=args.minutes * 60, idle_s=args.idle_minutes * 60, rate=args.rate,
                trigger_age_s=args.age, keep_s=args.keep_minutes * 60)
    from .stack.postgres import fresh_database, postgres_server

    base = Settings.from_env()
    area = Area.create(base)
    try:
        with postgres_server() as server:
            pg = fresh_database(server, f"steady_{uuid.uuid4().hex[:8]}")
            result = soak(area.settings, pg, plan)
    finally:
        area.cleanup()
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(result))
    ok = not any(result["lost"][k] for k in ("missing", "unexpected", "different"))
    return 0 if ok and not result["lag_left"] else 1


if __name__ == "__main__":
    sys.exit(main())
