"""The fenced commit (issue 11, item 4): at most one run of a partition commits a given range,
whoever launched it; every other run that read the same committed state ends superseded.

Checked on the real broker: two committers of one state (directly, and fenced mid-transaction),
20 rounds of two `drain` processes released together (on fresh and on shared Dagster homes,
some with a delay between the start read and the commit), drain beside a running sensor, and a
stale commit-step re-execution after a newer run. After each: no range committed twice, no
(source_partition, source_offset) twice for a read_committed reader of the dead letters, every
loser superseded, storage healthy.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, ReexecutionOptions, RunsFilter, execute_job

from devtools.stack import delete_topics, ensure_topics
from programuser_dagster.ingest.fault_pauses import PAUSE_BEFORE_COMMIT_ENV, PAUSE_BEFORE_FENCE_ENV
from programuser_dagster.ingest.job import JOB_NAME, kafka_partitions
from programuser_dagster.ingest.run_tags import COMMITTED, OUTCOME_TAG, PARTITION_TAG, SUPERSEDED
from programuser_dagster.kafka.resource import CommitState, KafkaUnavailable, Superseded
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO, create_storage
from tests.support.faults import (
    committed_report,
    env_for,
    job_env,
    runs_of,
    stop_group,
    wait_for,
)
from tests.support.jobs import reconstructable_job_from_env
from tests.support.pipeline import dead_letters, event, offsets, produce, run_partition

pytestmark = pytest.mark.stack


# ----------------------------------------------------------------------------- helpers


def committed_ranges(homes: list[Path], partition: int) -> list[tuple[int, int]]:
    """The ranges that runs of all these homes committed for a partition, in offset order."""
    ranges = []
    for home in homes:
        with DagsterInstance.from_config(str(home)) as instance:
            for record in instance.get_run_records(RunsFilter(
                job_name=JOB_NAME, tags={PARTITION_TAG: str(partition), OUTCOME_TAG: COMMITTED}
            )):
                md = committed_report(instance, record.dagster_run.run_id)
                assert md is not None
                ranges.append((md["start_offset"], md["end_offset"]))
    return sorted(ranges)


def assert_committed_once(ranges: list[tuple[int, int]], end: int) -> None:
    """Committed ranges tile [0, end): none twice, no overlap, no gap."""
    assert ranges and ranges[0][0] == 0 and ranges[-1][1] == end, ranges
    for (_, prev_end), (start, _) in itertools.pairwise(ranges):
        assert start == prev_end, f"overlap or gap in {ranges}"


def assert_letters_once(s: Settings, bad: set[tuple[int, int]]) -> None:
    """A read_committed reader sees each bad record's letter exactly once."""
    got = [(int(dict(m.headers())["source_partition"]), int(dict(m.headers())["source_offset"]))
           for m in dead_letters(s, len(bad), timeout_s=30)]
    twice = [k for k, n in Counter(got).items() if n > 1]
    assert not twice, f"dead letters seen twice: {twice}"
    assert set(got) == bad


def outcomes(home: Path) -> Counter[str]:
    """How the runs of a home ended: COMMITTED, SUPERSEDED, or their status if they failed."""
    with DagsterInstance.from_config(str(home)) as instance:
        return Counter(
            r.dagster_run.tags.get(OUTCOME_TAG, "")
            if r.dagster_run.status == DagsterRunStatus.SUCCESS
            else r.dagster_run.status.value
            for r in instance.get_run_records(RunsFilter(job_name=JOB_NAME))
        )


def new_home(root: Path, name: str) -> Path:
    home = root / name
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


# Waits for the barrier file, then runs `programuser-dagster drain` in this process.
_AT_THE_BARRIER = """
import os, sys, time
barrier = sys.argv[1]
while not os.path.exists(barrier):
    time.sleep(0.001)
from programuser_dagster.cli import main
sys.exit(main(["drain"]))
"""


def two_drains(s: Settings, homes: tuple[Path, Path], barrier: Path,
               pauses: tuple[dict[str, str], dict[str, str]]
               ) -> list[subprocess.CompletedProcess[str]]:
    """Two drain processes, imports done, released together by creating `barrier`."""
    procs = []
    for home, extra in zip(homes, pauses, strict=True):
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _AT_THE_BARRIER, str(barrier)],
            env=env_for(s, home, **extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        ))
    time.sleep(4)  # both have imported Dagster and wait at the barrier
    barrier.touch()
    done = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out))
    return done


# ----------------------------------------------------------------------------- the fence itself


