"""Dead letters near the size limits (issue 11, item 1): a letter always fits its topic, so a
poison message never blocks its partition.

The first tests are pure (programuser_dagster/kafka/dead_letters.py); the rest use the real broker:
the largest record the input topic accepts, a compressed ~20 MB record, and a dead-letter topic
smaller than the input topic, each next to small bad messages.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from devtools.produce import input_producer, produce_records
from devtools.stack import delete_topics
from programuser_dagster.core.report import RangeReport
from programuser_dagster.ingest.job import kafka_partitions, program_user_info
from programuser_dagster.ingest.range_rows import Chunking, RangeRows
from programuser_dagster.kafka.dead_letters import (
    TOO_LARGE,
    Source,
    letter,
    record_bytes,
    room_warning,
)
from programuser_dagster.resources import build_resources, kafka_resource
from programuser_dagster.settings import (
    DEAD_LETTER_MAX_MESSAGE_BYTES,
    INPUT_MAX_MESSAGE_BYTES,
    Settings,
)
from tests.support.pipeline import dead_letters, event, offsets, produce, row, run_partition

# ----------------------------------------------------------------------------- pure


def source(value: bytes | None, key: bytes | None = b"k", headers=()) -> Source:
    return Source("t", 3, 41, key, value, list(headers), 1_700_000_000_000)


OURS = [
    ("source_topic", b"t"),
    ("source_partition", b"3"),
    ("source_offset", b"41"),
    ("source_timestamp", b"1700000000000"),
]


def test_a_letter_that_fits_is_the_whole_record_with_our_headers_after_its_own() -> None:
    one = letter(source(b"{bad", headers=[("trace", b"x")]), "not_json", 10_000)
    assert (one.key, one.value, one.reason) == (b"k", b"{bad", "not_json")
    assert one.headers == [("trace", b"x"), ("reason", b"not_json"), *OURS]


def test_a_letter_too_large_for_the_topic_loses_its_value_and_says_why() -> None:
    value = b"x" * 5000
    one = letter(source(value, headers=[("trace", b"x")]), "not_json", 1000)
    assert (one.key, one.value, one.reason) == (b"k", b"", TOO_LARGE)
    assert one.headers == [
        ("trace", b"x"),
        ("reason", b"too_large"),
        *OURS,
        ("original_reason", b"not_json"),
        ("original_bytes", b"5000"),
    ]
    assert record_bytes(one.key, one.value, one.headers) <= 1000


def test_then_its_key_and_then_its_original_headers() -> None:
    no_key = letter(source(b"x" * 5000, key=b"K" * 2000), "not_json", 1000)
    assert (no_key.key, no_key.value, no_key.reason) == (None, b"", TOO_LARGE)
    bare = letter(source(b"x" * 5000, headers=[("h", b"H" * 2000)]), "not_json", 1000)
    assert (bare.key, bare.value) == (None, b"")
    assert [k for k, _ in bare.headers] == ["reason", *(k for k, _ in OURS), "original_reason",
                                            "original_bytes"]
    for one in (no_key, bare):
        assert record_bytes(one.key, one.value, one.headers) <= 1000


def test_the_room_warning_names_the_setting_and_the_consequence() -> None:
    assert room_warning("dlq", DEAD_LETTER_MAX_MESSAGE_BYTES, "in",
                        INPUT_MAX_MESSAGE_BYTES) is None
    text = room_warning("dlq", 100_000, "in", INPUT_MAX_MESSAGE_BYTES)
    assert text is not None
    assert "max.message.bytes=100000" in text
    assert f"at least {DEAD_LETTER_MAX_MESSAGE_BYTES}" in text
    assert "reason=too_large" in text


# ----------------------------------------------------------------------------- real broker

def _letters_by_offset(s: Settings, expected: int) -> dict[int, Any]:
    got = dead_letters(s, expected, timeout_s=30)
    by = {int(dict(m.headers())["source_offset"]): m for m in got}
    assert len(by) == len(got), "a letter was seen twice"
    return by


def _largest_accepted_value(s: Settings, probe_partition: int) -> bytes:
    """The largest value (not JSON) the project's own producer of the input topic takes.
    Probed on `probe_partition`, which the test must not read: purge() cannot take back a
    probe already sent, and on a busy machine one sometimes lands."""
    kafka = kafka_resource(s)
    producer = input_producer(kafka)
    size = INPUT_MAX_MESSAGE_BYTES
    try:
        while True:
            value = b"{" + b"x" * (size - 1)
            try:
                producer.produce(s.kafka_input_topic, value=value, key=b"big",
                                 partition=probe_partition)
            except KafkaException:
                size -= 16
                continue
            producer.purge()  # only probing the producer's own limit here
            return value
    finally:
        producer.flush(5)
        kafka.close()


@pytest.mark.stack
def test_the_largest_input_record_and_small_bad_ones_are_dead_lettered_whole(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    big = _largest_accepted_value(s, probe_partition=3)  # the test reads partition 0 only
    kafka = kafka_resource(s)
    try:
        produce_records(kafka, [(b"a", b"{small bad 1")], partition=0)
        produce_records(kafka, [(b"big", big)], partition=0)
        produce_records(kafka, [(b"b", b"{small bad 2")], partition=0)
    finally:
        kafka.close()
    produce(s, [event("p", "good")])
    result = run_partition(instance, s)
    assert result.success
    assert offsets(s).committed == 4
    assert row(cassandra_session, s, "p", "good") is not None
    letters = _letters_by_offset(s, 3)
    assert sorted(letters) == [0, 1, 2]
    assert letters[1].value() == big and letters[1].key() == b"big"
    assert dict(letters[1].headers())["reason"] == b"not_json"
    assert letters[0].value() == b"{small bad 1" and letters[2].value() == b"{small bad 2"
    print(f"\nlargest input value accepted uncompressed: {len(big)} bytes")


@pytest.mark.stack
def test_a_compressed_record_far_above_the_limit_becomes_a_too_large_letter(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    produce(s, [b"{small bad"])
    huge = b"{" + b"x" * (20 * 1024 * 1024)  # ~20 MB, compresses to a few KB
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers,
                         "compression.type": "zstd", "message.max.bytes": 32 * 1024 * 1024})
    producer.produce(s.kafka_input_topic, value=huge, key=b"huge", partition=0,
                     headers=[("trace", b"t1")])
    assert producer.flush(30) == 0
    produce(s, [event("p", "after")])
    result = run_partition(instance, s)
    assert result.success
    assert offsets(s).committed == 3
    letters = _letters_by_offset(s, 2)
    too = letters[1]
    assert (too.value(), too.key()) == (b"", b"huge")
    headers = dict(too.headers())
    assert headers["reason"] == TOO_LARGE.encode()
    assert headers["original_reason"] == b"not_json"
    assert headers["original_bytes"] == str(len(huge)).encode()
    assert headers["trace"] == b"t1"
    assert letters[0].value() == b"{small bad"


@pytest.mark.stack
def test_a_dead_letter_topic_smaller_than_the_input_topic_warns_and_keeps_moving(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    small = dataclasses.replace(s, kafka_dlq_topic=f"{s.kafka_dlq_topic}.small")
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    for future in admin.create_topics([NewTopic(small.kafka_dlq_topic, 1, 1,
                                                config={"max.message.bytes": "100000"})]).values():
        future.result(30)
    try:
        # 40 small bad letters of 3 KB (120 KB together: more than the topic takes in one
        # batch) around one of 300 KB, which cannot fit.
        values = [b"{" + bytes([65 + i % 26]) * 3000 for i in range(40)]
        values.insert(20, b"{" + b"y" * 300_000)
        produce(small, values)
        result = run_partition(instance, small)
        assert result.success
        assert offsets(small).committed == 41
        text = " ".join(e.user_message for e in instance.all_logs(result.run_id))
        assert "allows max.message.bytes=100000, less than input topic" in text
        assert "reason=too_large" in text
        letters = _letters_by_offset(small, 41)
        assert sorted(letters) == list(range(41))
        assert dict(letters[20].headers())["reason"] == TOO_LARGE.encode()
        assert letters[20].value() == b""
        for o in (*range(20), *range(21, 41)):
            assert letters[o].value() == values[o], o
    finally:
        delete_topics(s.kafka_bootstrap_servers, [small.kafka_dlq_topic])


@pytest.mark.stack
def test_a_chunk_is_cut_by_bytes_as_well_as_by_messages(kafka_topics: Settings) -> None:
    s = kafka_topics
    produce(s, [b"{" + b"z" * 300_000 for _ in range(10)])
    kafka = kafka_resource(s)
    try:
        report = RangeReport(partition=0, start=0, end=10, high_watermark=10)
        rows = RangeRows(kafka, report, Chunking(messages=10_000, bytes=1_000_000,
                                                 dead_letter_bytes=1 << 30), on_failure="")
        frames = list(rows)
    finally:
        kafka.close()
    # The first chunk is a fifth (200 KB: one message), the others ~1 MB (4 messages).
    assert report.read == 10 and len(report.dead_letters) == 10 and report.read_to_end
    assert len(frames) == 4, len(frames)


@pytest.mark.stack
def test_a_range_is_cut_at_the_chunk_where_its_letters_reach_their_count(
    kafka_topics: Settings,
) -> None:
    s = kafka_topics
    produce(s, [b"not json"] * 30)
    kafka = kafka_resource(s)
    try:
        report = RangeReport(partition=0, start=0, end=30, high_watermark=30)
        chunking = Chunking(messages=10, bytes=1 << 30, dead_letter_bytes=1 << 30, dead_letters=3)
        frames = list(RangeRows(kafka, report, chunking, on_failure=""))
    finally:
        kafka.close()
    # Chunks of 2 (a fifth) then 10: the second takes the letters past 3, and the range ends
    # with it, at offset 12; the rest is the next run's.
    assert len(frames) == 2
    assert (report.end, report.requested_end, report.read) == (12, 30, 12)
    assert len(report.dead_letters) == 12 and report.read_to_end


@pytest.mark.stack
def test_a_dead_letter_topic_that_cannot_be_described_is_warned_about(
    kafka_topics: Settings,
) -> None:
    gone = dataclasses.replace(kafka_topics, kafka_dlq_topic=f"{kafka_topics.kafka_dlq_topic}.x")
    kafka = kafka_resource(gone)
    try:
        limit, warnings = kafka.dead_letter_room()
        # Not kept: the next commit of a drain that keeps this resource asks again, and
        # finds the topic once it exists.
        assert kafka.dead_letter_room() == (limit, warnings)
        admin = AdminClient({"bootstrap.servers": gone.kafka_bootstrap_servers})
        admin.create_topics(
            [NewTopic(gone.kafka_dlq_topic, 1, 1, config={"max.message.bytes": "2000000"})]
        )[gone.kafka_dlq_topic].result(30)
        assert kafka.dead_letter_room()[0] == 2_000_000
    finally:
        kafka.close()
        delete_topics(gone.kafka_bootstrap_servers, [gone.kafka_dlq_topic])
    assert limit == 1_000_000  # Kafka's default, not ours: a letter never exceeds it
    [warning] = warnings
    assert warning.startswith(f"Could not read the max.message.bytes of dead-letter topic "
                              f"{gone.kafka_dlq_topic!r}")
    assert "does it exist, and may this client DescribeConfigs on it?" in warning
    assert "reason=too_large" in warning


@pytest.mark.stack
def test_a_letter_exactly_at_the_topic_limit_is_taken_whole_one_byte_more_is_too_large(
    kafka_topics: Settings,
) -> None:
    """record_bytes is a safe bound on the broker's own count at the very edge: the letter
    whose bound equals the topic's max.message.bytes is accepted by the real broker."""
    s = kafka_topics
    small = dataclasses.replace(s, kafka_dlq_topic=f"{s.kafka_dlq_topic}.edge")
    limit = 100_000
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    for future in admin.create_topics([NewTopic(small.kafka_dlq_topic, 1, 1, config={
            "max.message.bytes": str(limit)})]).values():
        future.result(30)
    try:
        ts = 1_700_000_000_000
        headers = letter(Source(s.kafka_input_topic, 0, 0, b"k", b"", [], ts), "not_json",
                         limit).headers
        size = limit - record_bytes(b"k", b"", headers)
        values = [b"{" + b"x" * (size - 1), b"{" + b"x" * size]  # at offsets 0 and 1
        produce(small, values, key=b"k", timestamp=ts)
        kafka = kafka_resource(small)
        try:
            state = kafka.partition_offsets(0).state
            with kafka.fenced_commit(0, state) as txn:
                assert txn.limit == limit
                assert txn.deliver([(0, "not_json"), (1, "not_json")]) == {
                    "not_json": 1, TOO_LARGE: 1}
                txn.commit(2)
        finally:
            kafka.close()
        letters = _letters_by_offset(small, 2)
        assert letters[0].value() == values[0]
        assert record_bytes(letters[0].key(), letters[0].value(),
                            list(letters[0].headers())) == limit
        assert letters[1].value() == b""
        assert dict(letters[1].headers())["original_bytes"] == str(size + 1).encode()
    finally:
        delete_topics(s.kafka_bootstrap_servers, [small.kafka_dlq_topic])


@pytest.mark.stack
def test_a_run_ends_its_range_where_its_dead_letters_fill_one_commit(
    instance, kafka_topics: Settings
) -> None:
    """The letters of one range go in one transaction, which must end in time: a run stops at
    the chunk where they reach dead_letter_bytes, commits that much, and the next run goes on."""
    s = kafka_topics
    values: list[Any] = [b"{" + bytes([97 + i]) * 100_000 for i in range(6)]
    values.append(event("p", "last"))
    produce(s, values)
    config = {"ops": {"flatten_events": {"config": {"chunk_messages": 5,
                                                    "dead_letter_bytes": 250_000}}}}
    resources = build_resources(s)
    instance.add_dynamic_partitions(kafka_partitions.name or "", ["0"])
    ends = []
    for _ in range(2):
        result = program_user_info.execute_in_process(
            run_config=config, instance=instance, partition_key="0", resources=resources)
        assert result.success
        ends.append(offsets(s).committed)
    # Chunks [0] (a fifth of 5, at least 1), then [1-5]: the letters reach 600 KB there, so the
    # first run ends at 6; the second reads the rest.
    assert ends == [6, 7]
    letters = _letters_by_offset(s, 6)
    assert [letters[o].value() for o in range(6)] == values[:6]
