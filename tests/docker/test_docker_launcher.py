"""Runs in containers: the shipped deploy/docker/ files on a real Docker engine.

The project's own `dockerd` (devtools/stack/docker.py, started here unless one of
ours answers already) builds deploy/Dockerfile; the code location runs as a container of that
image (`dagster api grpc`), and `dagster-daemon` on this machine, with deploy/docker/dagster.yaml
on a real PostgreSQL, launches each run as a new container of it (DockerRunLauncher). Every
container uses host networking (DAGSTER_DOCKER_NETWORK=host), so all traffic stays on loopback.
`make test-docker` runs this module (CI too); `make test` leaves it out.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.scheduler.instigation import InstigatorStatus

from devtools.stack import docker
from devtools.stack.docker_deployment import (
    CONTAINER_TAG,
    WORKSPACE,
    DockerDeployment,
    pipeline_env,
)
from programuser_dagster.ingest.fault_pauses import PAUSE_BEFORE_COMMIT_ENV
from programuser_dagster.ingest.job import JOB_NAME
from programuser_dagster.ingest.run_tags import PARTITION_TAG
from programuser_dagster.settings import Settings, temporary_env
from tests.support.pipeline import all_rows, event, expected_rows, offsets, produce

# A cold first build (debootstrap, then pip) takes ~2 minutes of the test's setup.
pytestmark = [pytest.mark.stack, pytest.mark.docker, pytest.mark.timeout(1500)]

SENSOR = "kafka_backlog_sensor"
PAUSE_S = 8  # each run waits this long before its commit: the window to kill its container
BACKLOG = 300  # events per partition before the daemon starts
RUN_MESSAGES = 150  # PROGRAMUSER_MAX_MESSAGES: each partition's backlog takes two runs


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.Engine]:
    """The project's Docker engine; one started here is stopped at the end, leaving nothing."""
    try:
        with docker.engine() as running:
            yield running
    except docker.DockerMissing as exc:
        pytest.fail(str(exc))
    if running.started:
        assert docker.leftovers() == [], "the engine left processes or mounts behind"


@pytest.fixture(scope="module")
def image(engine: docker.Engine) -> str:
    """deploy/Dockerfile built now (seconds when its layers are cached)."""
    return docker.build_image()



def _runs(instance: DagsterInstance, partition: int | None = None) -> list[Any]:
    tags = {} if partition is None else {PARTITION_TAG: str(partition)}
    return list(reversed(instance.get_run_records(RunsFilter(job_name=JOB_NAME, tags=tags))))


def _wait(what: str, check: Any, deployment: DockerDeployment, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        deployment.check_alive()
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.25)
    return value


def _paused_run(instance: DagsterInstance, partition: int, after: set[str]) -> Any:
    """A new run of `partition` that is waiting before its commit (the test's fault hook)."""
    for record in _runs(instance, partition):
        run = record.dagster_run
        if run.run_id not in after and any(
            "Test fault hook" in (e.message or "") for e in instance.all_logs(run.run_id)
        ):
            return run
    return None


def _status(instance: DagsterInstance, run_id: str) -> DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def _container_state(container: str) -> dict[str, Any]:
    return json.loads(docker.docker("inspect", "--format", "{{json .State}}", container).stdout)


def _monitoring_message(instance: DagsterInstance, run_id: str) -> str:
    [failure] = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    return failure.message or ""


def _reexecute_from_failure(
    instance: DagsterInstance, parent_id: str, deployment: DockerDeployment
) -> str:
    """What the UI's "Re-execute from failure" does: a new run of the failed steps, submitted
    to the queue, which the daemon launches as a new container."""
    from dagster._core.execution.plan.resume_retry import ReexecutionStrategy
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    target = WorkspaceFileTarget(paths=[str(WORKSPACE)])
    with (temporary_env(deployment.code_server_env()),
          WorkspaceProcessContext(instance, target) as process):
        request = process.create_request_context()
        location = request.get_code_location("programuser_dagster")
        [repository] = location.get_repositories().values()
        run = instance.create_reexecuted_run(
            request_context=request, parent_run=instance.get_run_by_id(parent_id),
            code_location=location, remote_job=repository.get_full_job(JOB_NAME),
            strategy=ReexecutionStrategy.FROM_FAILURE, use_parent_run_tags=True,
        )
        instance.submit_run(run.run_id, request)
        return run.run_id


