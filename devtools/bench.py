"""`make bench`: the pipeline's throughput against the real local Kafka and Cassandra.

    python -m devtools.bench --events N [--scale] [--out bench-results.json]

Everything runs in one go, on the same realistic events (samples.py, seeded, unique keys),
on topics, a consumer group and a keyspace of its own (`bench-<tag>...`, `bench_<tag>`),
created with stack.ensure_topics / ensure_schema and deleted afterwards:

1. json_parse_events_per_s   orjson.loads alone, in the pipeline's batches (one partition's
                             run, at most max_messages), keeping every result until the batch
                             ends (the pipeline keeps its batch until it is written); gc on,
                             as for flatten. The same without keeping results is reported too.
2. flatten_events_per_s      events.flatten, bytes -> DataFrame, same batches.
3. kafka_read_events_per_s   KafkaResource.read_range of every partition's range alone.
4. cassandra_write_ceiling_rows_per_s   the same pre-built rows, the pipeline's prepared
                             statement, consistency and driver settings, a plain driver loop;
                             swept over 32..512 requests in flight, one INSERT per row and
                             the pipeline's batches by partition key; best of sweep. The drain
                             runs partitions one after another in one process, so P = 1.
5. baseline_rows_per_s       the old job's way: one synchronous unprepared INSERT per event.
6. e2e_events_per_s          `programuser-dagster drain` in a child process on a fresh Dagster
                             home, draining the N-event backlog of all partitions; from the
                             first run's start to the last run's end (after its commit).
7. peak_rss_mb               of the drain's process tree (sampled from /proc every 20 ms; the
                             kernel's ru_maxrss is kept beside it); with --scale also at N/10
                             and 10N.
8. client_cpu_us_per_event_outside_driver   CPU of RangeRows reading and flattening every
                             partition's range and the IO manager encoding each chunk and
                             building its requests, nothing sent (the process, Kafka's client
                             threads included; gc as in a run);
                             the driver's own share (sending, its threads) under protocol v5/v4
                             and libev/asyncio is in driver.costs.
9. dagster_fixed_cost_s_per_run (_postgres)   drain of 10 runs of 200 events in one process,
                             wall time per run from the second run's creation to the last one's
                             end (the first also connects), on the repo's dagster.yaml (sqlite)
                             and on deploy/dagster.yaml (a PostgreSQL server of its own).
10. e2e_daemon_events_per_s  the production path: dagster-daemon on PostgreSQL, the sensor every
                             5 s, warmed up; 200,000 events produced (made before the first is
                             sent); from the end of producing until every partition's committed
                             offset is its high-water mark.
11. run_start_to_first_read_s   of those runs, the longest from RUN_START to the range's first
                             records (the rows output's first_read_at).

Writes every figure, the ratios against the targets and the machine to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from cassandra import ConsistencyLevel
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType

from programuser_dagster.cassandra.client import CassandraResource, CassandraWriteFailed
from programuser_dagster.cassandra.cql_encoding import encode_columns
from programuser_dagster.cassandra.writes import CassandraWriter, group_rows, group_statement
from programuser_dagster.core.clock import now_us
from programuser_dagster.core.events import COLUMNS, MAYBE_NOT_WRITTEN, NOT_WRITTEN, flatten
from programuser_dagster.core.report import RangeReport
from programuser_dagster.ingest.range_rows import Chunking, RangeRows
from programuser_dagster.ingest.run_tags import PARTITION_TAG
from programuser_dagster.memory import collect_between_chunks, gc_paused
from programuser_dagster.resources import cassandra_io_manager, cassandra_resource, kafka_resource
from programuser_dagster.settings import Settings, temporary_env

from .produce import produce_records
from .samples import message_key, sample_events

CONCURRENCY_SWEEP = (32, 64, 128, 256, 512)
# Rows written per sweep point: enough for a steady rate, few enough that the slow forms
# (one request per row, the old synchronous loop) finish in tens of seconds.
CEILING_ROWS = 40_000
SINGLE_ROW_CEILING_ROWS = 5_000
BASELINE_ROWS = 2_000

# Each target: (wanted, as printed; whether a measured value meets it).
_AT_LEAST, _AT_MOST = (lambda v, t: v >= t), (lambda v, t: v <= t)
TARGET_BOUNDS: dict[str, tuple[Callable[[float, float], bool], float]] = {
    "e2e_vs_write_ceiling": (_AT_LEAST, 0.8),
    "e2e_daemon_vs_write_ceiling": (_AT_LEAST, 0.7),
    "e2e_vs_baseline": (_AT_LEAST, 5),
    "flatten_vs_json_parse": (_AT_LEAST, 0.6),
    "dagster_fixed_cost_s_per_run": (_AT_MOST, 0.25),
    "dagster_fixed_cost_s_per_run_postgres": (_AT_MOST, 0.4),
    "run_start_to_first_read_s": (_AT_MOST, 2),
    "client_cpu_us_per_event_outside_driver": (_AT_MOST, 20),
    "peak_rss_10n_vs_n": (_AT_MOST, 1.2),
    "peak_rss_10n_mb": (_AT_MOST, 400),
    "cost_per_event_spread_n10_to_10n": (_AT_MOST, 1.25),
}
TARGETS = {k: (">= " if bound is _AT_LEAST else "<= ") + f"{limit:g}"
           for k, (bound, limit) in TARGET_BOUNDS.items()}


def _say(line: str = "") -> None:
    print(line, flush=True)


# --- the stack's names for one measurement ------------------------------------------------


def cql(settings: Settings) -> Any:
    """A driver Cluster for the bench's own set-up and reads (TLS when the settings say so)."""
    from .stack import cassandra_cluster

    return cassandra_cluster(list(settings.cassandra_hosts), settings.cassandra_port,
                             timeout=60, ssl_ca=settings.cassandra_ssl_ca)


