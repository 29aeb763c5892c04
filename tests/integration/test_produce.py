"""`python -m devtools produce` against the real broker: refused lines are said with their line
number and reason, the good lines still reach the topic, and the exit code says so."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from programuser_dagster.settings import INPUT_MAX_MESSAGE_BYTES, Settings
from tests.support.pipeline import cli_env, event

pytestmark = pytest.mark.stack

# `python -m devtools` runs from the checkout's root, as the Makefile runs it.
REPO = Path(__file__).resolve().parents[2]


def cli(args: list[str], s: Settings, home: Path, **extra: str) -> subprocess.CompletedProcess:
    env = cli_env(s, home, **extra)
    return subprocess.run(
        [sys.executable, "-m", "devtools", *args],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )


def topic_values(s: Settings, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    """Every value on the input topic (all partitions), waiting for `expected` of them."""
    consumer = Consumer({
        "bootstrap.servers": s.kafka_bootstrap_servers,
        "group.id": f"{s.kafka_group_id}-reader",
        "enable.auto.commit": False,
    })
    try:
        parts = consumer.list_topics(s.kafka_input_topic, timeout=10).topics[
            s.kafka_input_topic].partitions
        consumer.assign([TopicPartition(s.kafka_input_topic, p, 0) for p in parts])
        got: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(got) < expected:
            got += [m.value() for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
        # Linger briefly so that an unexpected extra message is seen too.
        got += [m.value() for m in consumer.consume(1000, timeout=1.0) if m.error() is None]
        return got
    finally:
        consumer.close()


def lines_of(events: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def test_a_line_too_large_is_refused_with_its_number_and_the_good_lines_are_flushed(
    kafka_topics: Settings, tmp_path: Path
) -> None:
    s = kafka_topics
    good = lines_of([event("p", f"u{i}") for i in range(5000)])
    after = lines_of([event("p", "after-1"), event("p", "after-2")])
    big = b'{"programId":"p","userId":"big","x":"' + b"x" * (6 * 1024 * 1024) + b'"}'
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([*good, big, *after]) + b"\n")

    done = cli(["produce", str(path)], s, tmp_path)

    assert done.returncode == 1, done.stderr
    assert f"produced 5002 messages to {s.kafka_input_topic}" in done.stdout
    assert (f"produce: line 5001 refused: {len(big)} bytes, more than the input topic's limit "
            f"of {INPUT_MAX_MESSAGE_BYTES} bytes") in done.stderr
    assert "1 refused (line 5001), 5002 acknowledged" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(topic_values(s, 5002)) == sorted(good + after)


def test_a_line_that_is_not_utf8_is_refused_with_its_number(
    kafka_topics: Settings, tmp_path: Path
) -> None:
    s = kafka_topics
    first, last = lines_of([event("p", "u1"), event("p", "u3")])
    bad = b'{"programId":"p","userId":"caf\xe9"}'  # Latin-1, not UTF-8
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\n".join([first, b"", bad, last]) + b"\n")

    done = cli(["produce", str(path)], s, tmp_path)

    assert done.returncode == 1, done.stderr
    assert f"produced 2 messages to {s.kafka_input_topic}" in done.stdout
    assert "produce: line 3 refused: not UTF-8: byte 0xe9 at byte 31 of the line" in done.stderr
    assert "1 refused (line 3), 2 acknowledged" in done.stderr
    assert sorted(topic_values(s, 2)) == sorted([first, last])


def test_a_missing_topic_is_said_at_once(kafka_topics: Settings, tmp_path: Path) -> None:
    s = kafka_topics
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(event("p", "u")) + b"\n")
    missing = f"{s.kafka_input_topic}.missing"

    started = time.monotonic()
    done = cli(["produce", str(path)], s, tmp_path, KAFKA_INPUT_TOPIC=missing)
    took = time.monotonic() - started

    assert done.returncode == 1
    assert f"Topic {missing!r} does not exist" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert took < 15, f"took {took:.0f}s"  # not the 31 s of a delivery timeout


@pytest.mark.parametrize("count", ["-3", "0"])
def test_a_sample_of_no_events_is_refused_naming_the_flag(
    kafka_topics: Settings, tmp_path: Path, count: str
) -> None:
    done = cli(["produce", "--sample", count], kafka_topics, tmp_path)
    assert done.returncode == 2
    assert f"argument --sample: must be at least 1, not {int(count)}" in done.stderr
    assert "produced" not in done.stdout



def test_a_line_the_producer_refuses_is_said_with_its_number(
    kafka_topics: Settings, tmp_path: Path
) -> None:
    """A line just under the input limit passes the line check, but with its key and the
    batch's framing the producer refuses it: said with its line number, the others go on."""
    s = kafka_topics
    first, last = lines_of([event("p", "u1"), event("p", "u3")])
    edge = b'{"programId":"p","userId":"edge","x":"'
    edge += b"x" * (INPUT_MAX_MESSAGE_BYTES - len(edge) - 2) + b'"}'
    assert len(edge) == INPUT_MAX_MESSAGE_BYTES
    path = tmp_path / "edge.jsonl"
    path.write_bytes(b"\n".join([first, edge, last]) + b"\n")

    done = cli(["produce", str(path)], s, tmp_path)

    assert done.returncode == 1, done.stderr
    assert f"produced 2 messages to {s.kafka_input_topic}" in done.stdout
    assert "produce: line 2 refused: " in done.stderr
    assert "1 refused (line 2), 2 acknowledged" in done.stderr
    assert sorted(topic_values(s, 2)) == sorted([first, last])