def _produced(s: Settings, events: list[dict[str, Any]], partition: int) -> list[bytes | None]:
    """Produce `events` to `partition`; returns their values, for the expected table."""
    produce(s, events, partition=partition)
    return [json.dumps(e).encode() for e in events]


def _kill_paused_run(instance: DagsterInstance, partition: int, seen: set[str],
                     deployment: DockerDeployment) -> tuple[Any, float]:
    """`docker kill` of the container of the new run of `partition` (none of `seen`) once it
    waits before its commit; returns the run and when it was killed."""
    victim = _wait(f"a run of partition {partition} paused before its commit",
                   lambda: _paused_run(instance, partition, seen), deployment)
    killed_at = time.monotonic()
    docker.docker("kill", victim.tags[CONTAINER_TAG])
    return victim, killed_at


def _sensor_status(instance: DagsterInstance) -> InstigatorStatus | None:
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == SENSOR:
            return state.status
    return None


def _stop_sensor(instance: DagsterInstance, deployment: DockerDeployment) -> None:
    """`dagster sensor stop`, until the sensor stays stopped for a whole interval: a tick that
    began before the stop writes the sensor's state back as it found it (Dagster 1.13's sensor
    daemon marks the state it loaded at the tick's start), which turns the sensor on again."""
    for _ in range(5):
        with suppress(RuntimeError):  # refused when it is stopped already
            deployment.dagster("sensor", "stop", SENSOR)
        time.sleep(7)  # more than the 5 s interval and a tick
        if _sensor_status(instance) == InstigatorStatus.STOPPED:
            return
    raise AssertionError(f"{SENSOR} did not stay stopped: {_sensor_status(instance)}")


def _spans(records: list[Any]) -> list[tuple[str, float, float]]:
    return [(r.dagster_run.tags[PARTITION_TAG], r.start_time, r.end_time) for r in records]


