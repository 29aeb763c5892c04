"""Faults (issue 4): what a run does when a server or its own process fails in the middle.

After each fault the table must equal what a clean run over the same messages gives, and over
the successful runs the offset ranges tile (no gap, no overlap) with
read == written + skipped + dead-lettered.

Servers that a test stops or restarts are PRIVATE ones (own ports, own stack dir, started once
per module): the shared Kafka on 9092 and Cassandra on 9042 are used by other test sessions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    ReexecutionOptions,
    RunsFilter,
    execute_job,
)

from devtools import produce as devtools_produce
from devtools.samples import message_key, sample_events
from devtools.stack import (
    cassandra_cluster,
    delete_topics,
    down,
    drop_keyspace,
    ensure_schema,
    ensure_topics,
    stack_dir,
    up,
)
from devtools.stack.launcher import _running_pid
from programuser_dagster.ingest.backlog import plan_backlog
from programuser_dagster.ingest.drain import drain
from programuser_dagster.ingest.fault_pauses import PAUSE_BEFORE_COMMIT_ENV
from programuser_dagster.ingest.job import JOB_NAME, kafka_partitions
from programuser_dagster.ingest.run_tags import (
    END_TAG,
    PARTITION_TAG,
    START_TAG,
    START_TOKEN_TAG,
)
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO, create_storage, free_port
from tests.support.faults import (
    RunInThread,
    assert_ranges_tile,
    entry_text,
    env_for,
    job_env,
    logged,
    runs_of,
    stop_group,
    wait_for,
)
from tests.support.jobs import reconstructable_job_from_env
from tests.support.pipeline import (
    all_rows,
    dead_letters,
    event,
    failure_text,
    offsets,
    produce,
    run_partition,
    temporary_env,
    written_metadata,
)

# `make test` runs tests side by side; this module's stay on one worker so that
# its private Kafka and Cassandra start once.
pytestmark = [pytest.mark.stack, pytest.mark.xdist_group("test_faults")]


# ----------------------------------------------------------------------------- helpers


def produce_records(s: Settings, records: Sequence[tuple[bytes | None, bytes | None]]) -> int:
    """Produce (key, value) records to partition 0, in order."""
    kafka = kafka_resource(s)
    try:
        return devtools_produce.produce_records(kafka, records, partition=0)
    finally:
        kafka.close()


def sample_records(n: int, bad_every: int = 0, seed: int = 7) -> list[tuple[bytes | None, bytes]]:
    """n realistic events; with bad_every=k, every k-th value is not JSON (a dead letter)."""
    out: list[tuple[bytes | None, bytes]] = []
    for i, e in enumerate(sample_events(n, seed=seed)):
        if bad_every and i % bad_every == bad_every - 1:
            out.append((b"bad", b"{not json " + str(i).encode()))
        else:
            out.append((message_key(e), orjson.dumps(e)))
    return out


def _produce_forty_with_bad(s: Settings) -> list[int]:
    """40 events, every 10th not JSON, to partition 0; the offsets of the bad ones."""
    records = sample_records(40, bad_every=10)
    produce_records(s, records)
    return [i for i, (k, _) in enumerate(records) if k == b"bad"]


def run_reports(instance: DagsterInstance, run_id: str) -> list[dict[str, Any]]:
    """What the IO manager recorded for flatten_events in one run (none if it did not run)."""
    entries = instance.all_logs(run_id, of_type=DagsterEventType.HANDLED_OUTPUT)
    return written_metadata(entry.dagster_event for entry in entries)


@pytest.fixture
def scratch(stack: Settings, cassandra_session: Any) -> Iterator[dict[str, list]]:
    """Topics (bootstrap, name) and keyspaces (session, name) a test creates; removed after."""
    made: dict[str, list] = {"topics": [], "keyspaces": []}
    yield made
    for bootstrap, name in made["topics"]:
        with contextlib.suppress(Exception):
            delete_topics(bootstrap, [name])
    for session, name in made["keyspaces"]:
        with contextlib.suppress(Exception):
            drop_keyspace(session, name)


def clean_table(
    s: Settings, session: Any, scratch: dict[str, list], stack: Settings
) -> dict[tuple[str, str], dict[str, Any]]:
    """What a clean run over the same messages gives: a fresh group, dead-letter topic and
    keyspace (on the shared Cassandra), drained on a fresh instance with no fault."""
    from dagster import instance_for_test

    tag = uuid.uuid4().hex[:8]
    clean = dataclasses.replace(
        s,
        kafka_group_id=f"{s.kafka_group_id}-clean-{tag}",
        kafka_dlq_topic=f"{s.kafka_input_topic}.clean-{tag}",
        cassandra_keyspace=f"clean_{tag}",
        cassandra_hosts=stack.cassandra_hosts,
        cassandra_port=stack.cassandra_port,
        kafka_delivery_timeout_s=30.0,
    )
    ensure_topics(clean.kafka_bootstrap_servers, {clean.kafka_dlq_topic: 1},
                  dead_letter={clean.kafka_dlq_topic})
    scratch["topics"].append((clean.kafka_bootstrap_servers, clean.kafka_dlq_topic))
    ensure_schema(session, clean.cassandra_keyspace, clean.cassandra_table)
    scratch["keyspaces"].append((session, clean.cassandra_keyspace))
    with instance_for_test() as inst:
        result = drain(inst, clean, say=lambda _: None)
    assert result.failed == 0 and result.runs, result
    return all_rows(session, clean)


class PrivateStack:
    """A Kafka and a Cassandra of this module's own (free ports, own stack dir), so that a test
    may stop, kill or restart them without disturbing the shared servers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "lib").symlink_to(stack_dir() / "lib")  # same jars, no second Maven copy
        self.env = {
            "PROGRAMUSER_STACK_DIR": str(root),
            "PROGRAMUSER_KAFKA_CONTROLLER_PORT": str(free_port()),
            "PROGRAMUSER_CASSANDRA_STORAGE_PORT": str(free_port()),
        }
        self.settings = Settings(
            kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
            cassandra_port=free_port(),
        )

    @contextlib.contextmanager
    def _here(self) -> Iterator[None]:
        with temporary_env(self.env):
            yield

    def up(self, which: Sequence[str]) -> float:
        t0 = time.monotonic()
        with self._here():
            up(self.settings, which, temporary=True)
        return time.monotonic() - t0

    def down(self, which: Sequence[str]) -> None:
        with self._here():
            down(which)

    def kill(self, name: str) -> None:
        """SIGKILL the server: no clean shutdown, connections drop at once."""
        with self._here():
            pid = _running_pid(name)
        assert pid is not None, f"private {name} is not running"
        os.kill(pid, signal.SIGKILL)
        with self._here():
            wait_for(f"{name} to die", lambda: _running_pid(name) is None, timeout=60)


