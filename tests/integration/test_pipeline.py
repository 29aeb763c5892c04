"""The job program_user_info against the real Kafka broker and Cassandra node."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from dagster import (
    AssetKey,
    Out,
    ReexecutionOptions,
    execute_job,
    job,
    op,
)

from devtools.bench import cassandra_writer as bench_writer
from programuser_dagster.cassandra.client import CassandraWriteFailed
from programuser_dagster.core.clock import now_us
from programuser_dagster.core.report import RangeReport
from programuser_dagster.ingest.fault_pauses import PAUSE_BEFORE_WRITE_ENV
from programuser_dagster.ingest.job import commit_offsets
from programuser_dagster.ingest.range_rows import Chunking, RangeRows
from programuser_dagster.ingest.run_tags import PARTITION_TAG, START_TAG
from programuser_dagster.kafka.resource import KafkaResource
from programuser_dagster.resources import build_resources, kafka_resource
from programuser_dagster.settings import Settings
from tests.support.faults import RunInThread, job_env, logged, runs_of, wait_for
from tests.support.jobs import reconstructable_job_from_env
from tests.support.pipeline import (
    SEED_EVENT,
    create_schema,
    dead_letters,
    event,
    failure_text,
    offsets,
    produce,
    row,
    run_partition,
    step_metadata,
)
from tests.support.seed import EVENT_1, EVENT_2, EXPECTED_AFTER_BOTH, SEED_ROW

pytestmark = pytest.mark.stack


def test_seed_sample_becomes_its_row(instance, kafka_topics: Settings, cassandra_session) -> None:
    s = kafka_topics
    produce(s, [SEED_EVENT])
    result = run_partition(instance, s)
    assert result.success
    got = row(cassandra_session, s, SEED_EVENT["programId"], SEED_EVENT["userId"])
    assert got == SEED_ROW
    assert offsets(s).committed == 1
    md = step_metadata(result)
    assert (md["messages_read"], md["messages_written"], md["rows_upserted"]) == (1, 1, 1)
    # When the range's records first arrived: inside the run, shown beside its start.
    started = instance.get_run_record_by_id(result.run_id).start_time
    assert started <= md["first_read_at"] <= time.time()


def test_a_failed_write_closes_the_range_it_was_reading(kafka_topics: Settings) -> None:
    # The table's keyspace does not exist and may not be created: the first chunk's write
    # fails with the range's reader suspended after its first fetch.
    s = dataclasses.replace(kafka_topics, cassandra_keyspace=f"{kafka_topics.cassandra_keyspace}x",
                            cassandra_create_schema=False)
    produce(s, [event("p", f"u{i}") for i in range(30)], partition=0)
    kafka, io = kafka_resource(s), bench_writer(s)
    rows = RangeRows(kafka, RangeReport(partition=0, start=0, end=30, high_watermark=30,
                                        write_base=now_us()), Chunking(10, 1 << 20, 1 << 20), "")
    try:
        with pytest.raises(CassandraWriteFailed) as failed:
            io.upsert(rows)
        # The failure (kept here, with the reader's frame in its traceback) did not keep the
        # reader: it gave its assignment back at once, so a later reader of this kept
        # consumer is never unassigned by it (a drain keeps its resources across runs).
        assert failed.value is not None
        assert kafka.consumer.assignment() == []
        assert rows.report.read == 2  # the first chunk (a fifth) was read, nothing more
    finally:
        io.client.close()
        kafka.close()


def test_partial_update_across_runs_leaves_unwritten_columns_alone(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    produce(s, [EVENT_1])
    assert run_partition(instance, s).success
    produce(s, [EVENT_2])
    assert run_partition(instance, s).success
    assert row(cassandra_session, s, "p1", "u1") == EXPECTED_AFTER_BOTH
    assert offsets(s).committed == 2


def test_events_for_one_key_in_one_batch_merge_in_offset_order(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    produce(s, [EVENT_1, EVENT_2])
    result = run_partition(instance, s)
    assert result.success
    assert row(cassandra_session, s, "p1", "u1") == EXPECTED_AFTER_BOTH
    md = step_metadata(result)
    # Two events merged into one upsert count as two written.
    assert (md["messages_written"], md["rows_upserted"]) == (2, 1)


def test_a_key_in_two_chunks_of_one_run_ends_as_if_its_events_were_applied_in_order(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    # Chunks of 2: EVENT_1 and another key are written first, then EVENT_2 of the same key.
    produce(s, [EVENT_1, event("p9", "u9"), EVENT_2])
    result = run_partition(instance, s, chunk_messages=2)
    assert result.success
    assert row(cassandra_session, s, "p1", "u1") == EXPECTED_AFTER_BOTH
    md = step_metadata(result)
    # One upsert per key per chunk: p1/u1 twice.
    assert (md["messages_read"], md["messages_written"], md["rows_upserted"]) == (3, 3, 3)
    assert offsets(s).committed == 3


@pytest.mark.parametrize("chunk_messages", [None, 3], ids=["one chunk", "chunks of 3"])
def test_every_outcome_is_counted_and_dead_letters_keep_the_original_message(
    instance, kafka_topics: Settings, cassandra_session, chunk_messages: int | None
) -> None:
    s = kafka_topics
    values: list[bytes | dict | None] = [
        None,  # tombstone -> skipped: empty
        b"",  # zero bytes -> skipped: empty
        b"{not json",  # dead-lettered: not_json
        b"[1, 2]",  # dead-lettered: not_an_object
        event(7, "u"),  # dead-lettered: wrong_type:programId  # type: ignore[arg-type]
        event("p", "u", createdAt="12/01/2023"),  # dead-lettered: bad_date:createdAt
        event("p", " "),  # skipped: missing_id
        event("p", "u-ok", programName="fine"),  # written
    ]
    headers = [("trace", b"abc"), ("origin", b"\x00\xff")]
    before_ms = time.time_ns() // 1_000_000
    produced = produce(s, values, headers=headers, timestamp=1_700_000_000_000)
    result = run_partition(instance, s, chunk_messages=chunk_messages)
    assert result.success
    md = step_metadata(result)
    assert md["messages_read"] == 8
    assert md["messages_written"] == 1
    assert md["skipped_by_reason"] == {"empty": 2, "missing_id": 1}
    assert md["dead_lettered_by_reason"] == {
        "not_json": 1,
        "not_an_object": 1,
        "wrong_type:programId": 1,
        "bad_date:createdAt": 1,
    }
    committed = offsets(s)
    assert committed.committed == produced[-1] + 1
    assert row(cassandra_session, s, "p", "u-ok")["program_name"] == "fine"
    # The run started at offset 0: the row of offset 7 was written at base + 7
    # (programuser_dagster/core/clock.py).
    base = cassandra_session.execute(
        f"SELECT WRITETIME(program_name) AS t FROM {s.cassandra_keyspace}.{s.cassandra_table} "
        "WHERE program_id='p' AND user_id='u-ok'").one().t - produced[-1]
    assert committed.clock > base + produced[-1]

    letters = sorted(
        dead_letters(s, expected=4), key=lambda m: int(dict(m.headers())["source_offset"])
    )
    assert len(letters) == 4
    expected_reasons = ["not_json", "not_an_object", "wrong_type:programId", "bad_date:createdAt"]
    for letter, reason, source in zip(letters, expected_reasons, produced[2:6], strict=True):
        raw = values[2 + produced[2:6].index(source)]
        assert letter.value() == (raw if isinstance(raw, bytes) else orjson.dumps(raw))
        assert letter.key() == b"k"
        *copied, (name, stamp), write_time = letter.headers()
        assert copied == [
            *headers,
            ("reason", reason.encode()),
            ("source_topic", s.kafka_input_topic.encode()),
            ("source_partition", b"0"),
            ("source_offset", str(source).encode()),
        ]
        # The topic keeps the broker's append time, not the producer's 1_700_000_000_000.
        assert name == "source_timestamp"
        assert before_ms - 1000 <= int(stamp) <= time.time_ns() // 1_000_000
        assert write_time == ("write_time", str(base + source).encode())


def test_a_row_cassandra_refuses_is_dead_lettered(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    # The local node refuses collections of over 1000 items (a guardrail): a row no retry fixes.
    huge = [{"type": f"t{i}", "name": "n", "id": "i", "code": "c"} for i in range(400)]
    s = kafka_topics
    produced = produce(s, [event("p", "big", userProfile={"userLocations": huge}),
                           event("p", "small")])
    result = run_partition(instance, s)
    assert result.success
    md = step_metadata(result)
    assert md["dead_lettered_by_reason"] == {"rejected_by_cassandra": 1}
    assert md["messages_written"] == 1
    assert row(cassandra_session, s, "p", "big") is None
    assert row(cassandra_session, s, "p", "small") is not None
    [letter] = dead_letters(s, expected=1)
    assert dict(letter.headers())["source_offset"] == str(produced[0]).encode()
    assert offsets(s).committed == produced[-1] + 1


@pytest.mark.parametrize("how", ["whole", "from_failure"])
def test_failed_write_commits_nothing_and_a_reexecution_ends_as_if_nothing_failed(
    how: str, instance, kafka_topics: Settings, cassandra_session, monkeypatch
) -> None:
    s = kafka_topics
    for name, value in {
        "KAFKA_INPUT_TOPIC": s.kafka_input_topic,
        "KAFKA_GROUP_ID": s.kafka_group_id,
        "KAFKA_DLQ_TOPIC": s.kafka_dlq_topic,
        "CASSANDRA_KEYSPACE": s.cassandra_keyspace,
        "CASSANDRA_CREATE_SCHEMA": "false",
    }.items():
        monkeypatch.setenv(name, value)
    produce(s, [EVENT_1, EVENT_2])
    instance.add_dynamic_partitions("kafka_partitions", ["0"])
    # Make Cassandra refuse every write: the table is gone and the job may not recreate it.
    cassandra_session.execute(f"DROP TABLE {s.cassandra_keyspace}.{s.cassandra_table}")
    with execute_job(
        reconstructable_job_from_env(), instance, tags={PARTITION_TAG: "0"},
        raise_on_error=False,
    ) as failed:
        assert not failed.success
        message = failure_text(failed)
    assert "Nothing of partition 0 offsets [0, 2) was committed" in message
    assert offsets(s).committed is None

    create_schema(cassandra_session, s)
    options = (
        ReexecutionOptions.from_failure(failed.run_id, instance)
        if how == "from_failure"
        else ReexecutionOptions(parent_run_id=failed.run_id)
    )
    # The UI's re-execution keeps the parent's tags, the partition among them; so does this.
    with execute_job(
        reconstructable_job_from_env(), instance, reexecution_options=options,
        tags={PARTITION_TAG: "0"},
    ) as rerun:
        assert rerun.success
    assert row(cassandra_session, s, "p1", "u1") == EXPECTED_AFTER_BOTH
    assert offsets(s).committed == 2


def test_a_group_without_offsets_starts_at_the_low_watermark(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    produce(s, [event("p", f"u{i}") for i in range(5)])
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    for fut in admin.delete_records([TopicPartition(s.kafka_input_topic, 0, 2)]).values():
        fut.result(30)
    result = run_partition(instance, s)
    assert result.success
    md = step_metadata(result)
    assert (md["start_offset"], md["end_offset"], md["messages_read"]) == (2, 5, 3)
    assert md["lost_to_retention"] == 0
    assert row(cassandra_session, s, "p", "u1") is None
    assert row(cassandra_session, s, "p", "u2") is not None


def test_records_deleted_before_they_were_read_are_reported_lost_to_retention(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    produce(s, [event("p", f"u{i}") for i in range(2)])
    assert run_partition(instance, s).success  # committed 2
    produce(s, [event("p", f"u{i}") for i in range(2, 6)])
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    for fut in admin.delete_records([TopicPartition(s.kafka_input_topic, 0, 4)]).values():
        fut.result(30)
    result = run_partition(instance, s)
    md = step_metadata(result)
    assert (md["start_offset"], md["end_offset"], md["lost_to_retention"]) == (4, 6, 2)
    assert offsets(s).committed == 6


def test_records_deleted_while_a_run_reads_are_counted_lost_and_markers_are_not(
    instance, kafka_topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = kafka_topics
    # Transactions leave offsets a read_committed reader skips without loss: a committed one
    # (0-2, its marker 3), an aborted one (4-5, marker 6), a committed one (7-8, marker 9).
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers,
                         "transactional.id": f"{s.kafka_input_topic}-test"})
    producer.init_transactions(30)
    for users, commit in ((["a", "b", "c"], True), (["x", "y"], False), (["d", "e"], True)):
        producer.begin_transaction()
        for user in users:
            producer.produce(s.kafka_input_topic, orjson.dumps(event("p", user)), b"k",
                             partition=0)
        producer.flush(30)
        (producer.commit_transaction if commit else producer.abort_transaction)(30)
    assert offsets(s).high == 10
    # The run plans [0, 10), then waits; retention (delete_records) takes 0-1 meanwhile.
    monkeypatch.setenv(PAUSE_BEFORE_WRITE_ENV, "5")
    run = RunInThread(lambda: run_partition(instance, s))
    wait_for("the run to plan its range",
             lambda: any(START_TAG in r.tags for r in runs_of(instance)), timeout=60)
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    for fut in admin.delete_records([TopicPartition(s.kafka_input_topic, 0, 2)]).values():
        fut.result(30)
    result = run.join()
    assert result.success, failure_text(result)
    md = step_metadata(result)
    assert (md["start_offset"], md["end_offset"], md["messages_read"]) == (0, 10, 3)
    assert md["lost_to_retention"] == 2
    assert md["lost_to_retention_offsets"] == "[0, 2)"
    [mat] = [e.event_specific_data.materialization for e in result.all_events
             if e.event_type_value == "ASSET_MATERIALIZATION"]
    assert "2 lost to retention before they were read (offsets [0, 2))" in mat.description
    [check] = [e.event_specific_data for e in result.all_events
               if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert check.passed and check.metadata["lost_to_retention"].value == 2
    assert logged(instance, result.run_id, "while this run read it, before it got them: "
                  "offsets [0, 2)")
    assert offsets(s).committed == 10


class _ShortFetches(KafkaResource):
    """A reader that fetches one record at a time and keeps almost none ahead, so that records
    it has not fetched yet can be deleted in the middle of its range."""

    def _consumer_config(self) -> dict[str, Any]:
        return {**super()._consumer_config(), "fetch.max.bytes": 1024, "message.max.bytes": 1024,
                "max.partition.fetch.bytes": 1, "queued.max.messages.kbytes": 1,
                "queued.min.messages": 1}


def test_records_deleted_in_the_middle_of_a_range_being_read_are_counted_lost(
    kafka_topics: Settings,
) -> None:
    s = kafka_topics
    produce(s, [event("p", f"u{i}", programName="n" * 300) for i in range(30)])
    kafka = _ShortFetches(bootstrap_servers=s.kafka_bootstrap_servers,
                          input_topic=s.kafka_input_topic, group_id=s.kafka_group_id,
                          dlq_topic=s.kafka_dlq_topic)
    report = RangeReport(partition=0, start=0, end=30, high_watermark=30, write_base=now_us())
    rows = RangeRows(kafka, report, Chunking(1, 1 << 20, 1 << 20), "")
    read: list[int] = []
    try:
        for frame in rows:
            read += [o for offsets in frame["offsets"] for o in offsets]
            if len(read) == 1:  # the reader is at the range's start: retention takes 0-19
                admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
                for fut in admin.delete_records(
                        [TopicPartition(s.kafka_input_topic, 0, 20)]).values():
                    fut.result(30)
    finally:
        kafka.close()
    [(first, end)] = report.lost_offsets
    assert 1 <= first < end == 20, report.lost_offsets  # found inside the range, not at its start
    assert read == [*range(first), *range(20, 30)]
    assert (report.read, report.lost_to_retention, report.read_to_end) == (
        first + 10, 20 - first, True)


def test_the_range_ends_at_the_given_end_offset_and_max_messages(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    produce(s, [event("p", f"u{i}") for i in range(10)])
    md = step_metadata(run_partition(instance, s, end_offset=4))
    assert (md["start_offset"], md["end_offset"], md["messages_read"]) == (0, 4, 4)
    assert offsets(s).committed == 4
    result = program_user_info_with_max(instance, s, max_messages=3)
    md = step_metadata(result)
    assert (md["start_offset"], md["end_offset"]) == (4, 7)
    assert offsets(s).committed == 7


def program_user_info_with_max(instance, s: Settings, max_messages: int):
    from programuser_dagster.ingest.job import program_user_info

    return program_user_info.execute_in_process(
        run_config={"ops": {"flatten_events": {"config": {"max_messages": max_messages}}}},
        instance=instance,
        partition_key="0",
        resources=build_resources(s),
    )


def commit_step_resources(s: Settings) -> dict[str, Any]:
    """What the commit step needs: Kafka, and the IO manager (its commit is kept through it)."""
    resources = build_resources(s)
    return {"kafka": resources["kafka"], "cassandra_io_manager": resources["cassandra_io_manager"]}


def test_an_accounting_mismatch_records_the_failed_check_and_commits_nothing(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u")])

    # A report one message short, fed to the real commit step with the real Kafka resource.
    @op(out=Out(RangeReport))
    def short_report() -> RangeReport:
        return RangeReport(partition=0, start=0, end=1, high_watermark=1, read=1, written=0,
                           read_to_end=True)

    @job(resource_defs=commit_step_resources(s))
    def mismatch_job():
        commit_offsets(report=short_report())

    result = mismatch_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    evaluations = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert [(ev.asset_key, ev.check_name, ev.passed) for ev in evaluations] == [
        (AssetKey("program_enrollment"), "accounting_balanced", False)
    ]
    assert "read 1 != written 0" in failure_text(result)
    assert offsets(s).committed is None


def test_a_range_not_read_to_its_end_commits_nothing(instance, kafka_topics: Settings) -> None:
    s = kafka_topics
    produce(s, [event("p", "u"), event("p", "v")])

    # Balanced, but its reader stopped early (as a writer that stopped iterating would leave
    # it): committing its end would skip offsets nobody read.
    @op(out=Out(RangeReport))
    def partial_report() -> RangeReport:
        return RangeReport(partition=0, start=0, end=2, high_watermark=2, read=1, written=1)

    @job(resource_defs=commit_step_resources(s))
    def partial_job():
        commit_offsets(report=partial_report())

    result = partial_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    assert "was not read to its end; nothing was committed" in failure_text(result)
    assert offsets(s).committed is None


def test_a_commit_step_whose_receipt_is_gone_says_to_launch_a_new_run(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u")])
    instance.add_dynamic_partitions("kafka_partitions", ["0"])
    with job_env(s), execute_job(reconstructable_job_from_env(), instance,
                                 tags={PARTITION_TAG: "0"}) as first:
        assert first.success
    cassandra_session.execute(f"TRUNCATE {s.cassandra_keyspace}.write_receipts")
    options = ReexecutionOptions(parent_run_id=first.run_id, step_selection=["commit_offsets"])
    with job_env(s), execute_job(reconstructable_job_from_env(), instance,
                                 reexecution_options=options, tags={PARTITION_TAG: "0"},
                                 raise_on_error=False) as rerun:
        assert not rerun.success
        message = failure_text(rerun)
    assert f"No record of what run {first.run_id} wrote" in message
    assert "Launch a new run of the partition instead" in message
    assert offsets(s).committed == 1  # the first run's commit, untouched