def _replicas(settings: Settings) -> int:
    """Topic replicas: three on the cluster stack, one on a single broker."""
    kafka = kafka_resource(settings)
    try:
        brokers = len(kafka.consumer.list_topics(timeout=30).brokers)
    finally:
        kafka.close()
    return min(3, brokers)


@dataclasses.dataclass
class Area:
    """Topics, group and keyspace of one bench measurement; removed by cleanup()."""

    settings: Settings

    @classmethod
    def create(cls, base: Settings, partitions: int | None = None) -> Area:
        from .stack import ensure_schema, ensure_topics

        tag = uuid.uuid4().hex[:8]
        settings = base.for_env(f"bench-{tag}", f"bench_{tag}", partitions)
        ensure_topics(
            settings.kafka_bootstrap_servers,
            {settings.kafka_input_topic: settings.kafka_partitions, settings.kafka_dlq_topic: 1},
            dead_letter={settings.kafka_dlq_topic},
            replicas=_replicas(settings),
        )
        cluster = cql(settings)
        try:
            ensure_schema(cluster.connect(), settings.cassandra_keyspace,
                          settings.cassandra_table, settings.cassandra_replication)
        finally:
            cluster.shutdown()
        return cls(settings)

    def names(self) -> list[str]:
        s = self.settings
        return [s.kafka_input_topic, s.kafka_dlq_topic, s.cassandra_keyspace]

    def produce(self, n: int, seed: int, made_first: bool = False) -> None:
        """n sample events; `made_first`: all of them made before the first is sent, so that
        producing takes as little time as the client and broker need (~1 KB an event held)."""
        records: Iterable[tuple[bytes, bytes]] = (
            (message_key(e), orjson.dumps(e)) for e in sample_events(n, seed=seed))
        if made_first:
            records = list(records)
        kafka = kafka_resource(self.settings)
        try:
            produce_records(kafka, records)
        finally:
            kafka.close()

    def cleanup(self) -> None:
        from .stack import delete_topics, drop_keyspace

        s = self.settings
        delete_topics(s.kafka_bootstrap_servers, [s.kafka_input_topic, s.kafka_dlq_topic])
        for attempt in range(3):  # a node busy with other sessions' tests may time out once
            cluster = cql(s)
            try:
                drop_keyspace(cluster.connect(), s.cassandra_keyspace)
                return
            except Exception as exc:
                if attempt == 2:
                    raise
                _say(f"dropping keyspace {s.cassandra_keyspace} failed ({exc}); retrying")
                time.sleep(5)
            finally:
                cluster.shutdown()


def cassandra_writer(settings: Settings) -> CassandraWriter:
    """The pipeline's write engine, its client's EnvVar password resolved as Dagster would."""
    client = cassandra_resource(settings)
    fields = {name: getattr(client, name) for name in CassandraResource.model_fields}
    client = CassandraResource(**{**fields, "password": os.environ.get("CASSANDRA_PASSWORD")})
    return cassandra_io_manager(settings, client).writer()


# --- 1-3: the parts alone -------------------------------------------------------------------


def _timed(work: Callable[[], Any]) -> float:
    gc.collect()
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def read_partitions(settings: Settings) -> tuple[float, dict[int, list[bytes]]]:
    """Read every partition's [low, high) with the pipeline's read path; the values by
    partition (timed: the reading only, keeping the messages as the pipeline does)."""
    kafka = kafka_resource(settings)
    values: dict[int, list[bytes]] = {}
    elapsed = 0.0
    try:
        for o in kafka.offsets():
            gc.collect()
            started = time.perf_counter()
            messages = kafka.read_range(o.partition, o.low, o.high)
            elapsed += time.perf_counter() - started
            values[o.partition] = [m.value() for m in messages]
            del messages
    finally:
        kafka.close()
    return elapsed, values


def batches(values: dict[int, list[bytes]], max_messages: int) -> Iterator[list[bytes]]:
    """The pipeline's batches: one partition's run reads at most max_messages offsets."""
    for part in values.values():
        for i in range(0, len(part), max_messages):
            yield part[i : i + max_messages]


def json_parse(values: dict[int, list[bytes]], max_messages: int, keep: bool) -> float:
    loads = orjson.loads

    def work() -> None:
        for batch in batches(values, max_messages):
            if keep:
                kept = [loads(v) for v in batch]
                del kept
            else:
                for v in batch:
                    loads(v)

    return _timed(work)


def flatten_all(values: dict[int, list[bytes]], max_messages: int) -> float:
    def work() -> None:
        for batch in batches(values, max_messages):
            result = flatten(enumerate(batch))
            del result

    return _timed(work)


def client_cpu(settings: Settings, chunking: Chunking) -> float:
    """CPU seconds of this process (the Kafka client's threads included; the Cassandra driver,
    connected, sends nothing) for the client's work on every partition's range short of the
    driver: RangeRows reading and flattening it chunk by chunk, and the IO manager encoding
    each chunk and building its requests, with the collector as a run has it.
    """
    kafka, io = kafka_resource(settings), cassandra_writer(settings)
    try:
        io.insert_statement()  # prepared before the clock starts, as a run's first write does
        ranges = [RangeRows(kafka, RangeReport(partition=o.partition, start=o.low, end=o.high,
                                               high_watermark=o.high, write_base=now_us()),
                            chunking, on_failure="")
                  for o in kafka.offsets()]
        gc.collect()
        started = time.process_time()
        with gc_paused():
            for rows in ranges:
                for frame in rows:
                    collect_between_chunks()
                    requests = list(io.requests(frame).statements())
                    del requests
        return time.process_time() - started
    finally:
        io.client.close()
        kafka.close()


# --- 4-5: Cassandra alone -------------------------------------------------------------------


