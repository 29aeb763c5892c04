"""Why a read got nothing (issue 24, item 9), on the real broker: "Is the broker up?" only when
it is down; a producer transaction left open on the topic, and a range past the log end, say
what they are."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from programuser_dagster.kafka.resource import KafkaUnavailable
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings
from tests.support.pipeline import event, produce

pytestmark = pytest.mark.stack


def read_fails(s: Settings, start: int, end: int) -> str:
    kafka = kafka_resource(s)
    try:
        with pytest.raises(KafkaUnavailable) as failed:
            kafka.read_range(0, start, end, idle_timeout_s=2)
    finally:
        kafka.close()
    return str(failed.value)


def test_a_producer_transaction_left_open_is_named_not_the_broker(
    kafka_topics: Settings,
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u0")])  # offset 0: readable
    other = Producer({"bootstrap.servers": s.kafka_bootstrap_servers,
                      "transactional.id": f"{s.kafka_input_topic}-another-tool"})
    other.init_transactions(30)
    other.begin_transaction()
    try:
        other.produce(s.kafka_input_topic, value=b"{}", partition=0)  # offset 1: open
        assert other.flush(30) == 0
        text = read_fails(s, 0, 2)
        assert "Is the broker up" not in text
        assert ("while reading" in text and "at offset 1 (range ends at 2), though records "
                "reach 2: offset 1 is in a producer transaction still open on the topic") in text
    finally:
        other.abort_transaction(30)


def test_a_range_past_the_log_end_is_named_not_the_broker(kafka_topics: Settings) -> None:
    s = kafka_topics
    produce(s, [event("p", "u0")])
    text = read_fails(s, 0, 5)
    assert "Is the broker up" not in text
    assert "because the partition ends at 1: offsets 1 to 5 hold no record" in text
