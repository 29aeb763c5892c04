"""The production deployment of deploy/: a real PostgreSQL, and `dagster-daemon` and
`dagster-webserver` as two processes on that instance, observed through the GraphQL API.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devtools.stack.postgres import deploy_yaml
from programuser_dagster.ingest.run_tags import PARTITION_TAG
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO, free_port, settings_env
from tests.support.pipeline import event, offsets, produce

# `make test` runs tests side by side; this module's stay on one worker so that
# its PostgreSQL server starts once.
pytestmark = [pytest.mark.stack, pytest.mark.xdist_group("test_postgres_deployment")]



def _graphql(port: int, query: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


RUNS_QUERY = """
{ runsOrError(filter: {pipelineName: "program_user_info"}) {
    ... on Runs { results { runId status startTime endTime tags { key value } } } } }
"""


def test_daemon_and_webserver_on_postgres_drain_four_partitions_in_parallel(
    postgres: dict[str, str], kafka_topics: Settings, tmp_path: Path
) -> None:
    s = kafka_topics
    home = tmp_path / "dagster_home"
    home.mkdir()
    # deploy/dagster.yaml itself: the server's address and port come from DAGSTER_PG_*.
    (home / "dagster.yaml").write_text(deploy_yaml(REPO))
    env = {**os.environ, **postgres, **settings_env(s), "DAGSTER_HOME": str(home),
           "PROGRAMUSER_SENSOR_INTERVAL_S": "5"}
    for p in range(4):
        produce(s, [event(f"p{p}", f"u{i}") for i in range(50)], partition=p)

    web_port = free_port()
    workspace = str(REPO / "workspace.yaml")
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("daemon", "webserver")}
    procs = [
        subprocess.Popen([str(REPO / ".venv/bin/dagster-daemon"), "run", "-w", workspace],
                         cwd=home, env=env, stdout=logs["daemon"], stderr=subprocess.STDOUT),
        subprocess.Popen([str(REPO / ".venv/bin/dagster-webserver"), "-w", workspace,
                          "-h", "127.0.0.1", "-p", str(web_port)],
                         cwd=home, env=env, stdout=logs["webserver"], stderr=subprocess.STDOUT),
    ]
    try:
        deadline = time.monotonic() + 300
        while not all(offsets(s, p).committed == 50 for p in range(4)):
            assert all(proc.poll() is None for proc in procs), (
                (tmp_path / "daemon.log").read_text()[-3000:]
            )
            assert time.monotonic() < deadline, "the partitions were not drained in 5 min"
            time.sleep(2)
        # The last commit comes a moment before its run is marked finished.
        while True:
            runs = _graphql(web_port, RUNS_QUERY)["runsOrError"]["results"]
            if all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
                break
            assert time.monotonic() < deadline, runs
            time.sleep(1)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        for log in logs.values():
            log.close()

    assert runs and {r["status"] for r in runs} == {"SUCCESS"}
    spans = [
        (next(t["value"] for t in r["tags"] if t["key"] == PARTITION_TAG),
         r["startTime"], r["endTime"])
        for r in runs
    ]
    assert sorted({p for p, _, _ in spans}) == ["0", "1", "2", "3"]
    # At most one run per partition at any moment...
    for part in "0123":
        mine = sorted((a, b) for p, a, b in spans if p == part)
        assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(mine)), mine
    # ...and runs of different partitions did run at the same time.
    overlapping = [
        (p1, p2) for i, (p1, a1, b1) in enumerate(spans) for (p2, a2, b2) in spans[i + 1:]
        if p1 != p2 and a1 < b2 and a2 < b1
    ]
    assert overlapping, spans