def write_ceiling(
    settings: Settings, params: list[tuple[Any, ...]], max_batch_rows: int
) -> tuple[float, list[dict[str, Any]]]:
    """Best rows/s of a plain driver loop over the sweep; the sweep itself."""
    io = cassandra_writer(settings)
    sweep: list[dict[str, Any]] = []
    try:
        insert = io.insert_statement()
        batches = f"batches of <= {max_batch_rows} rows by program_id"
        for form, batch_rows, limit, encoded in (
            ("insert per row, bound by the driver", 1, SINGLE_ROW_CEILING_ROWS, False),
            (f"{batches}, bound by the driver", max_batch_rows, CEILING_ROWS, False),
            (f"{batches}, encoded column-wise", max_batch_rows, CEILING_ROWS, True),
        ):
            rows = params[:limit]
            groups = group_rows(_encoded(insert, rows), batch_rows, io.batch_bytes)
            for concurrency in CONCURRENCY_SWEEP:
                gc.collect()
                started = time.perf_counter()
                acked = _write(io, _requests(insert, rows, groups, encoded), groups,
                               concurrency)
                elapsed = time.perf_counter() - started
                point = {
                    "form": form, "processes": 1, "in_flight": concurrency, "rows": len(rows),
                    "failed_rows": len(rows) - acked, "rows_per_s": round(acked / elapsed),
                }
                sweep.append(point)
                _say(f"  ceiling sweep: {form:58} in flight {concurrency:>3}: "
                     f"{point['rows_per_s']:>7} rows/s"
                     + (f" ({point['failed_rows']} timed out)" if point["failed_rows"] else ""))
    finally:
        io.client.close()
    # A point where writes timed out measured an overloaded node, not a ceiling.
    clean = [p["rows_per_s"] for p in sweep if not p["failed_rows"]]
    return max(clean or [0]), sweep


def _requests(
    insert: Any, params: list[tuple[Any, ...]], groups: list[list[int]], encoded: bool
) -> Iterator[Any]:
    """A driver loop's requests, made as it goes (so in the timed part, like any loop): either bound
    by the driver, a row at a time (binding is ~half of a row's client-side cost), or encoded
    column-wise first as the pipeline does (programuser_dagster/cassandra/cql_encoding.py)."""
    if encoded:
        values = _encoded(insert, params)
        for group in groups:
            yield group_statement(insert, values, group)
        return
    for group in groups:
        if len(group) == 1:
            yield insert.bind(params[group[0]])
            continue
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for i in group:
            batch.add(insert, params[i])
        yield batch


