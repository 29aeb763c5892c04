"""State that outlives Kafka's offset retention (core/kept_commit.py), on the real stack: a
partition whose committed offset the broker removed stops with one line and the replay command,
which resumes it with nothing ingested again; commits are renewed before the retention, with the
same offset, token and clock, and a run that read the state before a renewal still commits."""

from __future__ import annotations

import re
import shlex
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from dagster import DagsterInstance, RunsFilter

from programuser_dagster.cassandra.kept_commits import kept_commits
from programuser_dagster.cli import main
from programuser_dagster.core.offsets import PartitionOffsets
from programuser_dagster.ingest.drain import drain, failure_description
from programuser_dagster.ingest.fault_pauses import PAUSE_BEFORE_FENCE_ENV
from programuser_dagster.ingest.offset_retention import renew_commits
from programuser_dagster.ingest.run_tags import OUTCOME_TAG, START_TAG
from programuser_dagster.resources import cassandra_resource, kafka_resource
from programuser_dagster.settings import Settings
from tests.integration.test_drain import _logged, _wait_for
from tests.integration.test_replay import _home
from tests.support.pipeline import (
    cli_env,
    event,
    health_tick,
    offsets,
    produce,
    run_partition,
    temporary_env,
    tick,
)

pytestmark = pytest.mark.stack


def delete_committed_offsets(s: Settings) -> None:
    """What the broker's offset retention does to a group without members once its commits are
    old: its committed offsets are gone (the Python client deletes the whole group's)."""
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    for future in admin.delete_consumer_groups([s.kafka_group_id],
                                               request_timeout=30).values():
        future.result(30)


def kept(s: Settings) -> dict[int, Any]:
    cassandra = cassandra_resource(s)
    try:
        return kept_commits(cassandra, s.kafka_group_id, s.kafka_input_topic)
    finally:
        cassandra.close()


def committed_ten(instance: DagsterInstance, s: Settings, partition: int) -> PartitionOffsets:
    """Ten events ingested on the partition by a run: its commit, as Kafka has it (and kept)."""
    produce(s, [event("p", f"u{i}") for i in range(10)], partition=partition)
    assert run_partition(instance, s, partition=partition).success
    committed = offsets(s, partition)
    assert committed.committed == 10 and committed.committed_at > 0
    assert kept(s)[partition].offset == 10 and kept(s)[partition].token == committed.token
    return committed


