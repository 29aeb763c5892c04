"""`programuser-dagster drain`, `produce` and `lag` against the real servers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from dagster import DagsterRunStatus, RunsFilter

from programuser_dagster.drain import drain
from programuser_dagster.settings import Settings
from tests.pipeline_helpers import event, offsets, produce

pytestmark = pytest.mark.stack


def test_drain_on_an_empty_topic_runs_nothing(instance, kafka_topics: Settings) -> None:
    lines: list[str] = []
    result = drain(instance, kafka_topics, say=lines.append)
    assert (result.runs, result.failed, lines) == ([], 0, [])


def test_drain_empties_a_backlog_across_four_partitions(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    for p in range(4):
        produce(s, [event(f"p{p}", f"u{i}") for i in range(25)], partition=p)
    lines: list[str] = []
    result = drain(instance, s, say=lines.append, max_messages=10)
    # 25 records per partition at 10 per run: 3 runs for each of the 4 partitions.
    assert result.failed == 0
    assert sorted(p for p, ok, _ in result.runs if ok) == sorted([0, 1, 2, 3] * 3)
    assert all(offsets(s, p).committed == 25 for p in range(4))
    count = cassandra_session.execute(
        f"SELECT count(*) FROM {s.cassandra_keyspace}.{s.cassandra_table}"
    ).one()[0]
    assert count == 100
    runs = instance.get_run_records(RunsFilter(job_name="program_user_info"))
    assert len(runs) == 12 and all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs)
    assert all("ok: partition" in line for line in lines)


def test_drain_skips_a_partition_whose_run_is_in_flight(
    instance, kafka_topics: Settings
) -> None:
    from tests.test_sensor import add_run

    s = kafka_topics
    produce(s, [event("p", "u")], partition=0)
    produce(s, [event("p", "v")], partition=1)
    add_run(instance, 0, DagsterRunStatus.STARTED)
    lines: list[str] = []
    result = drain(instance, s, say=lines.append)
    assert result.skipped == {0: "a run is queued or in progress in the UI"}
    assert [p for p, _, _ in result.runs] == [1]
    assert offsets(s, 0).committed is None


def _cli(args: list[str], s: Settings, home: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DAGSTER_HOME": home,
        "KAFKA_INPUT_TOPIC": s.kafka_input_topic,
        "KAFKA_GROUP_ID": s.kafka_group_id,
        "KAFKA_DLQ_TOPIC": s.kafka_dlq_topic,
        "CASSANDRA_KEYSPACE": s.cassandra_keyspace,
    }
    return subprocess.run(
        [sys.executable, "-m", "programuser_dagster.cli", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )


def test_cli_produce_sample_drain_and_lag(kafka_topics: Settings, tmp_path) -> None:
    s = kafka_topics
    home = str(tmp_path)
    produced = _cli(["produce", "--sample", "40"], s, home)
    assert produced.returncode == 0, produced.stderr
    assert f"produced 40 messages to {s.kafka_input_topic}" in produced.stdout
    before = _cli(["lag"], s, home)
    assert before.returncode == 0 and before.stdout.splitlines()[-1].split()[-1] == "40"
    drained = _cli(["drain"], s, home)
    assert drained.returncode == 0, drained.stderr
    assert "ok: partition" in drained.stdout
    after = _cli(["lag"], s, home)
    assert after.stdout.splitlines()[-1].split()[-1] == "0"
    assert _cli(["drain"], s, home).stdout.strip() == (
        "nothing to drain: every partition is caught up"
    )


def test_drain_in_two_processes_gives_each_partition_to_one_of_them(
    kafka_topics: Settings, cassandra_session, tmp_path
) -> None:
    from dagster import DagsterInstance

    from programuser_dagster.backlog import DRAIN_PROCESS_TAG

    s = kafka_topics
    for p in range(4):
        produce(s, [event(f"p{p}", f"u{i}") for i in range(25)], partition=p)
    drained = _cli(["drain", "--processes", "2", "--max-messages", "10"], s, str(tmp_path))
    assert drained.returncode == 0, drained.stderr
    # Each worker prints its own runs' lines: 3 runs for each of the 4 partitions.
    assert drained.stdout.count("ok: partition") == 12, drained.stdout
    assert all(offsets(s, p).committed == 25 for p in range(4))
    count = cassandra_session.execute(
        f"SELECT count(*) FROM {s.cassandra_keyspace}.{s.cassandra_table}"
    ).one()[0]
    assert count == 100
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        runs = instance.get_run_records(RunsFilter(job_name="program_user_info"))
    assert len(runs) == 12
    assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs)
    # Two worker processes, each running its own partitions (round-robin: 0+2 and 1+3), so at
    # most one run per partition at a time.
    by_process: dict[str, set[str]] = {}
    for r in runs:
        tags = r.dagster_run.tags
        by_process.setdefault(tags[DRAIN_PROCESS_TAG], set()).add(tags["dagster/partition"])
    assert sorted(sorted(parts) for parts in by_process.values()) == [["0", "2"], ["1", "3"]]
