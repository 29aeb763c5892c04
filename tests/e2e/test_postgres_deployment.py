"""The production deployment of deploy/: a real PostgreSQL, and `dagster-daemon` and
`dagster-webserver` as two processes on that instance, observed through the GraphQL API.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from programuser_dagster.run_tags import PARTITION_TAG
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO, free_port, settings_env
from tests.support.pipeline import event, offsets, produce

pytestmark = pytest.mark.stack


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: `make deps` installs Debian's postgresql.")
    return found[-1].parent


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; CI runs as root, so the server runs as `postgres`.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL server on a free port, with a database `dagster`."""
    bin_dir, port = _pg_bin(), free_port()
    data = Path(tempfile.mkdtemp(prefix="programuser-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data / "db"), "-A", "trust",
                      "-U", "postgres"]),
        check=True, capture_output=True,
    )
    server = subprocess.Popen(
        _as_postgres([str(bin_dir / "postgres"), "-D", str(data / "db"), "-p", str(port),
                      "-k", str(data), "-c", "listen_addresses=127.0.0.1"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            assert server.poll() is None, "PostgreSQL exited during start-up"
            assert time.monotonic() < deadline, "PostgreSQL did not answer within 60 s"
            time.sleep(0.5)
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
             "dagster"],
            check=True, capture_output=True,
        )
        yield {
            "DAGSTER_PG_USERNAME": "postgres",
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_DB": "dagster",
            "DAGSTER_PG_PORT": str(port),
        }
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(data, ignore_errors=True)


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
    # deploy/dagster.yaml, with the test server's port.
    config = (REPO / "deploy" / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(
        config.replace("port: 5432", f"port: {postgres['DAGSTER_PG_PORT']}")
    )
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