def test_a_lost_commit_stops_the_partition_and_its_replay_command_resumes_it(
    instance: DagsterInstance, kafka_topics: Settings, tmp_path: Path, capsys: Any
) -> None:
    s = kafka_topics
    before = committed_ten(instance, s, 0)

    delete_committed_offsets(s)
    assert offsets(s, 0).committed is None
    produce(s, [event("p", f"v{i}") for i in range(5)], partition=0)

    # The sensor skips it, saying why and how to resume, in one line.
    result = tick(instance, s)
    assert not [r for r in result.run_requests or [] if r.partition_key == "0"]
    said = str(result.skip_reason.skip_message if result.skip_reason else "")
    [line] = [part for part in said.split("; ") if part.startswith("partition 0: ")]
    assert "Kafka no longer has the committed offset (last committed 10 at " in line
    command = re.search(r"`(programuser-dagster replay [^`]+)`", line)
    assert command is not None
    assert command.group(1) == "programuser-dagster replay --partition 0 --to-offset 10 --apply"

    # A run launched directly refuses with the same line; drain skips it and counts it.
    direct = run_partition(instance, s, partition=0)
    assert not direct.success
    assert "Kafka no longer has the committed offset" in failure_description(direct)
    assert offsets(s, 0).committed is None
    lines: list[str] = []
    drained = drain(instance, s, say=lines.append, only=[0])
    assert list(drained.lost) == [0] and drained.failed == 1 and not drained.runs
    assert any("not drained: Kafka no longer has" in line for line in lines), lines

    # The health check names it.
    health, _ = health_tick(instance, s)
    stalled = [e for e in health.asset_events
               if getattr(e, "check_name", "") == "lag_without_progress"]
    assert stalled and not stalled[0].passed
    assert "partition 0: Kafka no longer has the committed offset" in stalled[0].description

    # The command in the line resumes it where it was: its clock, a later token; kept again.
    capsys.readouterr()
    with temporary_env(cli_env(s, _home(tmp_path))):
        code = main(shlex.split(command.group(1))[1:])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Kafka lost its last commit (10 at" in out and "resumed at 10" in out
    resumed = offsets(s, 0)
    assert resumed.committed == 10 and resumed.token == before.token + 1
    assert resumed.clock >= before.clock and resumed.partitions == before.partitions
    assert kept(s)[0].offset == 10 and kept(s)[0].token == resumed.token

    # Nothing is ingested again: the next run reads [10, 15) only.
    run = run_partition(instance, s, partition=0)
    assert run.success
    assert run.dagster_run.tags[START_TAG] == "10"
    assert offsets(s, 0).committed == 15 and kept(s)[0].offset == 15


def test_a_deliberate_replay_backwards_is_not_taken_for_a_loss(
    instance: DagsterInstance, kafka_topics: Settings, tmp_path: Path
) -> None:
    s = kafka_topics
    committed_ten(instance, s, 1)
    with temporary_env(cli_env(s, _home(tmp_path))):
        assert main(["replay", "--partition", "1", "--to-offset", "4", "--apply"]) == 0
    assert kept(s)[1].offset == 4
    requests = tick(instance, s).run_requests or []
    assert [r.partition_key for r in requests] == ["1"]
    assert run_partition(instance, s, partition=1).success
    assert offsets(s, 1).committed == 10


def test_an_old_commit_is_renewed_unchanged_and_a_run_that_read_it_before_still_commits(
    instance: DagsterInstance, kafka_topics: Settings, monkeypatch: Any
) -> None:
    s = replace(kafka_topics, offset_renew_s=1)
    before = committed_ten(instance, s, 2)
    time.sleep(2.1)  # commit times are whole seconds: the commit is now older than 1 s

    # The health sensor's tick renews it: same offset, token, clock; a later time; kept.
    health_tick(instance, s)
    renewed = offsets(s, 2)
    assert (renewed.committed, renewed.token, renewed.clock, renewed.partitions) == (
        before.committed, before.token, before.clock, before.partitions)
    assert renewed.committed_at >= before.committed_at + 2
    assert kept(s)[2].committed_at == renewed.committed_at
    # A commit younger than the threshold is left alone.
    health_tick(instance, replace(s, offset_renew_s=3600))
    assert offsets(s, 2).committed_at == renewed.committed_at

    # A run reads the state, pauses before its fence; a renewal commits meanwhile (launched
    # after the renewer looked for runs in flight); the run's commit still lands.
    produce(s, [event("p", f"v{i}") for i in range(5)], partition=2)
    monkeypatch.setenv(PAUSE_BEFORE_FENCE_ENV, "4")
    outcome: list[Any] = []
    runner = threading.Thread(
        target=lambda: outcome.append(run_partition(instance, s, partition=2)), daemon=True)
    runner.start()
    [run] = _wait_for("the run", lambda: instance.get_runs(
        RunsFilter(tags={START_TAG: "10"})), 120)
    _wait_for("its pause", lambda: _logged(instance, run.run_id, "Test fault hook"), 120)
    time.sleep(1.1)
    kafka, cassandra = kafka_resource(s), cassandra_resource(s)
    said: list[str] = []
    try:
        done = renew_commits(kafka, cassandra, kafka.offsets([2]), 1, lambda p: False,
                             said.append, said.append)
    finally:
        kafka.close()
        cassandra.close()
    assert done == [2], said
    runner.join(120)
    [result] = outcome
    assert result.success
    assert instance.get_run_by_id(result.run_id).tags[OUTCOME_TAG] == "committed"
    after = offsets(s, 2)
    assert after.committed == 15 and after.token == before.token + 1
    assert kept(s)[2].offset == 15