def test_the_docker_launcher_drains_partitions_in_containers_and_survives_a_killed_run(
    engine: docker.Engine, image: str, postgres: dict[str, str], kafka_topics: Settings,
    cassandra_session: Any, tmp_path: Path,
) -> None:
    s = kafka_topics
    values: list[bytes | None] = []
    for p in range(4):
        values += _produced(s, [event(f"p{p}", f"u{i}") for i in range(BACKLOG)], p)
    pipeline = pipeline_env(
        s, CASSANDRA_USERNAME=os.environ["CASSANDRA_USERNAME"],
        PROGRAMUSER_SENSOR_INTERVAL_S="5", PROGRAMUSER_MAX_MESSAGES=str(RUN_MESSAGES))

    began = time.monotonic()
    # For this test only, every run pauses before its commit: the window to kill it.
    deployment = DockerDeployment(
        engine, image, pipeline, postgres, tmp_path,
        run_env=[f"{PAUSE_BEFORE_COMMIT_ENV}={PAUSE_S}"],
        label=f"programuser-dagster/test={s.kafka_group_id}")
    with (temporary_env(postgres), deployment,
          DagsterInstance.from_config(str(tmp_path)) as instance):
        serving = time.monotonic()
        # 1. The backlog: one container per run, one run per partition at a time.
        _wait("the backlog committed on every partition",
              lambda: all(offsets(s, p).committed == BACKLOG for p in range(4)), deployment)
        drained_s = time.monotonic() - serving
        _wait("the backlog's runs ended", lambda: all(
            r.dagster_run.is_finished for r in _runs(instance)), deployment, timeout=60)
        backlog = _runs(instance)
        assert {r.dagster_run.status for r in backlog} == {DagsterRunStatus.SUCCESS}
        containers = [r.dagster_run.tags.get(CONTAINER_TAG) for r in backlog]
        assert all(containers) and len(set(containers)) == len(backlog)
        for c in containers:
            assert _container_state(c)["ExitCode"] == 0
        spans = _spans(backlog)
        for part in "0123":
            mine = sorted((a, b) for p, a, b in spans if p == part)
            assert len(mine) >= BACKLOG // RUN_MESSAGES, mine  # a range is at most 150
            assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(mine)), mine
        assert any(p1 != p2 and a1 < b2 and a2 < b1  # partitions did drain side by side
                   for (p1, a1, b1), (p2, a2, b2) in itertools.combinations(spans, 2)), spans

        # 2. A run's container killed between its writes and its commit.
        seen = {r.dagster_run.run_id for r in _runs(instance)}
        more = [event("p0", f"late{i}") for i in range(50)]
        values += _produced(s, more, 0)
        victim, killed_at = _kill_paused_run(instance, 0, seen, deployment)
        _wait("the killed run marked failed",
              lambda: _status(instance, victim.run_id) == DagsterRunStatus.FAILURE,
              deployment, timeout=120)
        marked_after_s = [time.monotonic() - killed_at]
        message = _monitoring_message(instance, victim.run_id)
        assert "Detected run worker status" in message and "exited" in message, message
        assert _container_state(victim.tags[CONTAINER_TAG])["ExitCode"] == 137
        assert offsets(s, 0).committed == BACKLOG  # nothing committed by the killed run
        # The sensor's next run (after its back-off) reads the range again and commits it.
        _wait("partition 0 committed by the next run",
              lambda: offsets(s, 0).committed == BACKLOG + len(more), deployment)
        [retry] = [r for r in _runs(instance, 0) if r.dagster_run.run_id not in seen
                   and r.dagster_run.run_id != victim.run_id]
        assert retry.dagster_run.tags[CONTAINER_TAG] != victim.tags[CONTAINER_TAG]

        # 3. Killed again, then the sensor stopped: the failed run's commit step re-executed.
        seen = {r.dagster_run.run_id for r in _runs(instance)}
        last = [event("p1", f"last{i}") for i in range(40)]
        values += _produced(s, last, 1)
        # Killed first, within the pause; while it still counts as started (until run
        # monitoring's next poll) and then in its back-off, the sensor launches no new run.
        victim, killed_at = _kill_paused_run(instance, 1, seen, deployment)
        _stop_sensor(instance, deployment)
        _wait("the second killed run marked failed",
              lambda: _status(instance, victim.run_id) == DagsterRunStatus.FAILURE,
              deployment, timeout=120)
        marked_after_s.append(time.monotonic() - killed_at)
        assert offsets(s, 1).committed == BACKLOG
        assert [r.dagster_run.run_id for r in _runs(instance, 1)
                if r.dagster_run.run_id not in seen] == [victim.run_id]
        resubmitted = time.monotonic()
        rerun_id = _reexecute_from_failure(instance, victim.run_id, deployment)
        _wait("the re-executed run ended",
              lambda: instance.get_run_by_id(rerun_id).is_finished, deployment)
        rerun_s = time.monotonic() - resubmitted
        rerun = instance.get_run_by_id(rerun_id)
        assert rerun.status == DagsterRunStatus.SUCCESS
        assert rerun.step_keys_to_execute == ["commit_offsets"], rerun.step_keys_to_execute
        assert rerun.tags[CONTAINER_TAG] != victim.tags[CONTAINER_TAG]
        assert offsets(s, 1).committed == BACKLOG + len(last)
        # The sensor stayed stopped: the killed run and its re-execution are all there is.
        time.sleep(6)  # more than a sensor interval
        assert {r.dagster_run.run_id for r in _runs(instance, 1)} - seen == {
            victim.run_id, rerun_id}
        assert _sensor_status(instance) == InstigatorStatus.STOPPED

        # Nothing lost: the table is what a clean run makes of every event.
        assert all_rows(cassandra_session, s) == expected_rows(values)
        run_ids = {r.dagster_run.run_id for r in _runs(instance)}
        print(f"\ncode server up {serving - began:.1f} s; backlog of 4 x {BACKLOG} in "
              f"{len(backlog)} containers drained {drained_s:.1f} s after; killed runs "
              f"marked failed by run monitoring after {marked_after_s[0]:.1f} s and "
              f"{marked_after_s[1]:.1f} s; the re-executed commit ran {rerun_s:.1f} s")
    # Every container of the test (code server, runs) is gone.
    for label in (deployment.label, *(f"dagster/run_id={i}" for i in run_ids)):
        assert docker.docker("ps", "--all", "--quiet", "--filter",
                             f"label={label}").stdout.strip() == "", label
