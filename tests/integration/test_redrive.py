"""redrive (issue 13, item 3) on the real servers: letters today's rules accept are written at
their events' write time, so they change exactly the columns no later event of their key
wrote; a dry run writes nothing; what was re-driven is recorded, so nothing is written twice
whatever the filters; among copies of a source offset the latest is kept; a too_large letter's
value is re-read from the input topic, and only if the record there is still its original."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)
from dagster import AssetKey, DagsterEventType, DagsterInstance, EventRecordsFilter

from devtools.stack import INPUT_TOPIC_CONFIG, delete_topics
from programuser_dagster.cli import main
from programuser_dagster.core import events
from programuser_dagster.incidents.jobs import redrive_job
from programuser_dagster.resources import build_resources
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO
from tests.support.faults import wait_for
from tests.support.pipeline import (
    cli_env,
    dead_letters,
    event,
    offsets,
    produce,
    row,
    run_partition,
    temporary_env,
)

pytestmark = pytest.mark.stack

# Refused today (wrong_type:requestForPIIConsent), accepted once the rule is "fixed" below.
BAD = event("p", "u", requestForPIIConsent="maybe", programName="from the letter",
            userProfile={"rootOrg": {"id": "o-letter"}}, createdAt="2020-01-01")


@pytest.fixture
def fixed_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule fix an operator would deploy before re-driving: "maybe" now means true."""
    monkeypatch.setitem(events._CONSENT, "maybe", True)


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


def _redrive(s: Settings, home: Path, *args: str, capsys: Any) -> tuple[int, list[str]]:
    capsys.readouterr()  # what the test printed before
    with temporary_env(cli_env(s, home)):
        code = main(["redrive", *args])
    out, err = capsys.readouterr()
    assert not err.strip() or code != 0, err
    return code, out.splitlines()