def test_two_committers_of_one_state_one_commits_the_other_is_superseded(
    kafka_topics: Settings,
) -> None:
    s = kafka_topics
    produce(s, [event("p", f"u{i}") for i in range(5)])
    first, second = kafka_resource(s), kafka_resource(s)
    try:
        state = first.partition_offsets(0).state
        assert state == CommitState(None, 0)
        with second.fenced_commit(0, state) as txn:
            assert txn.commit(5) == CommitState(5, 1)
        with pytest.raises(Superseded, match="was committed by another run since this run"), \
                first.fenced_commit(0, state) as txn:
            txn.commit(3)
        assert first.partition_offsets(0).state == CommitState(5, 1)
    finally:
        first.close()
        second.close()


def test_a_committer_fenced_in_its_transaction_commits_nothing_and_its_letters_vanish(
    kafka_topics: Settings,
) -> None:
    s = kafka_topics
    produce(s, [b"{bad 0", b"{bad 1", event("p", "u")])
    old, new = kafka_resource(s), kafka_resource(s)
    try:
        state = old.partition_offsets(0).state
        with pytest.raises(Superseded, match="committed it while this run tried to"), \
                old.fenced_commit(0, state) as stale:
            assert stale.deliver([(0, "not_json"), (1, "not_json")]) == {"not_json": 2}
            # A second committer starts now: its init_transactions() aborts the first's.
            with new.fenced_commit(0, state) as txn:
                assert txn.deliver([(0, "not_json")]) == {"not_json": 1}
                txn.commit(3)
            stale.commit(3)
        assert new.partition_offsets(0).state == CommitState(3, 1)
    finally:
        old.close()
        new.close()
    assert_letters_once(s, {(0, 0)})


def test_a_committer_fenced_before_it_sends_its_letters_is_superseded(
    kafka_topics: Settings,
) -> None:
    """The race two drains hit: a newer committer's init_transactions() bumps the epoch
    between the older one's begin and its first letter."""
    s = kafka_topics
    produce(s, [b"{bad 0", event("p", "u")])
    old, new = kafka_resource(s), kafka_resource(s)
    try:
        state = old.partition_offsets(0).state
        with pytest.raises(Superseded, match="committed it while this run tried to"), \
                old.fenced_commit(0, state) as stale:
            with new.fenced_commit(0, state) as txn:
                txn.deliver([(0, "not_json")])
                txn.commit(2)
            stale.deliver([(0, "not_json")])
            stale.commit(2)
        assert new.partition_offsets(0).state == CommitState(2, 1)
    finally:
        old.close()
        new.close()
    assert_letters_once(s, {(0, 0)})


def test_a_committer_fenced_with_no_newer_commit_fails_and_is_not_superseded(
    kafka_topics: Settings,
) -> None:
    """Fenced, but nobody committed (the other committer gave up, or the transaction timed
    out): a failure, so the range is retried with a back-off, not a superseded run."""
    s = kafka_topics
    produce(s, [event("p", "u")])
    old, new = kafka_resource(s), kafka_resource(s)
    try:
        state = old.partition_offsets(0).state
        with pytest.raises(KafkaUnavailable, match="no other run has committed the partition"), \
                old.fenced_commit(0, state) as stale:
            with new.fenced_commit(0, state):
                pass  # begins, fences the first, commits nothing
            stale.commit(1)
        assert new.partition_offsets(0).state == state
    finally:
        old.close()
        new.close()


# ----------------------------------------------------------------------------- two triggers


ROUNDS = 20


# 20 rounds of two drain processes, each importing Dagster: minutes on 2 cores shared with other
# tests (`make test` runs tests side by side).
@pytest.mark.timeout(1200)
def test_two_drains_released_together_commit_each_range_once(
    make_test_settings, tmp_path: Path
) -> None:
    s = make_test_settings(partitions=2)
    homes: list[Path] = []
    bad: set[tuple[int, int]] = set()
    shared = new_home(tmp_path, "shared")
    homes.append(shared)
    superseded = 0
    for n in range(ROUNDS):
        for p in (0, 1):
            values: list[Any] = [event(f"p{p}", f"u{n}-{i}", programName=f"r{n}")
                                 for i in range(12)]
            values[5] = b"{not json " + str(n).encode()
            first = produce(s, values, partition=p)
            bad.add((p, first[5]))
        # Four kinds of round: both drains on one fresh home (its storage initialised by both
        # at once); on the shared home, one pausing between its start read and its fence; on
        # two homes (neither sees the other's run: both always run the range), one pausing
        # inside its transaction, after its letters (the other's fence aborts it there); on
        # the shared home, no pause.
        kind = n % 4
        if kind == 0:
            pair = (new_home(tmp_path, f"fresh-{n}"),) * 2
        elif kind == 2:
            pair = (new_home(tmp_path, f"a-{n}"), new_home(tmp_path, f"b-{n}"))
        else:
            pair = (shared, shared)
        homes += [h for h in dict.fromkeys(pair) if h not in homes]
        pause = {1: {PAUSE_BEFORE_FENCE_ENV: "1.5"}, 2: {PAUSE_BEFORE_COMMIT_ENV: "1.5"}}
        results = two_drains(s, pair, tmp_path / f"barrier-{n}", ({}, pause.get(kind, {})))
        for r in results:
            assert r.returncode == 0, r.stdout
            assert "Traceback" not in r.stdout and "IntegrityError" not in r.stdout, r.stdout
        superseded += sum(r.stdout.count(" superseded") for r in results)
        for p in (0, 1):
            assert offsets(s, p).committed == offsets(s, p).high
        # Every run ended committed or superseded: none failed, none is still in flight.
        for home in set(pair):
            seen = outcomes(home)
            assert set(seen) <= {COMMITTED, SUPERSEDED}, seen
    for p in (0, 1):
        assert_committed_once(committed_ranges(homes, p), offsets(s, p).high)
    assert_letters_once(s, bad)
    # The race was really run: some runs read a state another run then committed.
    assert superseded > 0
    print(f"\n{ROUNDS} rounds of two drains: {superseded} runs superseded")


