"""replay (issue 13, item 2) on the real servers: a dry run changes nothing; --apply rewinds
through the fenced commit, carries the clock forward and records an event on the asset; it
only rewinds; afterwards the replayed range rewrites the table, hand edits and deletes too."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, EventRecordsFilter

from programuser_dagster.cli import main
from programuser_dagster.incidents import replay
from programuser_dagster.incidents.jobs import replay_job
from programuser_dagster.incidents.outcomes import CouldNotComplete
from programuser_dagster.resources import build_resources, kafka_resource
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO
from tests.support.pipeline import (
    all_rows,
    cli_env,
    event,
    offsets,
    produce,
    run_partition,
    temporary_env,
)

pytestmark = pytest.mark.stack


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


def _replay(s: Settings, home: Path, *args: str, capsys: Any) -> tuple[int, str, str]:
    capsys.readouterr()  # what the test printed before
    with temporary_env(cli_env(s, home)):
        code = main(["replay", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _observations(home: Path) -> list[dict[str, Any]]:
    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_event_records(EventRecordsFilter(
            DagsterEventType.ASSET_OBSERVATION, asset_key=AssetKey("program_enrollment")))
        return [{k: v.value for k, v in r.asset_observation.metadata.items()}
                for r in records if "replay_partition" in r.asset_observation.metadata]


def _ingested(instance: Any, s: Settings, n: int = 10) -> None:
    produce(s, [event("p", f"u{i}", programName=f"n{i}") for i in range(n)])
    assert run_partition(instance, s).success
    assert offsets(s).committed == n


def test_a_dry_run_says_what_it_would_do_and_changes_nothing(
    instance, kafka_topics: Settings, tmp_path: Path, capsys
) -> None:
    s = kafka_topics
    _ingested(instance, s)
    before = offsets(s)
    home = _home(tmp_path)
    code, out, _ = _replay(s, home, "--partition", "0", "--to-offset", "4", capsys=capsys)
    assert code == 0
    assert out.splitlines() == [
        "partition 0: committed 10, would rewind to 4: 6 records would be read again",
        "dry run: nothing was changed; add --apply (the job: apply) to rewind.",
    ]
    assert offsets(s) == before
    assert _observations(home) == []


def test_apply_rewinds_carries_the_clock_forward_and_records_it_on_the_asset(
    instance, kafka_topics: Settings, tmp_path: Path, capsys
) -> None:
    s = kafka_topics
    _ingested(instance, s)
    before = offsets(s)
    home = _home(tmp_path)
    started_us = time.time_ns() // 1000
    code, out, _ = _replay(s, home, "--partition", "0", "--to-offset", "4", "--apply",
                           capsys=capsys)
    assert code == 0, out
    assert out.splitlines()[0] == (
        "partition 0: committed 10, rewound to 4: 6 records will be read again")
    after = offsets(s)
    assert after.committed == 4 and after.token == before.token + 1
    # Carried forward: at least the wall clock of the replay, so the re-ingested events are
    # written after everything written so far.
    assert after.clock >= max(before.clock, started_us)
    [seen] = _observations(home)
    assert seen["replay_partition"] == 0 and seen["replay_from"] == 10
    assert seen["replay_to"] == 4 and seen["replay_by"].startswith("CLI by ")
    # The next run reads the replayed range again, and ends where the partition ends.
    result = run_partition(instance, s)
    assert result.success
    assert offsets(s).committed == 10


def test_replay_only_rewinds(instance, kafka_topics: Settings, tmp_path: Path, capsys) -> None:
    s = kafka_topics
    _ingested(instance, s)
    produce(s, [event("p", "later")])  # offset 10: not processed yet
    before = offsets(s)
    code, _, err = _replay(s, _home(tmp_path), "--partition", "0", "--to-offset", "11",
                           "--apply", capsys=capsys)
    assert code == 2
    assert "replay only rewinds" in err and "past where the next run starts (10)" in err
    assert offsets(s) == before


def test_a_time_without_its_offset_is_refused_and_a_time_with_it_finds_its_offset(
    instance, kafka_topics: Settings, tmp_path: Path, capsys
) -> None:
    s = kafka_topics
    produce(s, [event("p", f"a{i}") for i in range(3)])
    time.sleep(0.05)
    moment = datetime.now(UTC)
    time.sleep(0.05)
    produce(s, [event("p", f"b{i}") for i in range(3)])
    assert run_partition(instance, s).success
    home = _home(tmp_path)
    naive = moment.replace(tzinfo=None).isoformat()
    code, _, err = _replay(s, home, "--to-time", naive, capsys=capsys)
    assert code == 2 and "has no UTC offset" in err
    code, out, _ = _replay(s, home, "--partition", "0", "--to-time",
                           moment.isoformat().replace("+00:00", "Z"), capsys=capsys)
    assert code == 0
    assert out.splitlines()[0] == (
        "partition 0: committed 6, would rewind to 3: 3 records would be read again")


def test_a_partition_that_does_not_exist_is_refused(
    kafka_topics: Settings, tmp_path: Path, capsys
) -> None:
    code, _, err = _replay(kafka_topics, _home(tmp_path), "--partition", "9", "--to-earliest",
                           capsys=capsys)
    assert code == 2 and "has no partition [9]" in err


def test_an_unreachable_broker_is_exit_3(kafka_topics: Settings, tmp_path: Path) -> None:
    env = cli_env(kafka_topics, _home(tmp_path), KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
                  KAFKA_REQUEST_TIMEOUT_S="3")
    done = subprocess.run([sys.executable, "-m", "programuser_dagster.cli", "replay",
                           "--to-earliest"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 3, done.stderr
    assert "Kafka at 127.0.0.1:1" in done.stderr


def test_after_a_replay_the_table_is_what_a_fresh_drain_gives_hand_edits_included(
    instance, make_test_settings, cassandra_session, tmp_path: Path, capsys
) -> None:
    s = make_test_settings(partitions=2)
    events = [event(f"p{i % 3}", f"u{i % 7}", programName=f"v{i}",
                    userProfile={"userLocations": [{"type": "state", "name": f"S{i}"}]},
                    createdAt=f"2020-01-{1 + i % 28:02d}")
              for i in range(40)]
    for p in (0, 1):
        produce(s, events, partition=p, key=f"k{p}".encode())
        assert run_partition(instance, s, partition=p).success
    fresh = all_rows(cassandra_session, s)
    table = f"{s.cassandra_keyspace}.{s.cassandra_table}"
    # By hand, after the pipeline wrote them: a changed cell, a deleted row, a deleted cell.
    cassandra_session.execute(f"UPDATE {table} SET program_name = 'hand' "
                              "WHERE program_id = 'p0' AND user_id = 'u0'")
    cassandra_session.execute(f"DELETE FROM {table} WHERE program_id = 'p1' AND user_id = 'u1'")
    cassandra_session.execute(f"DELETE created_at FROM {table} "
                              "WHERE program_id = 'p2' AND user_id = 'u2'")
    assert all_rows(cassandra_session, s) != fresh
    code, out, _ = _replay(s, _home(tmp_path), "--to-earliest", "--apply", capsys=capsys)
    assert code == 0, out
    assert all(offsets(s, p).committed == 0 for p in (0, 1))
    for p in (0, 1):
        assert run_partition(instance, s, partition=p).success
    assert all_rows(cassandra_session, s) == fresh


def _replay_resources(s: Settings) -> dict[str, Any]:
    resources = build_resources(s)
    return {"kafka": resources["kafka"], "cassandra": resources["cassandra"]}


def test_the_replay_job_dry_runs_then_applies_from_its_config(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    _ingested(instance, s)
    config: dict[str, Any] = {"partitions": [0], "to_offset": 2}
    dry = replay_job.execute_in_process(
        run_config={"ops": {"replay_partitions": {"config": config}}}, instance=instance,
        resources=_replay_resources(s))
    assert dry.success and offsets(s).committed == 10
    applied = replay_job.execute_in_process(
        run_config={"ops": {"replay_partitions": {"config": {**config, "apply": True}}}},
        instance=instance, resources=_replay_resources(s))
    assert applied.success and offsets(s).committed == 2
    [observation] = [e for e in applied.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    md = observation.event_specific_data.asset_observation.metadata
    assert md["replay_by"].value == f"launched from the UI (run {applied.run_id})"
    assert md["replay_from"].value == 10 and md["replay_to"].value == 2


def test_a_replay_stopped_halfway_records_what_it_rewound_and_says_what_it_did_not(
    instance, make_test_settings
) -> None:
    s = make_test_settings(partitions=2)
    for p in (0, 1):
        produce(s, [event("p", f"u{i}") for i in range(5)], partition=p)
        assert run_partition(instance, s, partition=p).success
    kafka = kafka_resource(s)
    try:
        rewinds = replay.plan(kafka, [0, 1], replay.Target(earliest=True), {})
        # Another committer moves partition 1 on after the plan: its rewind must be refused.
        produce(s, [event("p", "late")], partition=1)
        assert run_partition(instance, s, partition=1).success
        recorded: list[int] = []
        with pytest.raises(CouldNotComplete, match="partition 1: a run committed it while "
                           "replay ran") as raised:
            replay.apply(kafka, rewinds, lambda r: recorded.append(r.partition))
    finally:
        kafka.close()
    assert "Rewound before it: partitions 0" in str(raised.value)
    assert recorded == [0]
    assert offsets(s, 0).committed == 0 and offsets(s, 1).committed == 6
