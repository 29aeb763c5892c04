"""Throughput with 1 to 4 run containers at once: the deploy/docker/ deployment (the code server
and each run as containers of the run image, `dagster-daemon` with deploy/docker/dagster.yaml
on PostgreSQL) draining a backlog spread over K partitions, so that K runs, each in its own
container, drain it side by side.

For each K the daemon is started and warmed up (a few events per partition drained), then
EVENTS events are produced over the K partitions, and the clock runs from the end of producing
until every committed offset equals its high-water mark, as the bench's daemon path does.
`make bench-docker` (against the local stack); the results go to bench-docker-results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from programuser_dagster.ingest.job import JOB_NAME
from programuser_dagster.ingest.run_tags import PARTITION_TAG
from programuser_dagster.settings import Settings

from .bench import (
    DAEMON_WARM_EVENTS,
    Area,
    _first_read_at,
    _instance,
    _say,
    _wait_drained,
    _wait_runs_ended,
    machine,
)
from .stack import docker
from .stack.docker_deployment import CONTAINER_TAG, DockerDeployment, pipeline_env
from .stack.postgres import fresh_database, postgres_server

SENSOR_INTERVAL_S = 5


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most runs in progress at one moment."""
    moments = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = most = 0
    for _, step in moments:
        now += step
        most = max(most, now)
    return most


def measure(engine: docker.Engine, image: str, postgres: dict[str, str], base: Settings,
            containers: int, events: int, seed: int) -> dict[str, Any]:
    from dagster import DagsterEventType, RunsFilter

    home = Path(tempfile.mkdtemp(prefix="programuser-bench-docker-"))
    area = Area.create(base, partitions=containers)
    try:
        pg = fresh_database(postgres, f"docker_{uuid.uuid4().hex[:8]}")
        pipeline = pipeline_env(area.settings,
                                PROGRAMUSER_SENSOR_INTERVAL_S=str(SENSOR_INTERVAL_S))
        with DockerDeployment(engine, image, pipeline, pg, home,
                              label=f"programuser-dagster/bench={uuid.uuid4().hex[:8]}") as dep:
            assert dep.daemon is not None
            _say(f"{containers} container(s): warming up ({DAEMON_WARM_EVENTS} events) ...")
            area.produce(DAEMON_WARM_EVENTS, seed)
            _wait_drained(area.settings, dep.daemon, dep.log)
            warm_until = time.time()
            _say(f"{containers} container(s): producing {events} events ...")
            area.produce(events, seed + 1, made_first=True)
            produced = time.time()
            _wait_drained(area.settings, dep.daemon, dep.log)
            seconds = time.time() - produced
            with _instance(home, pg) as instance:
                _wait_runs_ended(instance)
                records = [r for r in instance.get_run_records(RunsFilter(job_name=JOB_NAME))
                           if r.create_timestamp.timestamp() > warm_until]
                first_reads = [_first_read_at(instance, r.dagster_run.run_id, DagsterEventType)
                               for r in records]
    finally:
        area.cleanup()
        shutil.rmtree(home, ignore_errors=True)
    spans = [(r.start_time, r.end_time) for r in records if r.start_time and r.end_time]
    waits = [r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time]
    to_read = [f - r.start_time for r, f in zip(records, first_reads, strict=True)
               if f is not None and r.start_time]
    return {
        "run_containers": containers, "partitions": containers, "events": events,
        "seconds": round(seconds, 3), "events_per_s": round(events / seconds, 1),
        "runs": len(records),
        "containers_used": len({r.dagster_run.tags.get(CONTAINER_TAG) for r in records}),
        "most_runs_at_once": _most_at_once(spans),
        "run_statuses": dict(Counter(r.dagster_run.status.value for r in records)),
        "partitions_run": sorted({r.dagster_run.tags.get(PARTITION_TAG) for r in records}),
        "created_to_started_s_mean": round(sum(waits) / len(waits), 2) if waits else None,
        "started_to_first_read_s_mean": round(sum(to_read) / len(to_read), 2)
        if to_read else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.container_bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--max-containers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench-docker-results.json"))
    args = parser.parse_args(argv)
    base = Settings.from_env()
    results: list[dict[str, Any]] = []
    with docker.engine() as engine, postgres_server() as postgres:
        began = time.monotonic()
        image = docker.build_image()
        _say(f"image {image} ready in {time.monotonic() - began:.1f} s "
             f"({docker.image_size_bytes(image) / 1e6:.0f} MB)")
        for k in range(1, args.max_containers + 1):
            results.append(measure(engine, image, postgres, base, k, args.events, seed=k))
            _say(json.dumps(results[-1]))
    out = {"machine": machine(), "sensor_interval_s": SENSOR_INTERVAL_S, "results": results}
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    _say("")
    _say("| run containers | events | seconds | events/s | runs | most at once | "
         "created→started s | started→first read s |")
    _say("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        _say(f"| {r['run_containers']} | {r['events']:,} | {r['seconds']} | "
             f"{r['events_per_s']:,.0f} | {r['runs']} | {r['most_runs_at_once']} | "
             f"{r['created_to_started_s_mean']} | {r['started_to_first_read_s_mean']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
