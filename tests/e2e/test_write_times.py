"""Writes that converge (issue 13, item 1), on the real servers: every (key, column) ends as if
the partition's events had been applied one by one in offset order, whatever order the writes
reach Cassandra in (programuser_dagster/core/clock.py).

Here: a zombie run's writes delivered after a newer run's; each column group of a merged row
written at its own event's time; a hand edit updated by the next event. Re-drive and replay
have theirs in test_redrive.py and test_replay.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, RunsFilter

from programuser_dagster.ingest.fault_pauses import PAUSE_BEFORE_WRITE_ENV
from programuser_dagster.ingest.job import JOB_NAME
from programuser_dagster.ingest.run_tags import START_TAG
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO
from tests.support.faults import env_for, wait_for
from tests.support.pipeline import event, failure_text, offsets, produce, row, run_partition

pytestmark = pytest.mark.stack


def _write_times(session: Any, s: Settings, program: str, user: str) -> dict[str, int]:
    found = session.execute(
        "SELECT WRITETIME(program_name) AS name, WRITETIME(organisation_id) AS org, "
        "WRITETIME(created_at) AS created "
        f"FROM {s.cassandra_keyspace}.{s.cassandra_table} WHERE program_id=%s AND user_id=%s",
        (program, user)).one()
    return found._asdict()


def _planned(home: Path) -> bool:
    with DagsterInstance.from_config(str(home)) as instance:
        return any(START_TAG in r.dagster_run.tags
                   for r in instance.get_run_records(RunsFilter(job_name=JOB_NAME)))


def test_a_zombie_runs_writes_delivered_after_a_newer_runs_leave_the_newer_values(
    instance, kafka_topics: Settings, cassandra_session, tmp_path: Path
) -> None:
    s = kafka_topics
    old = event("p", "u", programName="old", userProfile={"userLocations": [
        {"type": "state", "name": "S1", "id": "s1", "code": "1"},
        {"type": "district", "name": "D1", "id": "d1", "code": "2"}]})
    produce(s, [old])
    home = tmp_path / "zombie-home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    # The zombie plans [0, 1), then stalls before its writes (a paused process).
    zombie = subprocess.Popen(
        [sys.executable, "-m", "programuser_dagster.cli", "drain"],
        env=env_for(s, home, **{PAUSE_BEFORE_WRITE_ENV: "12"}), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for("the zombie to plan its range", lambda: _planned(home), timeout=60, every=0.3)
        # Meanwhile a newer event arrives and a newer run commits [0, 2).
        new = event("p", "u", programName="new", userProfile={"userLocations": [
            {"type": "state", "name": "S2", "id": "s2", "code": "3"}]})
        produce(s, [new])
        assert run_partition(instance, s).success
        newer = row(cassandra_session, s, "p", "u")
        assert newer is not None and newer["program_name"] == "new"
        # Then the zombie wakes up and sends its older writes; its commit is refused.
        out, _ = zombie.communicate(timeout=120)
    finally:
        if zombie.poll() is None:
            zombie.kill()
    assert zombie.returncode == 0, out
    assert "superseded" in out, out
    after = row(cassandra_session, s, "p", "u")
    assert after is not None
    assert after["program_name"] == "new"
    # The newer map replaced the older one whole: no district left from the zombie's map.
    assert after["user_locations"] == {"state_name": "S2", "state_id": "s2", "state_code": "3"}
    assert offsets(s).committed == 2


def test_each_group_of_a_merged_row_is_written_at_its_own_events_time(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    produce(s, [
        event("p", "u", programName="a", userProfile={"rootOrg": {"id": "o1"}},
              createdAt="2020-01-01"),
        event("p", "u", programName="b"),
        event("p", "u", programName="c", createdAt="2021-02-02"),
    ])
    assert run_partition(instance, s).success
    times = _write_times(cassandra_session, s, "p", "u")
    base = times["org"]  # written last by the event at offset 0, at the run's base
    assert times == {"name": base + 2, "org": base, "created": base + 2}
    assert offsets(s).clock >= base + 3  # the commit's clock is past every write
    found = row(cassandra_session, s, "p", "u")
    assert found is not None and found["program_name"] == "c"
    assert found["organisation_id"] == "o1" and str(found["created_at"]) == "2021-02-02"


def test_a_new_event_still_updates_a_row_edited_by_hand(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u", programName="first", programExternalId="x1")])
    assert run_partition(instance, s).success
    table = f"{s.cassandra_keyspace}.{s.cassandra_table}"
    cassandra_session.execute(
        f"UPDATE {table} SET program_name = 'by hand', organisation_name = 'by hand' "
        "WHERE program_id = 'p' AND user_id = 'u'")
    produce(s, [event("p", "u", programName="second", programExternalId="x2")])
    assert run_partition(instance, s).success
    found = row(cassandra_session, s, "p", "u")
    assert found is not None
    assert found["program_name"] == "second" and found["program_externalid"] == "x2"
    # No event wrote the organisation since: the hand edit stays.
    assert found["organisation_name"] == "by hand"
    # The clock committed stays within seconds of the wall clock.
    assert abs(offsets(s).clock - time.time_ns() // 1000) < 5_000_000


def test_a_committed_clock_ahead_of_the_wall_clock_is_carried_forward(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    # E.g. a host whose clock ran ahead: the next run must write after the committed clock,
    # not at its own (earlier) wall clock. A minute is beyond the default skew bound (the run
    # refuses: tests/e2e/test_clock_skew.py), so the bound is raised here (issue 24).
    s = kafka_topics
    produce(s, [event("p", "u", programName="first")])
    assert run_partition(instance, s).success
    ahead = time.time_ns() // 1000 + 60_000_000  # a minute ahead
    kafka = kafka_resource(s)
    try:
        state = kafka.partition_offsets(0)
        with kafka.fenced_commit(0, state.state) as txn:
            txn.commit(1, clock=ahead)
    finally:
        kafka.close()
    produce(s, [event("p", "u", programName="second")])
    refused = run_partition(instance, s)
    assert not refused.success
    assert "s ahead of this host's clock" in failure_text(refused)
    assert run_partition(instance, s, clock_skew_max_s=120).success
    assert _write_times(cassandra_session, s, "p", "u")["name"] == ahead + 1
    assert offsets(s).clock >= ahead + 2
