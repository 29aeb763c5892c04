"""Failure notices on real runs against the real servers, posted to a webhook receiver this test
runs on loopback: once per incident, resolved when over, a receiver that is down logged by host
and tried again, and the URL's token in no log line."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from dagster import EnvVar, SensorResult, build_sensor_context

from devtools.stack import delete_topics, ensure_topics
from devtools.stack.postgres import free_port
from programuser_dagster.core.notices import FAILED_ATTEMPTS_NOTICE
from programuser_dagster.observe.notices import build_notice_sensor
from programuser_dagster.settings import ALERT_WEBHOOK_URL, Settings
from tests.support.pipeline import event, health_tick, produce, run_partition

pytestmark = pytest.mark.stack

TOKEN = "T0SECRET/B0SECRET/xoxTOKENsecret"


class Receiver:
    """A webhook on 127.0.0.1 that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:  # the request line holds the token
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/{TOKEN}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> list[dict[str, Any]]:
        out = list(self.received)
        self.received.clear()
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def record_health(instance: Any, s: Settings) -> None:
    """One health tick, its check evaluations recorded as the daemon records a tick's."""
    result, _ = health_tick(instance, s)
    for evaluation in result.asset_events or []:
        instance.report_runless_asset_event(evaluation)


def notice_tick(instance: Any, s: Settings, cursor: str | None,
                monkeypatch: pytest.MonkeyPatch, url: str) -> tuple[SensorResult, str | None]:
    monkeypatch.setenv(ALERT_WEBHOOK_URL, url)
    with build_sensor_context(instance=instance, cursor=cursor) as ctx:
        result = build_notice_sensor(s, EnvVar(ALERT_WEBHOOK_URL))(ctx)
    assert isinstance(result, SensorResult)
    return result, result.cursor


def test_notices_once_per_incident_and_resolved(
    instance: Any, kafka_topics: Settings, receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    printed: list[str] = []  # Dagster's loggers write to stderr; the clients' go to logging

    def logged() -> str:
        out, err = capfd.readouterr()
        printed.extend([out, err])
        return "".join(printed) + caplog.text

    # A run dead-letters its bad message at commit; a trigger of 1 record: no partition waits.
    s = dataclasses.replace(kafka_topics, kafka_delivery_timeout_s=3.0, trigger_lag_records=1,
                            stall_warn_s=60, ui_url="https://dagster.example.org")
    produce(s, [b"{not json", event("p", "u1")], partition=1)
    # Partition 1's runs fail for a real reason: the dead-letter topic is gone.
    delete_topics(s.kafka_bootstrap_servers, [s.kafka_dlq_topic])
    for attempt in range(1, FAILED_ATTEMPTS_NOTICE + 1):
        assert not run_partition(instance, s, partition=1).success
        if attempt == FAILED_ATTEMPTS_NOTICE - 1:  # two failures: not yet an incident
            _, cursor = notice_tick(instance, s, None, monkeypatch, receiver.url)
            assert receiver.take() == []

    # The receiver is down: the tick logs it by host, carries on, and sends it next tick.
    down = f"http://127.0.0.1:{free_port()}/services/{TOKEN}"
    result, cursor = notice_tick(instance, s, cursor, monkeypatch, down)
    assert "Could not post the notice to http://127.0.0.1 (" in logged()
    assert "1 to retry" in (result.skip_reason.skip_message or "")

    _, cursor = notice_tick(instance, s, cursor, monkeypatch, receiver.url)
    [notice] = receiver.take()
    assert notice["status"] == "firing" and notice["incident"].startswith("runs_failing:1:0:")
    assert f"partition 1: {FAILED_ATTEMPTS_NOTICE} runs in a row failed at offset 0" in (
        notice["text"])
    assert "Range [0, 2)" in notice["text"]
    assert "Last error: " in notice["text"] and "Last run: https://dagster.example.org/runs/" in (
        notice["text"])
    # A second tick, and a fourth failure at the same state: the same incident, no notice.
    _, cursor = notice_tick(instance, s, cursor, monkeypatch, receiver.url)
    assert not run_partition(instance, s, partition=1).success
    _, cursor = notice_tick(instance, s, cursor, monkeypatch, receiver.url)
    assert receiver.take() == []

    # The stall check fails (partition 1: lag, no successful run): one notice.
    record_health(instance, s)
    _, cursor = notice_tick(instance, s, cursor, monkeypatch, receiver.url)
    [stalled] = receiver.take()
    assert stalled["incident"] == "check:lag_without_progress"
    assert "Partitions ['1'] have lag" in stalled["text"]

    # Repaired: the run commits, the checks pass again, each incident is resolved once.
    ensure_topics(s.kafka_bootstrap_servers, {s.kafka_dlq_topic: s.kafka_partitions},
                  dead_letter={s.kafka_dlq_topic})
    assert run_partition(instance, s, partition=1).success
    record_health(instance, s)
    _, cursor = notice_tick(instance, s, cursor, monkeypatch, receiver.url)
    resolved = receiver.take()
    assert {(n["status"], n["incident"].split(":")[0]) for n in resolved} == {
        ("resolved", "runs_failing"), ("resolved", "check")}
    _, cursor = notice_tick(instance, s, cursor, monkeypatch, receiver.url)
    assert receiver.take() == []

    # No token, no password in any log line, the cursor or a notice.
    secrets = [TOKEN, "T0SECRET", "xoxTOKENsecret"]
    texts = [logged(), cursor or "", json.dumps([notice, stalled, *resolved])]
    assert not [t for t in texts for secret in secrets if secret in t]
    assert "sensor" in texts[0]  # the sensors' log lines were captured


def test_off_without_a_webhook(instance: Any, kafka_topics: Settings) -> None:
    with build_sensor_context(instance=instance) as ctx:
        result = build_notice_sensor(kafka_topics, None)(ctx)
    assert "Off: PROGRAMUSER_ALERT_WEBHOOK_URL is not set." in str(result)
