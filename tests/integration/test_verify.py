"""verify against the real Kafka broker and Cassandra node: drained partitions match, a cell
changed by hand and a row deleted by hand are reported, with the offsets of their events."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from dagster import SensorResult

import programuser_dagster.incidents.verify as verify_module
from programuser_dagster.cli import main
from programuser_dagster.incidents.verify import verify
from programuser_dagster.ingest.checks import MATCHES_SOURCE_CHECK, matches_source
from programuser_dagster.settings import Settings
from tests.support.pipeline import (
    SEED_EVENT,
    cli_env,
    event,
    health_tick,
    produce,
    run_partition,
    temporary_env,
)
from tests.support.seed import EVENT_1, EVENT_2

pytestmark = pytest.mark.stack

USER_B = event("p1", "u2", programName="Bee", userProfile={"rootOrg": {"id": "o9"}})


def drained_two(instance: Any, s: Settings) -> Settings:
    """p1/u1 (offset 0) and p1/u2 (offset 1), drained."""
    produce(s, [EVENT_1, USER_B])
    assert run_partition(instance, s).success
    return s


def table(s: Settings) -> str:
    return f"{s.cassandra_keyspace}.{s.cassandra_table}"


def test_a_drained_partition_matches_and_hand_edits_are_reported(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    # offsets 0-4: p1/u1 written twice (EVENT_2 writes its rootOrg at 1), a dead letter,
    # the seed's key, p1/u2
    produce(s, [EVENT_1, EVENT_2, b"not json", SEED_EVENT, USER_B])
    assert run_partition(instance, s).success
    # above the committed offset, not drained: a new key and a new name for p1/u1
    produce(s, [event("p9", "u9"), event("p1", "u1", programName="C")])

    report = verify(s, recheck_delay_s=0.1)
    assert report.ok, report.describe()
    assert (report.records_read, report.keys_checked) == (5, 3)
    assert report.records_not_written == {"dead_lettered": 1}
    lines = report.describe().splitlines()
    assert lines[0] == ("partition 0: 5 records below committed 5 (from 0), 3 keys checked, "
                        "0 rows missing, 0 cells differ")
    assert lines[1:4] == [f"partition {p}: never committed, nothing to check" for p in (1, 2, 3)]

    cassandra_session.execute(
        f"UPDATE {table(s)} SET organisation_id = 'edited' WHERE program_id = 'p1' "
        "AND user_id = 'u1'")
    cassandra_session.execute(
        f"DELETE FROM {table(s)} WHERE program_id = 'p1' AND user_id = 'u2'")

    report = verify(s, [0], recheck_delay_s=0.1)
    assert not report.ok
    assert report.keys_checked == 3
    assert (report.rows_missing, report.missing_sample) == (1, [(0, 4)])
    assert report.cells_differing == {"organisation_id": 1}
    assert report.cell_samples == {"organisation_id": [(0, 1)]}
    # the record above the committed offset writes p1/u1's always-written group again, but
    # those cells match what is committed: nothing is left unverified
    assert report.cells_unverified == 0
    assert [p.partition for p in report.partitions] == [0]
    text = report.describe() + repr(report)
    assert "organisation_id: 1 cells differ, written by (partition, offset): 0/1" in text
    for value in ("edited", "p1", "u1", "u2", "o2", "Bee", SEED_EVENT["userId"]):
        assert value not in text


def test_a_difference_a_run_wrote_meanwhile_is_not_reported(
    instance, kafka_topics: Settings, cassandra_session, monkeypatch
) -> None:
    s = kafka_topics
    produce(s, [EVENT_1])
    assert run_partition(instance, s).success
    produce(s, [event("p1", "u1", programName="Newer")])
    read_retained = verify_module._read_retained
    ran: list[bool] = []

    def then_a_run(*args: Any) -> None:
        # The snapshot is taken: a run commits the next record while verify reads.
        read_retained(*args)
        if not ran:
            ran.append(run_partition(instance, s).success)

    monkeypatch.setattr(verify_module, "_read_retained", then_a_run)
    report = verify(s, [0], recheck_delay_s=0.1)
    assert ran == [True]
    assert report.ok, report.describe()
    # the record committed since the snapshot is the expectation the re-check checks against
    assert (report.records_read, report.keys_checked, report.cells_unverified) == (1, 1, 0)


def test_the_recheck_reports_what_persists_only(
    instance, kafka_topics: Settings, cassandra_session, monkeypatch
) -> None:
    s = drained_two(instance, kafka_topics)
    cassandra_session.execute(f"DELETE FROM {table(s)} WHERE program_id = 'p1' AND user_id = 'u1'")
    cassandra_session.execute(f"DELETE FROM {table(s)} WHERE program_id = 'p1' AND user_id = 'u2'")

    read_since = verify_module._read_since

    def one_row_back_first(*args: Any) -> None:  # after the delay, before the re-check
        produce(s, [EVENT_1])
        assert run_partition(instance, s).success
        read_since(*args)

    monkeypatch.setattr(verify_module, "_read_since", one_row_back_first)
    report = verify(s, [0], recheck_delay_s=0.1)
    # p1/u1 is written again by offset 2, after the snapshot; p1/u2 is still missing
    assert (report.keys_checked, report.rows_missing, report.missing_sample) == (2, 1, [(0, 1)])


def test_a_wrong_cell_behind_a_record_not_committed_yet_is_not_a_match(
    instance, kafka_topics: Settings, cassandra_session, capsys
) -> None:
    """Issue 24: the re-check skipped every cell a later record writes, committed or not, and
    called a corrupted cell a match while a record of its key waited (lag)."""
    s = kafka_topics
    produce(s, [EVENT_1])
    assert run_partition(instance, s).success
    produce(s, [event("p1", "u1", programName="Later")])  # offset 1: not committed
    cassandra_session.execute(f"UPDATE {table(s)} SET program_name = 'corrupted' "
                              "WHERE program_id = 'p1' AND user_id = 'u1'")
    with temporary_env(cli_env(s)):
        assert main(["verify", "--partition", "0"]) == 1
    out = capsys.readouterr().out
    assert "0 cells differ" in out  # the cell is not counted as differing ...
    assert ("1 differing cells could not be checked: records not committed yet write them "
            "again, at (partition, offset): 0/1.") in out  # ... but as unverified
    verdict = matches_source(s, 0, 0, 1)
    assert not verdict.passed
    assert verdict.metadata["cells_unverified"] == 1
    assert "could not be checked" in verdict.description and "0/1" in verdict.description


def test_the_verify_command_exits_0_on_a_match_1_on_a_difference_2_on_bad_arguments(
    instance, kafka_topics: Settings, cassandra_session, capsys
) -> None:
    s = drained_two(instance, kafka_topics)
    with temporary_env(cli_env(s)):
        assert main(["verify", "--partition", "0"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("partition 0: 2 records below committed 2 (from 0), 2 keys "
                                 "checked, 0 rows missing, 0 cells differ")
        cassandra_session.execute(f"DELETE FROM {table(s)} WHERE program_id='p1' AND "
                                  "user_id='u2'")
        assert main(["verify"]) == 1
        assert "missing rows, last written by (partition, offset): 0/1" in \
            capsys.readouterr().out
        assert main(["verify", "--partition", "7"]) == 2
        assert "has no partition [7]" in capsys.readouterr().err


def test_verify_with_the_broker_unreachable_exits_3(kafka_topics: Settings) -> None:
    env = cli_env(kafka_topics, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
                  KAFKA_REQUEST_TIMEOUT_S="3")
    done = subprocess.run([sys.executable, "-m", "programuser_dagster.cli", "verify"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "Kafka at 127.0.0.1:1" in done.stderr


def test_the_health_sensor_checks_the_last_runs_range_once(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    produce(s, [event("p", f"u{i}", programName=f"n{i}") for i in range(30)])
    assert run_partition(instance, s).success

    def tick(cursor: str | None) -> tuple[SensorResult, str | None]:
        return health_tick(instance, s, cursor)

    result, cursor = tick(None)
    [check] = [e for e in result.asset_events if e.check_name == MATCHES_SOURCE_CHECK]
    assert check.passed, check.description
    assert check.metadata["keys_checked"].value == 30
    # The same range is not checked again on the next tick.
    again, _ = tick(cursor)
    assert not [e for e in again.asset_events if e.check_name == MATCHES_SOURCE_CHECK]
    # A row of the last range lost: the check (launched from the UI, or the next range's) says so.
    cassandra_session.execute(f"DELETE FROM {table(s)} WHERE program_id='p' AND user_id='u3'")
    verdict = matches_source(s, 0, 0, 30)
    assert not verdict.passed and verdict.metadata["rows_missing"] == 1
    assert "verify --partition 0" in verdict.description