@pytest.fixture(scope="module")
def private_stack(stack: Settings, tmp_path_factory) -> Iterator[PrivateStack]:
    private = PrivateStack(tmp_path_factory.mktemp("private-stack"))
    try:
        yield private
    finally:
        private.down(["kafka", "cassandra"])
        shutil.rmtree(private.root, ignore_errors=True)  # their data: hundreds of MB


# ----------------------------------------------------------------------------- 4. dead-letter topic


def test_an_unwritable_dead_letter_topic_fails_the_run_in_time_and_commits_nothing(
    instance, make_test_settings, cassandra_session
) -> None:
    s = dataclasses.replace(make_test_settings(), kafka_delivery_timeout_s=5.0)
    produce(s, [event("p", "good"), b"{not json", event("p", "good2")])
    delete_topics(s.kafka_bootstrap_servers, [s.kafka_dlq_topic])  # no auto-creation

    t0 = time.monotonic()
    result = run_partition(instance, s)
    took = time.monotonic() - t0
    assert not result.success
    # delivery.timeout.ms (5 s) + the flush margin (5 s) + the run's own overhead.
    assert took < 60, took
    text = failure_text(result)
    assert "Dead letters could not be delivered: only 0 of 1 reached topic" in text
    assert "Offset 0 of partition 0 was not committed" in text
    assert offsets(s).committed is None
    # Nothing reported as done that was not: no materialization, no accounting check, and the
    # commit step (which delivers the letters) failed.
    types = {e.event_type_value for e in result.all_events}
    assert "ASSET_MATERIALIZATION" not in types
    assert "ASSET_CHECK_EVALUATION" not in types
    assert [e.step_key for e in result.all_events if e.is_step_failure] == ["commit_offsets"]
    print(f"\ndead-letter topic missing: run failed after {took:.1f}s")


# ----------------------------------------------------------------------------- 5. stale run


