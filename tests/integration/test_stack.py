"""The local stack against the real servers: round trips, idempotent up, truthful status."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import time
import uuid
from typing import Any

import pytest
from cassandra import InvalidRequest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from devtools.stack import (
    ServerStatus,
    StackError,
    delete_topics,
    down,
    ensure_topics,
    main_stack,
    stack_dir,
    status,
    up,
)
from programuser_dagster.settings import INPUT_MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from programuser_dagster.settings import Settings

pytestmark = pytest.mark.stack


def test_kafka_round_trip_on_a_fresh_topic(kafka_topics: Settings) -> None:
    s = kafka_topics
    producer = Producer(
        {"bootstrap.servers": s.kafka_bootstrap_servers, "message.max.bytes": MAX_MESSAGE_BYTES}
    )
    big = b"x" * (4 * 1024 * 1024)  # the ~4 MB records the pipeline must carry
    sent = {b"k1": b'{"n": 1}', b"k2": b'{"n": 2}', b"big": big}
    errors: list[Any] = []
    for key, value in sent.items():
        producer.produce(
            s.kafka_input_topic,
            key=key,
            value=value,
            headers={"h": b"v"},
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )
    assert producer.flush(30) == 0
    assert errors == []

    consumer = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap_servers,
            "group.id": s.kafka_group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": MAX_MESSAGE_BYTES * 2,
            "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
        }
    )
    got: dict[bytes, bytes] = {}
    try:
        consumer.subscribe([s.kafka_input_topic])
        deadline = time.monotonic() + 60
        while len(got) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            assert msg.headers() == [("h", b"v")]
            got[msg.key()] = msg.value()
    finally:
        consumer.close()
    assert got == sent

    # Both topics exist with 4 partitions each.
    metadata = producer.list_topics(timeout=10)
    for topic in (s.kafka_input_topic, s.kafka_dlq_topic):
        assert len(metadata.topics[topic].partitions) == 4


def test_kafka_does_not_auto_create_topics(stack: Settings) -> None:
    missing = f"test-{uuid.uuid4().hex[:8]}.never-created"
    # Even a client that asks for auto-creation must be refused by the broker.
    producer = Producer(
        {
            "bootstrap.servers": stack.kafka_bootstrap_servers,
            "allow.auto.create.topics": True,
            "message.timeout.ms": 5000,
        }
    )
    errors: list[KafkaError] = []
    producer.produce(missing, b"v", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(20)
    assert errors and errors[0] is not None
    assert missing not in producer.list_topics(timeout=10).topics



def _topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    described = admin.describe_configs([ConfigResource("TOPIC", name) for name in names])
    return {
        resource.name: {key: entry.value for key, entry in future.result(30).items()}
        for resource, future in described.items()
    }


def test_topics_are_created_with_log_append_time(kafka_topics: Settings) -> None:
    s = kafka_topics
    configs = _topic_configs(s.kafka_bootstrap_servers, [s.kafka_input_topic, s.kafka_dlq_topic])
    for topic in (s.kafka_input_topic, s.kafka_dlq_topic):
        assert configs[topic]["message.timestamp.type"] == "LogAppendTime", topic


def test_an_existing_topic_without_log_append_time_is_corrected(stack: Settings) -> None:
    bootstrap = stack.kafka_bootstrap_servers
    name = f"test-{uuid.uuid4().hex[:8]}.old-topic"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # As an older version made it: CreateTime (the broker's default) and a lower message limit.
    old = NewTopic(name, 1, 1, config={"max.message.bytes": "1000000"})
    for future in admin.create_topics([old]).values():
        future.result(30)
    try:
        before = _topic_configs(bootstrap, [name])[name]
        assert before["message.timestamp.type"] == "CreateTime"
        assert before["max.message.bytes"] == "1000000"

        assert ensure_topics(bootstrap, {name: 1}, correct=True) == []
        after = _topic_configs(bootstrap, [name])[name]
        assert after["message.timestamp.type"] == "LogAppendTime"
        assert int(after["max.message.bytes"]) == MAX_MESSAGE_BYTES
        # Idempotent: a second pass finds nothing to change and changes nothing.
        assert ensure_topics(bootstrap, {name: 1}, correct=True) == []
        assert _topic_configs(bootstrap, [name])[name] == after

        # The broker now stamps records itself, whatever timestamp the producer asked for.
        producer = Producer({"bootstrap.servers": bootstrap})
        asked = 1_700_000_000_000
        sent_at = int(time.time() * 1000)
        producer.produce(name, b"v", timestamp=asked)
        assert producer.flush(30) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{name}-group",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.subscribe([name])
            deadline = time.monotonic() + 60
            msg = None
            while msg is None and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
        finally:
            consumer.close()
        assert msg is not None and msg.error() is None
        ts_type, ts = msg.timestamp()
        assert ts_type == TIMESTAMP_LOG_APPEND_TIME
        assert ts != asked
        assert sent_at - 5_000 <= ts <= int(time.time() * 1000) + 5_000
    finally:
        delete_topics(bootstrap, [name])

def test_cassandra_round_trip_in_a_fresh_keyspace(
    kafka_topics: Settings, cassandra_session: Any
) -> None:
    s = kafka_topics
    table = f"{s.cassandra_keyspace}.{s.cassandra_table}"
    row = {
        "program_id": "p1",
        "user_id": "u1",
        "program_externalid": "ext-1",
        "program_name": "Program One",
        "pii_consent_required": True,
        "user_locations": {"state_name": "Kerala", "district_id": "d-1"},
        "organisation_id": "o1",
        "organisation_name": "Org One",
        "user_type": "administrator",
        "user_sub_type": "hm",
        "created_at": dt.date(2024, 1, 2),
        "updated_at": dt.date(2024, 3, 4),
    }
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    insert = cassandra_session.prepare(f"INSERT INTO {table} ({columns}) VALUES ({marks})")
    cassandra_session.execute(insert, list(row.values()))
    got = cassandra_session.execute(
        f"SELECT {columns} FROM {table} WHERE program_id = %s AND user_id = %s", ("p1", "u1")
    ).one()
    assert got is not None
    values = got._asdict()
    values["user_locations"] = dict(values["user_locations"])
    values["created_at"] = values["created_at"].date()
    values["updated_at"] = values["updated_at"].date()
    assert values == row


def test_cassandra_refuses_a_location_map_over_1000_entries(
    kafka_topics: Settings, cassandra_session: Any
) -> None:
    s = kafka_topics
    insert = cassandra_session.prepare(
        f"INSERT INTO {s.cassandra_keyspace}.{s.cassandra_table} "
        "(program_id, user_id, user_locations) VALUES (?, ?, ?)"
    )
    cassandra_session.execute(insert, ("p", "ok", {f"k{i}": "v" for i in range(1000)}))
    with pytest.raises(InvalidRequest, match="items_per_collection"):
        cassandra_session.execute(insert, ("p", "refused", {f"k{i}": "v" for i in range(1001)}))


def test_up_twice_is_harmless(stack: Settings) -> None:
    # temporary=True as the session fixture does: a plain up() would adopt the servers.
    assert up(stack, temporary=True) == []
    assert up(stack, temporary=True) == []
    for server in status(stack):
        assert server.pid is not None, server
        assert server.answering, server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_status_tells_the_truth_after_down_and_after_a_crash(
    stack: Settings, tmp_path, monkeypatch
) -> None:
    """On a second, private Kafka (own ports and stack dir): stopping or killing the shared one
    would break any other test session or `make run` using it at the same time."""
    shared_lib = stack_dir() / "lib"
    monkeypatch.setenv("PROGRAMUSER_STACK_DIR", str(tmp_path))
    (tmp_path / "lib").symlink_to(shared_lib)  # same jars, no second Maven copy
    monkeypatch.setenv("PROGRAMUSER_KAFKA_CONTROLLER_PORT", str(_free_port()))
    private = Settings(kafka_bootstrap_servers=f"127.0.0.1:{_free_port()}")

    def kafka() -> ServerStatus:
        return status(private, ["kafka"])[0]

    try:
        assert up(private, ["kafka"]) == ["kafka"]
        assert kafka().pid is not None and kafka().answering
        assert up(private, ["kafka"]) == []

        assert down(["kafka"]) == ["kafka"]
        assert kafka().pid is None
        assert not kafka().answering
        assert down(["kafka"]) == []  # nothing left to stop

        assert up(private, ["kafka"]) == ["kafka"]
        pid = kafka().pid
        assert pid is not None and kafka().answering

        # A crash (SIGKILL, no clean shutdown): status must not report the dead pid.
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while kafka().pid is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert kafka().pid is None
        assert not kafka().answering
        assert down(["kafka"]) == []  # the dead process is not "stopped" again...
        assert not (tmp_path / "kafka" / "kafka.pid").exists()  # ...but its pid file is gone

        # A server that exits during startup is an error quoting its log, not a timeout.
        meta = tmp_path / "kafka" / "data" / "meta.properties"
        meta.write_text(meta.read_text().replace("node.id=1", "node.id=2"))
        with pytest.raises(StackError, match=r"(?s)kafka \(pid \d+\) exited.*node"):
            up(private, ["kafka"], timeout=60)
        assert kafka().pid is None
    finally:
        down(["kafka"])
    # The shared stack was never touched.
    monkeypatch.delenv("PROGRAMUSER_STACK_DIR")
    assert all(server.answering for server in status(stack))


def test_status_command_prints_both_servers(stack: Settings, capsys) -> None:
    assert main_stack(["status"]) == 0
    out = capsys.readouterr().out
    assert "kafka" in out and "cassandra" in out and "NOT answering" not in out


def test_port_taken_by_a_stranger_is_an_actionable_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PROGRAMUSER_STACK_DIR", str(tmp_path))
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{port}")
        with pytest.raises(StackError, match=rf"port {port} .*ss -ltnp"):
            up(settings, ["kafka"])
    assert main_stack(["up", "nosuchserver"]) == 1
