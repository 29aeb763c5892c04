"""Helpers of the fault and fence tests (e2e): waiting, run records, environments, stopping.

Used by tests under tests/e2e/ (test_faults.py, test_fence.py and others); no test lives here.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from programuser_dagster.ingest.job import JOB_NAME
from programuser_dagster.ingest.run_tags import COMMITTED, OUTCOME_TAG
from programuser_dagster.ingest.run_tags import PARTITION_TAG as PARTITION_TAG
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO as REPO  # the repository root, defined once
from tests.support.pipeline import cli_env, temporary_env


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0, every: float = 0.1):
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def committed_report(instance: DagsterInstance, run_id: str) -> dict[str, Any] | None:
    """The counts of the range a run committed (its materialization), or None."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        mat = entry.dagster_event.event_specific_data.materialization
        return {k: v.value for k, v in mat.metadata.items()}
    return None


@contextlib.contextmanager
def job_env(s: Settings, **extra: str) -> Iterator[None]:
    """The environment a reconstructed job (re-execution, subprocess) builds its resources from."""
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "KAFKA_INPUT_TOPIC": s.kafka_input_topic,
        "KAFKA_GROUP_ID": s.kafka_group_id,
        "KAFKA_DLQ_TOPIC": s.kafka_dlq_topic,
        "KAFKA_DELIVERY_TIMEOUT_S": str(s.kafka_delivery_timeout_s),
        "CASSANDRA_PORT": str(s.cassandra_port),
        "CASSANDRA_KEYSPACE": s.cassandra_keyspace,
        **extra,
    }
    with temporary_env(values):
        yield


def env_for(s: Settings, home: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment for the test's topics, keyspace and Dagster home."""
    return cli_env(s, home, **extra)


def runs_of(instance: DagsterInstance, partition: int = 0) -> list[Any]:
    return [
        r.dagster_run
        for r in instance.get_run_records(
            RunsFilter(job_name=JOB_NAME, tags={PARTITION_TAG: str(partition)})
        )
    ]


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process we started in its own session, with the children it started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def successful_ranges(instance: DagsterInstance, partition: int = 0) -> list[dict[str, Any]]:
    """The reports of every run of a partition that committed its range, in offset order.

    A superseded run committed nothing; an empty range commits nothing: neither is a range.
    """
    reports = []
    for record in instance.get_run_records(
        RunsFilter(
            job_name=JOB_NAME,
            statuses=[DagsterRunStatus.SUCCESS],
            tags={PARTITION_TAG: str(partition), OUTCOME_TAG: COMMITTED},
        )
    ):
        md = committed_report(instance, record.dagster_run.run_id)
        assert md is not None, record.dagster_run.run_id
        reports.append(md)
    return sorted(reports, key=lambda md: (md["start_offset"], md["end_offset"]))


def assert_ranges_tile(
    instance: DagsterInstance, start: int, end: int, partition: int = 0
) -> list[dict[str, Any]]:
    """Successful runs' ranges cover [start, end) exactly once, each one balanced."""
    reports = successful_ranges(instance, partition)
    for md in reports:
        assert md["messages_read"] == (
            md["messages_written"] + md["messages_skipped"] + md["messages_dead_lettered"]
        ), md
    ranges = [(md["start_offset"], md["end_offset"]) for md in reports]
    non_empty = [r for r in ranges if r[1] > r[0]]
    assert non_empty, ranges
    assert non_empty[0][0] == start, ranges
    assert non_empty[-1][1] == end, ranges
    for (_, prev_end), (next_start, _) in itertools.pairwise(non_empty):
        assert next_start == prev_end, f"gap or overlap in {ranges}"
    return reports


def entry_text(entry: Any) -> str:
    """What an event-log entry says (a log line's message, or a Dagster event's)."""
    event = entry.dagster_event
    return " ".join(t for t in (entry.user_message, event and event.message) if t)


def logged(instance: DagsterInstance, run_id: str, text: str) -> bool:
    return any(text in entry_text(e) for e in instance.all_logs(run_id))


class RunInThread:
    """Run `target` in a thread (a job's execution) while the test injects a fault."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def body() -> None:
            try:
                self.result = target()
            except BaseException as exc:  # reported by join()
                self.error = exc

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 300.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not finish"
        if self.error is not None:
            raise self.error
        return self.result