def test_a_stale_commit_step_reexecuted_after_a_newer_run_is_superseded(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u"), b"{bad", event("p", "v")])
    instance.add_dynamic_partitions(kafka_partitions.name or "", ["0"])
    # The old run: its writes land, its commit step fails (the dead-letter topic is gone).
    delete_topics(s.kafka_bootstrap_servers, [s.kafka_dlq_topic])
    with job_env(s, KAFKA_DELIVERY_TIMEOUT_S="3"), execute_job(
        reconstructable_job_from_env(), instance, tags={PARTITION_TAG: "0"},
        raise_on_error=False,
    ) as old:
        assert not old.success
    ensure_topics(s.kafka_bootstrap_servers, {s.kafka_dlq_topic: 4},
                  dead_letter={s.kafka_dlq_topic})
    # A newer run commits the same range.
    assert run_partition(instance, s).success
    assert offsets(s).state == CommitState(3, 1)
    # "Re-execute from failure" of the old run: only its commit step, with its old report.
    with job_env(s), execute_job(
        reconstructable_job_from_env(), instance,
        reexecution_options=ReexecutionOptions.from_failure(old.run_id, instance),
        tags={PARTITION_TAG: "0"},
    ) as late:
        assert late.success
        run = instance.get_run_by_id(late.run_id)
        assert run.tags[OUTCOME_TAG] == SUPERSEDED
        assert not any(e.event_type_value == "ASSET_MATERIALIZATION" for e in late.all_events)
    assert offsets(s).state == CommitState(3, 1)
    assert_letters_once(s, {(0, 1)})


def test_drain_beside_a_running_sensor_commits_each_range_once(
    make_test_settings, tmp_path: Path
) -> None:
    s = make_test_settings(partitions=4)
    home = new_home(tmp_path, "home")
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    workspace = home / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "programuser_dagster.definitions", "working_directory": str(REPO)}}]}))
    env = env_for(s, home, PROGRAMUSER_SENSOR_INTERVAL_S="5")
    bin_dir = Path(sys.executable).parent
    create_storage(home)  # before the daemon and this test open it side by side
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    bad: set[tuple[int, int]] = set()
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            for wave in range(3):
                for p in range(4):
                    values: list[Any] = [event(f"p{p}", f"w{wave}-{i}") for i in range(30)]
                    values[7] = b"{not json"
                    bad.add((p, produce(s, values, partition=p)[7]))
                if wave == 0:
                    wait_for("the sensor's first run",
                             lambda: any(runs_of(instance, p) for p in range(4)), timeout=300,
                             every=0.2)
                drained = subprocess.run(
                    [str(bin_dir / "programuser-dagster"), "drain"], env=env,
                    capture_output=True, text=True, timeout=300,
                )
                assert drained.returncode == 0, drained.stdout + drained.stderr
            wait_for("every partition committed to its end",
                     lambda: all(offsets(s, p).committed == offsets(s, p).high
                                 for p in range(4)), timeout=300, every=0.5)
            wait_for("no run in flight", lambda: not instance.get_run_records(RunsFilter(
                job_name=JOB_NAME, statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING,
                                             DagsterRunStatus.STARTED])), timeout=120)
            stop_group(daemon)
        seen = outcomes(home)
        assert set(seen) <= {COMMITTED, SUPERSEDED}, seen
        for p in range(4):
            assert_committed_once(committed_ranges([home], p), offsets(s, p).high)
        assert_letters_once(s, bad)
        print(f"\ndrain beside the sensor: {dict(seen)}")
    finally:
        stop_group(daemon)
        log.close()