def _shrink_dead_letter_topic(s: Settings) -> None:
    """Letters of records over 4000 bytes lose their value (reason too_large)."""
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    resource = ConfigResource("TOPIC", s.kafka_dlq_topic, incremental_configs=[ConfigEntry(
        "max.message.bytes", "4000", incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def _write_time(session: Any, s: Settings, column: str) -> int:
    return session.execute(
        f"SELECT WRITETIME({column}) AS t FROM {s.cassandra_keyspace}.{s.cassandra_table} "
        "WHERE program_id='p' AND user_id='u'").one().t


def test_a_redriven_letter_changes_exactly_the_columns_no_later_event_wrote(
    instance, kafka_topics: Settings, cassandra_session, tmp_path: Path, capsys, fixed_rule
) -> None:
    s = kafka_topics
    # The bad event, then a later good one of the same key writing only the always-written
    # columns (name, external id, consent).
    produce(s, [BAD, event("p", "u", programName="later")])
    with pytest.MonkeyPatch.context() as today:  # processed before the fix
        today.delitem(events._CONSENT, "maybe")
        assert run_partition(instance, s).success
    [letter] = dead_letters(s, expected=1)
    header_time = int(dict(letter.headers())["write_time"])
    before = row(cassandra_session, s, "p", "u")
    home = _home(tmp_path)

    code, lines = _redrive(s, home, capsys=capsys)
    assert code == 0
    assert lines == [
        "source partition 0: 1 letters match, 0 older copies dropped, 0 already re-driven; "
        "1 would be re-driven, 0 still fail",
        "dry run: nothing was written; add --apply (the job: apply) to re-drive.",
    ]
    assert row(cassandra_session, s, "p", "u") == before

    code, lines = _redrive(s, home, "--apply", capsys=capsys)
    assert code == 0 and lines[0].endswith("1 re-driven, 0 still fail"), lines
    after = row(cassandra_session, s, "p", "u")
    assert after is not None
    # Written by the later event: kept. Written by no later event: the letter's.
    assert after["program_name"] == "later" and after["pii_consent_required"] is False
    assert after["organisation_id"] == "o-letter" and str(after["created_at"]) == "2020-01-01"
    assert _write_time(cassandra_session, s, "organisation_id") == header_time
    assert _write_time(cassandra_session, s, "program_name") == header_time + 1
    with DagsterInstance.from_config(str(home)) as dagster:
        [record] = dagster.get_event_records(EventRecordsFilter(
            DagsterEventType.ASSET_OBSERVATION, asset_key=AssetKey("program_enrollment")))
        md = record.asset_observation.metadata
        assert md["redriven"].value == 1 and md["redrive_by"].value.startswith("CLI by ")


def test_nothing_is_written_twice_and_another_filter_skips_nothing(
    instance, kafka_topics: Settings, cassandra_session, tmp_path: Path, capsys, fixed_rule
) -> None:
    s = kafka_topics
    for p in (0, 1):
        produce(s, [{**BAD, "userId": f"u{p}"}], partition=p)
    with pytest.MonkeyPatch.context() as today:
        today.delitem(events._CONSENT, "maybe")
        for p in (0, 1):
            assert run_partition(instance, s, partition=p).success
    home = _home(tmp_path)
    code, lines = _redrive(s, home, "--partition", "0", "--apply", capsys=capsys)
    assert code == 0 and len([ln for ln in lines if ln.startswith("source partition")]) == 1
    assert row(cassandra_session, s, "p", "u0") is not None
    assert row(cassandra_session, s, "p", "u1") is None
    cassandra_session.execute(f"DELETE FROM {s.cassandra_keyspace}.{s.cassandra_table} "
                              "WHERE program_id='p' AND user_id='u0'")
    code, lines = _redrive(s, home, "--apply", capsys=capsys)
    assert code == 0
    assert lines[0].startswith("source partition 0: 1 letters match, 0 older copies dropped, "
                               "1 already re-driven; 0 re-driven"), lines
    assert lines[1].endswith("0 already re-driven; 1 re-driven, 0 still fail"), lines
    # Written once: the hand delete after the first re-drive stays.
    assert row(cassandra_session, s, "p", "u0") is None
    assert row(cassandra_session, s, "p", "u1") is not None


def test_among_copies_of_one_source_offset_the_latest_write_time_is_redriven(
    instance, kafka_topics: Settings, cassandra_session, tmp_path: Path, capsys, fixed_rule
) -> None:
    s = kafka_topics
    produce(s, [BAD])
    home = _home(tmp_path)
    with pytest.MonkeyPatch.context() as today:
        today.delitem(events._CONSENT, "maybe")
        assert run_partition(instance, s).success
        # A replay delivers the letter again, with a later write time.
        with temporary_env(cli_env(s, home)):
            assert main(["replay", "--to-earliest", "--apply"]) == 0
        assert run_partition(instance, s).success
    copies = sorted(int(dict(m.headers())["write_time"]) for m in dead_letters(s, expected=2))
    assert len(copies) == 2 and copies[0] < copies[1]
    capsys.readouterr()
    code, lines = _redrive(s, home, "--apply", capsys=capsys)
    assert code == 0
    assert lines[0] == ("source partition 0: 2 letters match, 1 older copies dropped, "
                        "0 already re-driven; 1 re-driven, 0 still fail")
    assert _write_time(cassandra_session, s, "organisation_id") == copies[1]


def test_a_too_large_letter_is_reread_from_the_input_topic_and_one_still_bad_stays(
    instance, kafka_topics: Settings, cassandra_session, tmp_path: Path, capsys, fixed_rule
) -> None:
    s = kafka_topics
    _shrink_dead_letter_topic(s)
    big = {**BAD, "_ignored": "x" * 6000}
    produce(s, [big, event("p", "v", createdAt="12/01/2023")])
    with pytest.MonkeyPatch.context() as today:
        today.delitem(events._CONSENT, "maybe")
        assert run_partition(instance, s).success
    reasons = sorted(dict(m.headers())["reason"] for m in dead_letters(s, expected=2))
    assert reasons == [b"bad_date:createdAt", b"too_large"]
    code, lines = _redrive(s, _home(tmp_path), "--apply", capsys=capsys)
    assert code == 0
    assert lines[0] == ("source partition 0: 2 letters match, 0 older copies dropped, "
                        "0 already re-driven; 1 re-driven, 1 still fail (bad_date:createdAt 1)")
    found = row(cassandra_session, s, "p", "u")
    assert found is not None and found["organisation_id"] == "o-letter"
    # Its original reason is what --reason matches.
    code, lines = _redrive(s, _home(tmp_path), "--reason", "wrong_type:requestForPIIConsent",
                           capsys=capsys)
    assert lines[0].startswith("source partition 0: 1 letters match")


def test_a_too_large_letter_whose_offset_now_holds_another_record_is_unrecoverable(
    instance, kafka_topics: Settings, cassandra_session, tmp_path: Path, capsys, fixed_rule
) -> None:
    s = kafka_topics
    _shrink_dead_letter_topic(s)
    big = {**BAD, "_ignored": "x" * 6000}
    produce(s, [big, {**big, "userId": "v"}])
    with pytest.MonkeyPatch.context() as today:
        today.delitem(events._CONSENT, "maybe")
        assert run_partition(instance, s).success
    sent, _ = sorted(dead_letters(s, expected=2), key=lambda m: dict(m.headers())[
        "source_offset"])
    headers = dict(sent.headers())
    assert (headers["reason"], headers["source_offset"], sent.key()) == (b"too_large", b"0", b"k")
    # The input topic is recreated (CreateTime, so the record's time can be the original's):
    # offset 0 now holds another user's event of the same size and time, under another key;
    # offset 1 holds nothing.
    delete_topics(s.kafka_bootstrap_servers, [s.kafka_input_topic])
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    config = {**INPUT_TOPIC_CONFIG, "message.timestamp.type": "CreateTime"}

    def recreated() -> bool:
        future = admin.create_topics([NewTopic(s.kafka_input_topic, s.kafka_partitions, 1,
                                               config=config)])[s.kafka_input_topic]
        try:
            future.result(30)
        except KafkaException:  # the deletion is still under way
            return False
        return True

    wait_for("the input topic to be created again", recreated, timeout=60, every=1.0)
    other = {**big, "userId": "w"}
    assert len(orjson.dumps(other)) == len(orjson.dumps(big))
    assert produce(s, [other], key=b"j", timestamp=int(headers["source_timestamp"])) == [0]
    code, lines = _redrive(s, _home(tmp_path), "--apply", capsys=capsys)
    assert code == 0
    assert lines[0] == (
        "source partition 0: 2 letters match, 0 older copies dropped, 0 already re-driven; "
        "0 re-driven, 0 still fail, 2 unrecoverable (too_large: another record is now at the "
        "original's offset (its key differs from the letter's: the input topic was recreated, "
        "or is a mirror): 1, too_large: the original is no longer retained in the input "
        "topic: 1)")
    for user in ("u", "v", "w"):
        assert row(cassandra_session, s, "p", user) is None


def test_the_redrive_job_dry_runs_then_applies(
    instance, kafka_topics: Settings, cassandra_session, fixed_rule
) -> None:
    s = kafka_topics
    produce(s, [BAD])
    with pytest.MonkeyPatch.context() as today:
        today.delitem(events._CONSENT, "maybe")
        assert run_partition(instance, s).success
    resources = build_resources(s)
    dry = redrive_job.execute_in_process(instance=instance, resources=resources)
    assert dry.success and row(cassandra_session, s, "p", "u") is None
    applied = redrive_job.execute_in_process(
        run_config={"ops": {"redrive_letters": {"config": {"apply": True}}}},
        instance=instance, resources=build_resources(s))
    assert applied.success and row(cassandra_session, s, "p", "u") is not None
    [observation] = [e for e in applied.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    md = observation.event_specific_data.asset_observation.metadata
    assert md["redriven"].value == 1
    assert offsets(s).committed == 1  # a re-drive never moves an offset