def _encoded(insert: Any, params: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return encode_columns(list(zip(*params, strict=True)), insert)


def _write(
    io: CassandraWriter, requests: Iterator[Any], groups: list[list[int]], concurrency: int
) -> int:
    """The rows Cassandra acknowledged of the groups' requests, at most `concurrency` in
    flight (an overloaded node times some writes out: they do not count). The pipeline's own
    execute_async loop (execute_concurrent crashes on a node that stops answering, see
    BoundedExecution)."""
    execution = io.execution(concurrency)
    results = execution.submit(requests)
    execution.wait()
    return sum(len(g) for g, (ok, _) in zip(groups, results, strict=True) if ok)


DRIVER_ROWS = 20_000
# (native protocol, event loop) of the driver measurement; the pipeline's is the first.
DRIVER_FORMS = ((5, "libev"), (4, "libev"), (5, "asyncio"))


def driver_cost(settings: Settings, params: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """What the driver's share of a write costs: the pipeline's encoded batches of the same
    rows sent by BoundedExecution on a session like the IO manager's, under each of
    DRIVER_FORMS; CPU per row of this thread (building and sending the requests) and of the
    driver's own threads (the event loop: I/O, framing, callbacks)."""
    from programuser_dagster.cassandra.writes import BoundedExecution

    io = cassandra_writer(settings)
    level = ConsistencyLevel.name_to_value[settings.cassandra_consistency.upper()]
    rows = params[:DRIVER_ROWS]
    points = []
    for protocol, loop in DRIVER_FORMS:
        if loop == "asyncio" and settings.cassandra_ssl_ca:
            # Its connections timed out over TLS here (cassandra-driver 3.30, the cluster).
            points.append({"protocol": protocol, "event_loop": loop,
                           "error": "not tried: the driver's asyncio loop does not connect "
                           "over TLS here"})
            continue
        if loop == "asyncio":
            from cassandra.io.asyncioreactor import AsyncioConnection as connection_class
        else:
            from cassandra.io.libevreactor import LibevConnection as connection_class
        try:
            cluster, session = io.client._connect(level, protocol, connection_class)
        except CassandraWriteFailed as exc:  # e.g. asyncio over TLS did not connect here
            points.append({"protocol": protocol, "event_loop": loop, "error": str(exc)[:300]})
            _say(f"  driver: protocol v{protocol}, {loop}: could not connect ({exc})")
            continue
        try:
            insert = session.prepare(io.insert_cql())
            insert.is_idempotent = True
            values = _encoded(insert, rows)
            groups = group_rows(values, io.batch_rows, io.batch_bytes)
            requests = [group_statement(insert, values, g) for g in groups]
            execution = BoundedExecution(session, io.concurrency, wait_s=120)
            gc.collect()
            me = str(threading.get_native_id())
            threads, started = _threads_cpu(), time.perf_counter()
            own = time.thread_time()
            results = execution.submit(requests)
            own = time.thread_time() - own
            execution.wait()
            elapsed = time.perf_counter() - started
            # The driver's threads: each one's CPU since the first look (a new one's all of it).
            others = sum(cpu - threads.get(tid, 0.0) for tid, cpu in _threads_cpu().items()
                         if tid != me)
        finally:
            cluster.shutdown()
        acked = sum(len(g) for g, (ok, _) in zip(groups, results, strict=True) if ok)
        points.append({
            "protocol": protocol, "event_loop": loop, "rows": len(rows),
            "requests": len(requests), "failed_rows": len(rows) - acked,
            "rows_per_s": round(acked / elapsed),
            "sending_cpu_us_per_row": round(own / len(rows) * 1e6, 2),
            "driver_threads_cpu_us_per_row": round(others / len(rows) * 1e6, 2),
        })
        _say(f"  driver: protocol v{protocol}, {loop}: {points[-1]['rows_per_s']} rows/s, "
             f"sending {points[-1]['sending_cpu_us_per_row']} us/row, driver threads "
             f"{points[-1]['driver_threads_cpu_us_per_row']} us/row")
    return points


def _threads_cpu() -> dict[str, float]:
    """CPU seconds of each of this process's threads (by thread id), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
                stat = f.read()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def _ceiling_process(
    settings: Settings, values: list[bytes], batch_rows: int, concurrency: int,
    barrier: Any, out: Any,
) -> None:
    """One process of the multi-process ceiling: its own rows, bound before the barrier."""
    io = cassandra_writer(settings)
    try:
        insert = io.insert_statement()
        params = bind_parameters(flatten(enumerate(values)).rows)
        groups = group_rows(_encoded(insert, params), batch_rows, io.batch_bytes)
        gc.collect()
        barrier.wait()
        started = time.time()
        acked = _write(io, _requests(insert, params, groups, encoded=True), groups, concurrency)
        out.put((started, time.time(), acked, len(params)))
    finally:
        io.client.close()


def write_ceiling_processes(
    settings: Settings, values: dict[int, list[bytes]], batch_rows: int, concurrency: int,
    processes: int,
) -> dict[str, Any]:
    """The pipeline's batches written by `processes` plain driver loops at once, one process
    each (as drain --processes runs them), CEILING_ROWS rows in all, split between them."""
    import multiprocessing

    rows = [v for part in values.values() for v in part][:CEILING_ROWS]
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(target=_ceiling_process,
                    args=(settings, rows[i::processes], batch_rows, concurrency, barrier, out))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    reports = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    acked = sum(r[2] for r in reports)
    elapsed = max(r[1] for r in reports) - min(r[0] for r in reports)
    return {
        "form": f"batches of <= {batch_rows} rows by program_id, encoded column-wise",
        "processes": processes,
        "in_flight": concurrency, "rows": len(rows), "failed_rows": len(rows) - acked,
        "rows_per_s": round(acked / elapsed),
    }


def bind_parameters(rows: pd.DataFrame) -> list[tuple[Any, ...]]:
    """Rows -> the driver's bind parameters in COLUMNS order, NOT_WRITTEN -> UNSET_VALUE, then
    the write time (of the row's last event: one write per row, as most rows are)."""
    columns = []
    for name in COLUMNS:
        values = rows[name].tolist()
        if name in MAYBE_NOT_WRITTEN:
            values = [UNSET_VALUE if v is NOT_WRITTEN else v for v in values]
        columns.append(values)
    base = now_us()
    columns.append([base + writers[0] for writers in rows["writers"].tolist()])
    return list(zip(*columns, strict=True))


def baseline(settings: Settings, params: list[tuple[Any, ...]]) -> float:
    """The old job: one synchronous, unprepared INSERT per event at the same consistency."""
    from cassandra.query import UNSET_VALUE, SimpleStatement

    io = cassandra_writer(settings)
    try:
        session = io.client.session()
        cql = io.insert_cql().replace("?", "%s")
        # The old job wrote every column (no UNSET in unprepared statements): nulls.
        rows = [tuple(None if v is UNSET_VALUE else v for v in row)
                for row in params[:BASELINE_ROWS]]
        gc.collect()
        started = time.perf_counter()
        for row in rows:
            session.execute(SimpleStatement(cql), row)
        return len(rows) / (time.perf_counter() - started)
    finally:
        io.client.close()


# --- 6-7: the real drain -------------------------------------------------------------------


def _tree_rss_kb(root: int) -> int:
    """Resident set of a process and all its descendants, from /proc (kB).

    A child that is still a fork of its parent (the same command line: Dagster starts its
    compute-log `tail`s with fork and exec) is not counted: until it execs, its resident
    pages are its parent's, shared copy-on-write, and summing both counted them twice (a
    sample caught in that moment read ~100 MB the drain never held).
    """
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                ppid, kb = 0, 0
                for line in f:
                    if line.startswith("PPid:"):
                        ppid = int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        kb = int(line.split()[1])
        except (OSError, ValueError):
            continue
        rss[int(entry)] = kb
        children.setdefault(ppid, []).append(int(entry))
    total, todo = rss.get(root, 0), [root]
    while todo:
        pid = todo.pop()
        parent = _cmdline(pid)
        for child in children.get(pid, []):
            if _cmdline(child) != parent:
                total += rss.get(child, 0)
                todo.append(child)
    return total


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


REPO = Path(__file__).resolve().parent.parent


def pipeline_env(s: Settings, max_messages: int) -> dict[str, str]:
    """The environment of a process that runs the job on one measurement's topics and table."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "KAFKA_INPUT_TOPIC": s.kafka_input_topic,
        "KAFKA_DLQ_TOPIC": s.kafka_dlq_topic,
        "KAFKA_GROUP_ID": s.kafka_group_id,
        "CASSANDRA_HOSTS": ",".join(s.cassandra_hosts),
        "CASSANDRA_PORT": str(s.cassandra_port),
        "CASSANDRA_KEYSPACE": s.cassandra_keyspace,
        "CASSANDRA_TABLE": s.cassandra_table,
        "PROGRAMUSER_MAX_MESSAGES": str(max_messages),
        # As the Makefile and deploy/README set it for every process that runs the job.
        "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),
    }


def e2e(
    settings: Settings, n: int, max_messages: int, processes: int = 1,
    instance_yaml: str | None = None, instance_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`programuser-dagster drain --processes P` of the whole backlog in a child process, on a
    fresh Dagster home: `instance_yaml` (with `instance_env`), by default the repo's
    dagster.yaml, the instance `make drain` uses (sqlite storage)."""
    from dagster import DagsterRunStatus, RunsFilter

    home = Path(tempfile.mkdtemp(prefix="programuser-bench-home-"))
    if instance_yaml is not None:
        (home / "dagster.yaml").write_text(instance_yaml, encoding="utf-8")
    elif (REPO / "dagster.yaml").is_file():
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**pipeline_env(settings, max_messages), "DAGSTER_HOME": str(home),
           **(instance_env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.time()
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 (closed below)
    child = subprocess.Popen(
        [sys.executable, "-m", "programuser_dagster.cli", "drain", "--processes", str(processes)],
        env=env, stdout=subprocess.PIPE, stderr=log, text=True,
    )
    peak_kb = 0
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(child.stdout or []), daemon=True)
    reader.start()
    while child.poll() is None:
        peak_kb = max(peak_kb, _tree_rss_kb(child.pid))
        time.sleep(0.02)
    reader.join()
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    log.seek(0)
    log_tail = log.read()[-4000:]
    log.close()
    if child.returncode != 0:
        raise RuntimeError(f"drain failed ({child.returncode}):\n{''.join(output)}{log_tail}")
    # ru_maxrss of children is the largest child so far: only trust it when it grew here. It is
    # kept as a second opinion only: it is not always there (it did not grow), and it once
    # reported 569 MB for a drain whose tree the samples never saw above 395 MB and which
    # /usr/bin/time measured at 328 MB run alone. The targets use the samples, at every size.
    sampled_kb, kernel_kb = peak_kb, (after if after > before else 0)

    try:
        with _instance(home, instance_env) as instance:
            records = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
            runs = len(records)
            first_start = min(r.start_time for r in records if r.start_time)
            created = sorted(r.create_timestamp.timestamp() for r in records)
            last_end = max(r.end_time for r in records if r.end_time)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    kafka = kafka_resource(settings)
    try:
        lag = sum(o.lag for o in kafka.offsets())
    finally:
        kafka.close()
    if lag:
        raise RuntimeError(f"drain left a lag of {lag}")
    written = sum(_count(line, "written") for line in output if " ok: " in line)
    if written != n:
        raise RuntimeError(f"drain wrote {written} of {n} events:\n{''.join(output)}")
    seconds = last_end - first_start
    return {
        "events": n,
        "processes": processes,
        "runs": runs,
        "seconds": round(seconds, 3),
        # From the second run's creation (before its start; the first run also connects) to
        # the last run's end, per run.
        "wall_s_per_run": round((last_end - created[1]) / (runs - 1), 3) if runs > 1 else None,
        "process_wall_s": round(wall, 3),
        "events_per_s": round(n / seconds, 1),
        "cost_us_per_event": round(seconds / n * 1e6, 2),
        # The whole tree, sampled from /proc every 20 ms.
        "peak_rss_mb": round(sampled_kb / 1024, 1),
        # The kernel's maximum of the largest process (0: unknown, see above).
        "peak_rss_kernel_mb": round(kernel_kb / 1024, 1),
    }


@contextmanager
def _instance(home: Path, env: dict[str, str] | None) -> Iterator[Any]:
    """The Dagster instance of `home`, its dagster.yaml's variables from `env`."""
    from dagster import DagsterInstance

    with temporary_env(env or {}), DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _count(line: str, word: str) -> int:
    """The number before `word` in a drain line (`... read 10, written 10, ...`)."""
    parts = line.replace(",", " ").split()
    return sum(int(parts[i - 1]) for i, p in enumerate(parts) if p == word and parts[i - 1]
               .isdigit())


# --- Dagster's cost per run, and the production path ---------------------------------------

FIXED_COST_RUNS = 10
FIXED_COST_EVENTS = 200  # per run
DAEMON_SENSOR_INTERVAL_S = 5
DAEMON_WARM_EVENTS = 400
DAEMON_TIMEOUT_S = 600
DAEMON_EVENTS = 200_000


def fixed_cost(
    base: Settings, seed: int, scratch: list[str], postgres: dict[str, str] | None = None
) -> dict[str, Any]:
    """Dagster's cost per run: `drain` executing 10 runs of 200 events each in one process, on
    the repo's dagster.yaml (sqlite) or, with `postgres`, on deploy/dagster.yaml. The figure,
    wall_s_per_run, is of runs 2-10 (the first also connects to both servers) and includes
    the 200 events' own work (~0.02 s) and the run's Kafka and Cassandra round trips."""
    from .stack.postgres import deploy_yaml, fresh_database

    area = Area.create(base, partitions=1)
    scratch += area.names()
    try:
        area.produce(FIXED_COST_RUNS * FIXED_COST_EVENTS, seed)
        yaml, env = None, None
        if postgres is not None:
            env = fresh_database(postgres, f"fixed_{uuid.uuid4().hex[:8]}")
            yaml = deploy_yaml(REPO)
        return e2e(area.settings, FIXED_COST_RUNS * FIXED_COST_EVENTS, FIXED_COST_EVENTS,
                   instance_yaml=yaml, instance_env=env)
    finally:
        area.cleanup()


def daemon_path(
    base: Settings, n: int, seed: int, scratch: list[str], postgres: dict[str, str]
) -> dict[str, Any]:
    """The production path: `dagster-daemon` on PostgreSQL (deploy/dagster.yaml), its sensor
    every 5 s launching one run process per partition's range. The daemon is started and
    warmed up first (a few events per partition drained); then n events are produced over the
    4 partitions, and the clock runs from the end of producing until every partition's
    committed offset equals its high-water mark."""
    from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

    from .stack.postgres import deploy_yaml, fresh_database

    area = Area.create(base)
    scratch += area.names()
    home = Path(tempfile.mkdtemp(prefix="programuser-bench-daemon-"))
    pg = fresh_database(postgres, f"daemon_{uuid.uuid4().hex[:8]}")
    (home / "dagster.yaml").write_text(deploy_yaml(REPO), encoding="utf-8")
    env = {**pipeline_env(area.settings, base.max_messages), **pg, "DAGSTER_HOME": str(home),
           "PROGRAMUSER_SENSOR_INTERVAL_S": str(DAEMON_SENSOR_INTERVAL_S)}
    log_path = home / "daemon.log"
    try:
        with dagster_daemon(env, home, log_path) as daemon:
            _say(f"daemon path: warming up the daemon ({DAEMON_WARM_EVENTS} events) ...")
            area.produce(DAEMON_WARM_EVENTS, seed)
            _wait_drained(area.settings, daemon, log_path)
            warm_until = time.time()
            _say(f"daemon path: producing {n} events ...")
            area.produce(n, seed + 1, made_first=True)
            produced = time.time()
            _wait_drained(area.settings, daemon, log_path)
            drained = time.time()
            # A run commits a moment before it is marked finished.
            with _instance(home, pg) as instance:
                _wait_runs_ended(instance)
        with _instance(home, pg) as instance:
            records = [r for r in instance.get_run_records(RunsFilter(job_name="program_user_info"))
                       if r.create_timestamp.timestamp() > warm_until]
            starts, timeline = [], []
            for r in sorted(records, key=lambda r: r.create_timestamp):
                first_read = _first_read_at(instance, r.dagster_run.run_id, DagsterEventType)
                if r.start_time and first_read is not None:
                    starts.append(first_read - r.start_time)
                # Each run's moments, in seconds after the end of producing.
                moments = (r.create_timestamp.timestamp(), r.start_time, first_read, r.end_time)
                timeline.append({
                    "partition": r.dagster_run.tags.get(PARTITION_TAG),
                    **{k: None if t is None else round(t - produced, 2) for k, t in
                       zip(("created", "started", "first_read", "ended"), moments, strict=True)},
                })
            statuses = Counter(r.dagster_run.status.value for r in records)
            before_clock = sum(1 for r in records if r.start_time and r.start_time < produced)
    finally:
        area.cleanup()
        shutil.rmtree(home, ignore_errors=True)
    seconds = drained - produced
    return {
        "events": n, "partitions": base.kafka_partitions, "runs": len(records),
        "failed_runs": statuses.get(DagsterRunStatus.FAILURE.value, 0),
        "run_statuses": dict(statuses), "runs_started_while_producing": before_clock,
        "sensor_interval_s": DAEMON_SENSOR_INTERVAL_S, "seconds": round(seconds, 3),
        "events_per_s": round(n / seconds, 1),
        "run_start_to_first_read_s_max": round(max(starts), 3) if starts else None,
        "run_start_to_first_read_s_mean": round(sum(starts) / len(starts), 3) if starts else None,
        "timeline": timeline,
    }


@contextmanager
def dagster_daemon(env: dict[str, str], home: Path, log: Path
                   ) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` on this repo's workspace in DAGSTER_HOME `home`, its output appended
    to `log`, its process group stopped at the end."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run",
             "-w", str(REPO / "workspace.yaml")],
            cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            _stop_group(proc)


def _first_read_at(instance: Any, run_id: str, kinds: Any) -> float | None:
    """When the run's range first arrived from Kafka (its rows output's first_read_at)."""
    for entry in instance.all_logs(run_id, of_type=kinds.HANDLED_OUTPUT):
        value = entry.dagster_event.event_specific_data.metadata.get("first_read_at")
        if value is not None:
            return float(value.value)
    return None


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Interrupt the daemon's process group as Ctrl-C would; what is left of it is killed."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    with suppress(subprocess.TimeoutExpired):
        process.wait(60)
    with suppress(ProcessLookupError):  # the group outlives its leader: its run workers
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def _wait_runs_ended(instance: Any, timeout_s: float = 60) -> None:
    from dagster import DagsterRunStatus, RunsFilter

    unfinished = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED,
                  DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    deadline = time.monotonic() + timeout_s
    while instance.get_runs_count(RunsFilter(statuses=unfinished)) and \
            time.monotonic() < deadline:
        time.sleep(0.2)


def _wait_drained(settings: Settings, daemon: subprocess.Popen[bytes], log: Path) -> None:
    """Until every partition's committed offset is its high-water mark (polled every 0.1 s)."""
    kafka = kafka_resource(settings)
    deadline = time.monotonic() + DAEMON_TIMEOUT_S
    try:
        while any(o.lag for o in kafka.offsets()):
            if daemon.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited ({daemon.returncode}):\n"
                                   + log.read_text(errors="replace")[-4000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not drain the backlog in {DAEMON_TIMEOUT_S}"
                                   " s:\n" + log.read_text(errors="replace")[-4000:])
            time.sleep(0.1)
    finally:
        kafka.close()


# --- the run ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    from importlib.metadata import version

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem_gb, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "libs": {
            p: version(p)
            for p in ("dagster", "cassandra-driver", "confluent-kafka", "pandas", "orjson")
        },
        "servers": _servers(),
    }


def _servers() -> str:
    from .stack import cluster

    hosts = os.environ.get("CASSANDRA_HOSTS", "127.0.0.1")
    if len(hosts.split(",")) > 1:
        return (f"the cluster stack on the same machine: 3 Kafka 4.x brokers "
                f"({cluster.KAFKA_HEAP} heaps, topics RF 3, min ISR 2) and 3 Cassandra 5.0 "
                f"nodes ({cluster.CASSANDRA_HEAP} heaps, {cluster.REPLICATION}, TLS)")
    return "local Kafka 4.x (KRaft) and Cassandra 5.0 (1G heap) on the same machine"


def run(n: int, scale: bool, out: Path, seed: int = 42, processes: int = 1,
        production_path: bool = True, daemon_events: int = DAEMON_EVENTS) -> dict[str, Any]:
    # The servers are started by `make bench` (or a test session): a plain `stack up` here
    # would take over a test session's servers, which it then no longer stops.
    base = Settings.from_env()
    max_messages = base.max_messages
    io = cassandra_writer(base)
    result: dict[str, Any] = {
        "events": n,
        "partitions": base.kafka_partitions,
        "max_messages": max_messages,
        "drain_processes": processes,
        "driver": {
            "concurrency": io.concurrency,
            "batch_rows": io.batch_rows,
            "batch_bytes": io.batch_bytes,
            "consistency": base.cassandra_consistency,
            "protocol_version": 5,
        },
        "machine": machine(),
    }
    figures: dict[str, Any] = {}
    scratch: list[str] = []  # topics and keyspaces created (and removed) by this run
    result["scratch"] = scratch
    area = Area.create(base)
    scratch += area.names()
    try:
        _say(f"producing {n} events to {area.settings.kafka_input_topic} ...")
        area.produce(n, seed)

        elapsed, values = read_partitions(area.settings)
        figures["kafka_read_events_per_s"] = n / elapsed
        figures["json_parse_events_per_s"] = n / json_parse(values, max_messages, keep=True)
        figures["json_parse_discarding_events_per_s"] = n / json_parse(
            values, max_messages, keep=False
        )
        figures["flatten_events_per_s"] = n / flatten_all(values, max_messages)
        figures["client_cpu_us_per_event_outside_driver"] = client_cpu(
            area.settings, Chunking(base.chunk_messages, base.chunk_bytes,
                                    base.dead_letter_bytes)) / n * 1e6

        params = [p for batch in batches(values, max_messages)
                  for p in bind_parameters(flatten(enumerate(batch)).rows)]
        ceiling, sweep = write_ceiling(area.settings, params, io.batch_rows)
        for count in range(2, processes + 1):  # the drain's P processes write at once
            for concurrency in CONCURRENCY_SWEEP:
                point = write_ceiling_processes(area.settings, values, io.batch_rows,
                                                concurrency, count)
                sweep.append(point)
                ceiling = max(ceiling, point["rows_per_s"])
                _say(f"  ceiling sweep: {point['form']:40} {count} processes, in flight "
                     f"{concurrency:>3} each: {point['rows_per_s']:>7} rows/s")
        del values
        figures["cassandra_write_ceiling_rows_per_s"] = ceiling
        result["ceiling_sweep"] = sweep
        figures["baseline_rows_per_s"] = baseline(area.settings, params)
        result["driver"]["costs"] = driver_cost(area.settings, params)
        del params
        # Leave the table empty again for the real run.
        _truncate(area.settings)

        _say("draining through Dagster ...")
        main = e2e(area.settings, n, max_messages, processes)
        figures["e2e_events_per_s"] = main["events_per_s"]
        figures["peak_rss_mb"] = main["peak_rss_mb"]
        result["e2e"] = {str(n): main}
    finally:
        area.cleanup()

    if production_path:
        from .stack.postgres import postgres_server

        _say(f"fixed cost: {FIXED_COST_RUNS} runs of {FIXED_COST_EVENTS} events, sqlite ...")
        result["fixed_cost"] = {"sqlite": fixed_cost(base, seed + 1, scratch)}
        with postgres_server() as postgres:
            _say("fixed cost: the same on PostgreSQL ...")
            result["fixed_cost"]["postgres"] = fixed_cost(base, seed + 2, scratch, postgres)
            result["daemon"] = daemon_path(base, daemon_events, seed + 3, scratch, postgres)
        figures["dagster_fixed_cost_s_per_run"] = result["fixed_cost"]["sqlite"]["wall_s_per_run"]
        figures["dagster_fixed_cost_s_per_run_postgres"] = \
            result["fixed_cost"]["postgres"]["wall_s_per_run"]
        figures["e2e_daemon_events_per_s"] = result["daemon"]["events_per_s"]
        figures["run_start_to_first_read_s"] = result["daemon"]["run_start_to_first_read_s_max"]

    if scale:
        for size in (max(1, n // 10), n * 10):
            area = Area.create(base)
            scratch += area.names()
            try:
                _say(f"scale: producing {size} events ...")
                area.produce(size, seed + size)
                _say(f"scale: draining {size} events through Dagster ...")
                result["e2e"][str(size)] = e2e(area.settings, size, max_messages, processes)
            finally:
                area.cleanup()

    result["figures"] = {k: v if v is None else round(v, 1 if v >= 100 else 3)
                         for k, v in figures.items()}
    result["ratios"], result["targets_met"] = _ratios(figures, result["e2e"], n)
    result["targets"] = TARGETS
    result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _say()
    _say(table(result))
    _say(f"\nwritten to {out}")
    return result


def parallel(per_partition: int, out: Path, max_partitions: int = 4, seed: int = 42
             ) -> dict[str, Any]:
    """How throughput grows with partitions drained by parallel runs: for P = 1..4, a topic of
    P partitions holding P x per_partition events, drained by `drain --processes P` (one run
    per partition at a time, the P runs at once, as the daemon's queue would run them)."""
    base = Settings.from_env()
    result: dict[str, Any] = {"per_partition": per_partition, "max_messages": base.max_messages,
                              "machine": machine(), "points": []}
    for count in range(1, max_partitions + 1):
        area = Area.create(base, partitions=count)
        try:
            _say(f"parallel: {count} partitions, producing {count * per_partition} events ...")
            area.produce(count * per_partition, seed + count)
            point = e2e(area.settings, count * per_partition, base.max_messages, count)
        finally:
            area.cleanup()
        point["partitions"] = count
        point["speedup"] = round(point["events_per_s"] / result["points"][0]["events_per_s"], 2) \
            if result["points"] else 1.0
        result["points"].append(point)
        _say(f"  {count} partitions in {count} processes: {point['events_per_s']:,.0f} events/s "
             f"(x{point['speedup']}), peak RSS {point['peak_rss_mb']:.0f} MB")
    result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    m = result["machine"]
    lines = [f"{m['nproc']} x {m['cpu']}, {m['ram_gb']} GB RAM, load {m['load_avg_at_start']} "
             f"-> {result['load_avg_at_end']}; {m['servers']}", "",
             "| partitions = processes | events | seconds | events/s | speed-up | peak RSS MB |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {p['partitions']} | {p['events']:,} | {p['seconds']:.1f} | "
              f"{p['events_per_s']:,.0f} | {p['speedup']:.2f} | {p['peak_rss_mb']:.0f} |"
              for p in result["points"]]
    _say("\n".join(lines))
    _say(f"\nwritten to {out}")
    return result


def _truncate(settings: Settings) -> None:
    cluster = cql(settings)
    try:
        cluster.connect().execute(
            f"TRUNCATE {settings.cassandra_keyspace}.{settings.cassandra_table}", timeout=60
        )
    finally:
        cluster.shutdown()


def _ratios(
    figures: dict[str, float], runs: dict[str, dict[str, Any]], n: int
) -> tuple[dict[str, float], dict[str, bool]]:
    """The measured value of every target this run has, and whether each is met."""
    ceiling = figures["cassandra_write_ceiling_rows_per_s"]
    ratios = {
        "e2e_vs_write_ceiling": figures["e2e_events_per_s"] / ceiling,
        "e2e_vs_baseline": figures["e2e_events_per_s"] / figures["baseline_rows_per_s"],
        "flatten_vs_json_parse": figures["flatten_events_per_s"]
        / figures["json_parse_events_per_s"],
        "flatten_vs_json_parse_discarding": figures["flatten_events_per_s"]
        / figures["json_parse_discarding_events_per_s"],
    }
    if "e2e_daemon_events_per_s" in figures:
        ratios["e2e_daemon_vs_write_ceiling"] = figures["e2e_daemon_events_per_s"] / ceiling
    for key in ("dagster_fixed_cost_s_per_run", "dagster_fixed_cost_s_per_run_postgres",
                "run_start_to_first_read_s", "client_cpu_us_per_event_outside_driver"):
        if figures.get(key) is not None:
            ratios[key] = figures[key]
    small, big = runs.get(str(max(1, n // 10))), runs.get(str(n * 10))
    if small and big:
        ratios["peak_rss_10n_vs_n"] = big["peak_rss_mb"] / runs[str(n)]["peak_rss_mb"]
        ratios["peak_rss_10n_mb"] = big["peak_rss_mb"]
        costs = [r["cost_us_per_event"] for r in (small, runs[str(n)], big)]
        ratios["cost_per_event_spread_n10_to_10n"] = max(costs) / min(costs)
    met = {key: bound(ratios[key], limit) for key, (bound, limit) in TARGET_BOUNDS.items()
           if key in ratios}
    # Measured but without a value (e.g. no run's first read was recorded): not met.
    met.update({key: False for key in TARGET_BOUNDS if key in figures and figures[key] is None})
    return {k: round(v, 3) for k, v in ratios.items()}, met


def table(result: dict[str, Any]) -> str:
    f, m = result["figures"], result["machine"]
    lines = [
        f"events {result['events']}, {result['partitions']} partitions, max_messages "
        f"{result['max_messages']}; {m['nproc']} x {m['cpu']}, {m['ram_gb']} GB RAM, "
        f"load {m['load_avg_at_start']} -> {result['load_avg_at_end']}",
        "",
        "| measure | per second |",
        "|---|---:|",
    ]
    for key in (
        "json_parse_events_per_s", "json_parse_discarding_events_per_s", "flatten_events_per_s",
        "kafka_read_events_per_s", "cassandra_write_ceiling_rows_per_s", "baseline_rows_per_s",
        "e2e_events_per_s", "e2e_daemon_events_per_s",
    ):
        if key in f:
            lines.append(f"| {key} | {f[key]:,.0f} |")
    lines += ["", "| events | runs | seconds | events/s | us/event | peak RSS MB |",
              "|---:|---:|---:|---:|---:|---:|"]
    for size, r in sorted(result["e2e"].items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {int(size):,} | {r['runs']} | {r['seconds']:.1f} | {r['events_per_s']:,.0f} | "
            f"{r['cost_us_per_event']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    costs = result["driver"].get("costs")
    if costs:
        lines += ["", "| driver: protocol, event loop | rows/s | sending us/row | "
                  "driver threads us/row |", "|---|---:|---:|---:|"]
        lines += [f"| v{c['protocol']}, {c['event_loop']} | {c['rows_per_s']:,} | "
                  f"{c['sending_cpu_us_per_row']:.1f} | {c['driver_threads_cpu_us_per_row']:.1f} |"
                  if "error" not in c else
                  f"| v{c['protocol']}, {c['event_loop']} | {c['error'][:70]} | | |"
                  for c in costs]
    if "daemon" in result:
        d = result["daemon"]
        lines += ["", f"daemon path: {d['events']:,} events, {d['runs']} runs "
                  f"({d['failed_runs']} failed) in {d['seconds']:.1f} s; RUN_START to first read "
                  f"{d['run_start_to_first_read_s_mean']} s on average, "
                  f"{d['run_start_to_first_read_s_max']} s at most"]
    lines += ["", "| target | wanted | measured | met |", "|---|---|---:|---|"]
    for key, wanted in TARGETS.items():
        if key in result["ratios"]:
            met = "yes" if result["targets_met"][key] else "NO"
            lines.append(f"| {key} | {wanted} | {result['ratios'][key]:.2f} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--scale", action="store_true", help="also drain N/10 and 10N")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--processes", type=int, default=1,
                        help="drain with this many processes (the ceiling sweeps 1..P)")
    parser.add_argument("--parallel", action="store_true",
                        help="instead: throughput of 1..4 partitions drained by parallel runs, "
                        "EVENTS/4 events per partition")
    parser.add_argument("--no-production-path", action="store_true",
                        help="leave out the cost per run and the daemon path (they need "
                        "PostgreSQL, which `make deps` installs)")
    parser.add_argument("--cluster", action="store_true",
                        help="against the cluster stack (`make cluster`): its variables where "
                        "unset (docs/deploying.md)")
    args = parser.parse_args(argv)
    if args.cluster:
        from .stack.cluster import apply_cluster_defaults

        apply_cluster_defaults()
    if args.parallel:
        parallel(max(1, args.events // 4), args.out)
    else:
        run(args.events, args.scale, args.out, processes=args.processes,
            production_path=not args.no_production_path)
    return 0

if __name__ == "__main__":
    sys.exit(main())
