"""A real `dagster dev` (webserver + daemon, sensor on) in a subprocess, for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

from devtools.stack.postgres import free_port
from programuser_dagster.ingest.instance import open_instance
from programuser_dagster.settings import Settings

REPO = Path(__file__).resolve().parents[2]
UNFINISHED = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, *IN_PROGRESS_RUN_STATUSES]


def settings_env(s: Settings) -> dict[str, str]:
    """The environment that points the deployed code at a test's own topics and keyspace, with
    the test's trigger policy."""
    return {
        "KAFKA_INPUT_TOPIC": s.kafka_input_topic,
        "KAFKA_GROUP_ID": s.kafka_group_id,
        "KAFKA_DLQ_TOPIC": s.kafka_dlq_topic,
        "CASSANDRA_KEYSPACE": s.cassandra_keyspace,
        "PROGRAMUSER_TRIGGER_LAG_RECORDS": str(s.trigger_lag_records),
        "PROGRAMUSER_TRIGGER_AGE_S": str(s.trigger_age_s),
    }


def create_storage(home: Path) -> None:
    """Create the home's sqlite storage now, as the project's own processes do (under the home's
    lock: ingest/instance.py): a daemon or `dagster dev` and a test opening a fresh home at once
    can record two schema versions, and every later open of it fails."""
    with open_instance(home):
        pass


@contextmanager
def dagster_dev(
    home: Path, log_path: Path, env: Mapping[str, str], port: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `dagster dev` on this repo's workspace with DAGSTER_HOME=home (given the repo's
    dagster.yaml), all output to log_path; interrupted like Ctrl-C at the end."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    create_storage(home)
    full_env = {**os.environ, "DAGSTER_HOME": str(home), **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(REPO / ".venv/bin/dagster"), "dev", "-w", str(REPO / "workspace.yaml"),
             "-h", "127.0.0.1", "-p", str(port or free_port())],
            cwd=home, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def settle_runs(home: Path, dev: subprocess.Popen[bytes], log: Path, job: str,
                limit_s: float = 120) -> int:
    """Wait (bounded) until no run of `job` is queued or in progress: a test's last commit is
    not the end of its run, and leaving dagster_dev interrupts the runs still finishing.
    Returns how many were unfinished when called."""
    deadline = time.monotonic() + limit_s
    first = None
    with DagsterInstance.from_config(str(home)) as instance:
        while unfinished := instance.get_run_records(RunsFilter(
                job_name=job, statuses=UNFINISHED)):
            first = len(unfinished) if first is None else first
            assert dev.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                f"{len(unfinished)} runs still unfinished {limit_s:.0f} s after the lag reached 0")
            time.sleep(1)
    return first or 0