@pytest.mark.parametrize("how", ["whole", "from_failure"])
def test_a_stale_run_reexecuted_after_newer_runs_changes_nothing(
    how: str, instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u", programName="old"), event("p", "v", programName="old")])
    instance.add_dynamic_partitions(kafka_partitions.name or "", ["0"])
    t = f"{s.cassandra_keyspace}.{s.cassandra_table}"
    # The stale run: the sensor's request for [0, 2), failing on its write (table gone).
    cassandra_session.execute(f"DROP TABLE {t}")
    with job_env(s, CASSANDRA_CREATE_SCHEMA="false"), execute_job(
        reconstructable_job_from_env(),
        instance,
        run_config={"ops": {"flatten_events": {"config": {"end_offset": 2}}}},
        tags={PARTITION_TAG: "0", START_TAG: "0", END_TAG: "2"},
        raise_on_error=False,
    ) as stale:
        assert not stale.success
    ensure_schema(cassandra_session, s.cassandra_keyspace, s.cassandra_table)

    # Newer runs succeed: [0, 2), then a newer value of p/u at offset 2.
    assert run_partition(instance, s).success
    produce(s, [event("p", "u", programName="new")])
    assert run_partition(instance, s).success
    assert offsets(s).committed == 3
    before = all_rows(cassandra_session, s)
    assert before[("p", "u")]["program_name"] == "new"

    options = (
        ReexecutionOptions.from_failure(stale.run_id, instance)
        if how == "from_failure"
        else ReexecutionOptions(parent_run_id=stale.run_id)
    )
    with job_env(s), execute_job(
        reconstructable_job_from_env(),
        instance,
        reexecution_options=options,
        tags={PARTITION_TAG: "0"},
    ) as rerun:
        assert rerun.success
        [md] = run_reports(instance, rerun.run_id)
    # It re-read the committed offset: an empty range, nothing written, nothing moved back.
    assert (md["start_offset"], md["end_offset"], md["messages_read"]) == (3, 3, 0)
    assert offsets(s).committed == 3
    assert all_rows(cassandra_session, s) == before
    assert_ranges_tile(instance, 0, 3)


# ----------------------------------------------------------------------------- 6. two triggers


def test_only_one_run_of_a_partition_at_a_time(
    instance, kafka_topics: Settings, cassandra_session, monkeypatch
) -> None:
    """A real run in flight (held before its commit): the sensor's plan and drain skip it."""
    s = kafka_topics
    produce(s, [event("p", f"u{i}") for i in range(3)], partition=0)
    produce(s, [event("q", "u")], partition=1)
    monkeypatch.setenv(PAUSE_BEFORE_COMMIT_ENV, "8")
    running = RunInThread(lambda: run_partition(instance, s, partition=0))
    [run] = wait_for("the run of partition 0", lambda: runs_of(instance, 0))
    wait_for("the commit pause", lambda: logged(instance, run.run_id, "Test fault hook"))
    monkeypatch.delenv(PAUSE_BEFORE_COMMIT_ENV)

    kafka = kafka_resource(s)
    try:
        plan = plan_backlog(instance, kafka, s)
    finally:
        kafka.close()
    assert [r.partition_key for r in plan.run_requests] == ["1"]
    assert plan.waiting == {0: "lag 3, a run is queued or in progress"}

    lines: list[str] = []
    result = drain(instance, s, say=lines.append)
    assert result.skipped == {0: "a run is queued or in progress in the UI"}
    assert [p for p, ok, _ in result.runs] == [1]
    assert "partition 0: skipped, a run is queued or in progress" in lines

    assert running.join().success
    assert offsets(s, 0).committed == 3
    assert len(runs_of(instance, 0)) == 1
    assert_ranges_tile(instance, 0, 3)


# ----------------------------------------------------------------------------- 3. killed run


def _dlq_offsets(s: Settings, expected: int, committed_only: bool = True) -> list[int]:
    return sorted(int(dict(m.headers())["source_offset"])
                  for m in dead_letters(s, expected, committed_only=committed_only))


def _letters_sent_not_committed(s: Settings, bad: list[int]) -> None:
    """In the commit pause: the letters are in the run's open transaction, which a
    read_committed reader (as the contract says to read) does not see."""
    assert _dlq_offsets(s, len(bad), committed_only=False) == bad
    assert _dlq_offsets(s, 0) == []


def _after_the_kill(
    instance: DagsterInstance,
    s: Settings,
    run_id: str,
    written: dict,
    cassandra_session: Any,
    bad: list[int],
    total: int,
) -> None:
    """Common to both kill tests: the partition is freed, the next run redoes the same range,
    the table is unchanged, and a read_committed reader sees each dead letter once (the killed
    run's transaction was aborted by the next run's)."""
    assert offsets(s).committed is None
    kafka = kafka_resource(s)
    try:
        plan = plan_backlog(instance, kafka, s, now=time.time() + 31)
    finally:
        kafka.close()
    [request] = plan.run_requests
    assert request.tags == {START_TAG: "0", START_TOKEN_TAG: "0", END_TAG: str(total)}

    result = drain(instance, s, say=lambda _: None)
    assert result.failed == 0 and [p for p, _, _ in result.runs] == [0], result
    assert offsets(s).committed == total
    assert all_rows(cassandra_session, s) == written
    assert _dlq_offsets(s, len(bad)) == bad
    assert_ranges_tile(instance, 0, total)
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE


def test_a_drain_killed_between_upsert_and_commit_loses_nothing(
    kafka_topics: Settings, cassandra_session, scratch, stack, tmp_path
) -> None:
    s = kafka_topics
    bad = _produce_forty_with_bad(s)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    out = (tmp_path / "drain.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "programuser_dagster.cli", "drain"],
        env=env_for(s, home, **{PAUSE_BEFORE_COMMIT_ENV: "300"}),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            [run] = wait_for("drain's run", lambda: runs_of(instance, 0), timeout=180)
            wait_for(
                "the commit pause",
                lambda: logged(instance, run.run_id, "Test fault hook"),
                timeout=180,
            )
            # The rows are written and the dead letters sent; the offset is not committed.
            written = all_rows(cassandra_session, s)
            assert len(written) == 36
            _letters_sent_not_committed(s, bad)
            proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            proc.wait(30)
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED

            # The next planner (sensor tick, schedule or drain) notices the dead process.
            kafka = kafka_resource(s)
            try:
                plan = plan_backlog(instance, kafka, s)
            finally:
                kafka.close()
            detected = time.monotonic() - killed_at
            failed = instance.get_run_by_id(run.run_id)
            assert failed.status == DagsterRunStatus.FAILURE
            assert "1 failed attempt(s) at offset 0" in plan.waiting[0]
            print(f"\ndrain killed: run marked failed {detected:.1f}s after the kill")
            assert all_rows(cassandra_session, s) == written == clean_table(
                s, cassandra_session, scratch, stack
            )
            _after_the_kill(instance, s, run.run_id, written, cassandra_session, bad, 40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        out.close()


# ----------------------------------------------------------------------------- 1. Cassandra down


def private_settings(
    private: PrivateStack, scratch: dict[str, list], shared: Settings, cassandra_session: Any,
    *, private_kafka: bool, private_cassandra: bool, partitions: int = 1,
) -> Settings:
    """Fresh topics, group and keyspace, on the private servers where asked."""
    tag = uuid.uuid4().hex[:8]
    kafka = private.settings if private_kafka else shared
    cassandra = private.settings if private_cassandra else shared
    s = dataclasses.replace(
        shared,
        env=f"test-{tag}",
        kafka_bootstrap_servers=kafka.kafka_bootstrap_servers,
        kafka_input_topic=f"test-{tag}.programuser.info",
        kafka_dlq_topic=f"test-{tag}.programuser.info.failed",
        kafka_group_id=f"test-{tag}-group",
        kafka_partitions=partitions,
        cassandra_port=cassandra.cassandra_port,
        cassandra_keyspace=f"test_{tag}",
    )
    ensure_topics(s.kafka_bootstrap_servers, {s.kafka_input_topic: partitions,
                                              s.kafka_dlq_topic: partitions},
                  dead_letter={s.kafka_dlq_topic})
    if not private_kafka:
        scratch["topics"] += [(s.kafka_bootstrap_servers, t)
                              for t in (s.kafka_input_topic, s.kafka_dlq_topic)]
    if private_cassandra:
        ensure_schema(s.cassandra_hosts, s.cassandra_keyspace, s.cassandra_table,
                      port=s.cassandra_port)
    else:
        ensure_schema(cassandra_session, s.cassandra_keyspace, s.cassandra_table)
        scratch["keyspaces"].append((cassandra_session, s.cassandra_keyspace))
    return s


def test_cassandra_killed_during_the_write_fails_the_run_and_a_reexecution_completes(
    private_stack: PrivateStack, stack: Settings, cassandra_session, scratch, instance
) -> None:
    started = private_stack.up(["cassandra"])
    s = private_settings(private_stack, scratch, stack, cassandra_session,
                         private_kafka=False, private_cassandra=True)
    total = 20_000
    records = sample_records(total, bad_every=1000)
    produce_records(s, records)
    instance.add_dynamic_partitions(kafka_partitions.name or "", ["0"])
    cluster = cassandra_cluster(s.cassandra_hosts, s.cassandra_port, timeout=30)
    node = cluster.connect()
    probe = node.prepare(
        f"SELECT program_id FROM {s.cassandra_keyspace}.{s.cassandra_table} LIMIT 1"
    )

    def run() -> tuple[str, bool, str]:
        with job_env(s), execute_job(
            reconstructable_job_from_env(),
            instance,
            run_config={"ops": {"flatten_events": {"config": {"end_offset": total}}}},
            tags={PARTITION_TAG: "0", START_TAG: "0", END_TAG: str(total)},
            raise_on_error=False,
        ) as result:
            return result.run_id, result.success, failure_text(result)

    try:
        running = RunInThread(run)
        # Kill the node once the IO manager's upserts have begun to land (a row is there).
        wait_for("the first upserted row", lambda: node.execute(probe).one(), timeout=180,
                 every=0.02)
        cluster.shutdown()
        private_stack.kill("cassandra")
        run_id, success, message = running.join()
    finally:
        cluster.shutdown()
    assert not success
    where = f"Cassandra at 127.0.0.1:{s.cassandra_port}"
    assert f"{where} failed" in message, message
    assert f"Nothing of partition 0 offsets [0, {total}) was committed" in message
    assert offsets(s).committed is None

    # The sensor requests the same range again (after its back-off).
    kafka = kafka_resource(s)
    try:
        [request] = plan_backlog(instance, kafka, s, now=time.time() + 31).run_requests
    finally:
        kafka.close()
    assert request.tags == {START_TAG: "0", START_TOKEN_TAG: "0", END_TAG: str(total)}
    assert request.run_key == f"partition-0:0-{total}:token-0:attempt-2"

    restarted = private_stack.up(["cassandra"])
    # A node just restarted on a busy 2-core machine may still time a few writes out
    # (WriteTimeout); such a run fails like any other, commits nothing, and is re-executed, as
    # the sensor would. Each attempt re-executes the previous one.
    parent, attempts = run_id, 0
    while True:
        attempts += 1
        with job_env(s), execute_job(
            reconstructable_job_from_env(),
            instance,
            reexecution_options=ReexecutionOptions(parent_run_id=parent),
            tags={PARTITION_TAG: "0"},
            raise_on_error=False,
        ) as rerun:
            if rerun.success:
                break
            text = failure_text(rerun)
            assert "Timeout" in text and "was committed" in text, text
            assert offsets(s).committed is None
            assert attempts < 4, text
            parent = rerun.run_id
    assert offsets(s).committed == total
    cluster = cassandra_cluster(s.cassandra_hosts, s.cassandra_port, timeout=30)
    try:
        got = all_rows(cluster.connect(), s)
    finally:
        cluster.shutdown()
    assert got == clean_table(s, cassandra_session, scratch, stack)
    assert len(got) == total - total // 1000
    assert_ranges_tile(instance, 0, total)
    print(f"\nprivate Cassandra: start {started:.0f}s, restart {restarted:.0f}s, "
          f"re-executions {attempts}")


# ----------------------------------------------------------------------------- 2. Kafka restart


def test_kafka_restarted_during_a_run_loses_nothing(
    private_stack: PrivateStack, stack: Settings, cassandra_session, scratch, instance
) -> None:
    private_stack.up(["kafka"])
    s = private_settings(private_stack, scratch, stack, cassandra_session,
                         private_kafka=True, private_cassandra=False)
    total = 20_000
    records = sample_records(total, bad_every=500)
    bad = [i for i, (k, _) in enumerate(records) if k == b"bad"]
    produce_records(s, records)
    instance.add_dynamic_partitions(kafka_partitions.name or "", ["0"])

    running = RunInThread(lambda: run_partition(instance, s, end_offset=total))
    [run] = wait_for("the run", lambda: runs_of(instance, 0), timeout=120, every=0.02)
    wait_for("the read to begin", lambda: logged(instance, run.run_id, "Reading partition"),
             timeout=120, every=0.02)
    t0, went_down = time.monotonic(), time.time()
    private_stack.down(["kafka"])
    private_stack.up(["kafka"])
    restart = time.monotonic() - t0
    result = running.join()
    # The broker really went away while the run was in progress.
    [record] = instance.get_run_records(RunsFilter(run_ids=[run.run_id]))
    assert record.end_time is not None and record.end_time > went_down
    outcome = "completed" if result.success else "failed: " + failure_text(result)[:400]
    if not result.success:
        assert "was not committed" in failure_text(result) or "was committed" in failure_text(
            result
        )

    # Either way, a follow-up drain finishes the partition and nothing is lost or doubled.
    follow_up = drain(instance, s, say=lambda _: None)
    assert follow_up.failed == 0, follow_up
    assert offsets(s).committed == total
    assert all_rows(cassandra_session, s) == clean_table(s, cassandra_session, scratch, stack)
    assert_ranges_tile(instance, 0, total)
    # Dead letters: every one delivered; a repeated range may deliver some twice.
    assert set(_dlq_offsets(s, len(bad))) == set(bad)
    print(f"\nKafka restarted ({restart:.0f}s) during the run, which {outcome}")


def test_a_daemon_launched_run_killed_between_upsert_and_commit_loses_nothing(
    kafka_topics: Settings, cassandra_session, scratch, stack, tmp_path
) -> None:
    """The sensor (in a real `dagster-daemon`, with the repo's dagster.yaml) launches the run; its
    run worker is SIGKILLed in the commit pause. Meanwhile a second run of the same partition,
    launched by hand, is held back by the run queue's dagster/partition limit."""
    s = kafka_topics
    bad = _produce_forty_with_bad(s)
    home = tmp_path / "home"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["run_monitoring"]["poll_interval_seconds"] = 1
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    workspace = home / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "programuser_dagster.definitions", "working_directory": str(REPO)}}]}))
    env = env_for(s, home, PROGRAMUSER_SENSOR_INTERVAL_S="5",
                  **{PAUSE_BEFORE_COMMIT_ENV: "300"})
    bin_dir = Path(sys.executable).parent
    create_storage(home)  # before the daemon and this test open it side by side
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            [run] = wait_for("the sensor's run", lambda: runs_of(instance, 0), timeout=300,
                             every=0.5)
            wait_for("the commit pause", lambda: logged(instance, run.run_id, "Test fault hook"),
                     timeout=300, every=0.2)
            written = all_rows(cassandra_session, s)
            assert len(written) == 36
            _letters_sent_not_committed(s, bad)

            # A second trigger for the same partition (a manual launch) waits in the queue.
            launch = subprocess.run(
                [str(bin_dir / "dagster"), "job", "launch", "-w", str(workspace),
                 "-j", JOB_NAME, "--tags", orjson.dumps({PARTITION_TAG: "0"}).decode()],
                cwd=home, env=env, capture_output=True, text=True, timeout=300,
            )
            assert launch.returncode == 0, launch.stdout + launch.stderr
            [second] = [r for r in runs_of(instance, 0) if r.run_id != run.run_id]
            held = time.monotonic()
            while time.monotonic() - held < 12:  # > 2 dequeue intervals of the run queue
                assert instance.get_run_by_id(second.run_id).status == DagsterRunStatus.QUEUED
                time.sleep(0.5)
            assert instance.run_coordinator.cancel_run(second.run_id)

            # SIGKILL the run worker: the upsert is done, the offset not committed.
            pids = [
                int(entry_text(e).split("pid: ")[1].split(")")[0])
                for e in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT)
                if "Started process for run (pid: " in entry_text(e)
            ]
            assert len(pids) == 1, pids
            os.kill(pids[0], signal.SIGKILL)
            killed_at = time.monotonic()
            failed = wait_for(
                "the killed run to be marked failed",
                lambda: (r := instance.get_run_by_id(run.run_id)).is_finished and r,
                timeout=300, every=0.1,
            )
            detected = time.monotonic() - killed_at
            assert failed.status == DagsterRunStatus.FAILURE
            stop_group(daemon)  # no further sensor ticks from here on
            messages = " ".join(entry_text(e) for e in instance.all_logs(run.run_id))
            assert "Run execution process for" in messages, messages[-2000:]
            print(f"\ndaemon run worker killed: run marked failed {detected:.1f}s after the kill")
            assert written == clean_table(s, cassandra_session, scratch, stack)
            _after_the_kill(instance, s, run.run_id, written, cassandra_session, bad, 40)
    finally:
        stop_group(daemon)
        log.close()
