"""The metrics exporter on the real servers: a real run, an HTTP scrape, promtool's lint."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from dagster import AssetCheckEvaluation, AssetCheckSeverity, DagsterRunStatus
from prometheus_client.parser import text_string_to_metric_families

from programuser_dagster.ingest import checks
from programuser_dagster.ingest.assets import PROGRAM_ENROLLMENT
from programuser_dagster.observe.exporter import Exporter, serve
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings, temporary_env
from tests.support.pipeline import add_run, event, produce, run_partition

pytestmark = pytest.mark.stack

SASL_PASSWORD = "metrics-test-sasl-password-5f1c"
# Values of the events: personal data, which no metric may carry.
PROGRAM, USER = "program-metrics-9d2e", "user-metrics-4b7a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        assert response.status == 200
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def p(n: int) -> tuple[tuple[str, str], ...]:
    return (("partition", str(n)),)


def test_a_scrape_shows_lag_commits_runs_counts_and_checks_and_no_secret(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    # Lag on partition 1 (the broker stamps records at append), a failed attempt on 2.
    before_lag = time.time()
    produce(s, [event(PROGRAM, USER)] * 3, partition=1)
    after_lag = time.time()
    produce(s, [event(PROGRAM, USER)], partition=2)
    produce(s, [event(PROGRAM, f"{USER}-{i}") for i in range(20)] + [b"not json", b"{x"])
    before_run = time.time()
    assert run_partition(instance, s, partition=0).success
    add_run(instance, 2, DagsterRunStatus.FAILURE)
    instance.report_runless_asset_event(AssetCheckEvaluation(
        asset_key=PROGRAM_ENROLLMENT, check_name=checks.DEAD_LETTER_SHARE_CHECK, passed=False,
        severity=AssetCheckSeverity.WARN))

    port = free_port()
    with temporary_env({"KAFKA_SASL_PASSWORD": SASL_PASSWORD}):
        kafka = kafka_resource(s)
    exporter = Exporter(s, instance, kafka, refresh_s=3600)
    server = serve(exporter, "127.0.0.1", port)
    try:
        time.sleep(1.0)
        scraped = time.time()
        text = scrape(port)
        produce(s, [event(PROGRAM, USER)], partition=1)
        again = scrape(port)  # within refresh_s: the same reading, Kafka not asked again
    finally:
        server.shutdown()
        kafka.close()

    got = samples(text)
    assert got[("programuser_lag_records", p(0))] == 0
    assert got[("programuser_lag_records", p(1))] == 3
    # The oldest uncommitted record's age when the exporter read it.
    assert scraped - after_lag - 0.5 <= got[("programuser_lag_seconds", p(1))] \
        <= time.time() - before_lag + 0.5
    assert got[("programuser_committed_offset", p(0))] == 22
    assert before_run - 1 <= got[("programuser_last_commit_timestamp_seconds", p(0))] \
        <= time.time()
    assert ("programuser_last_commit_timestamp_seconds", p(1)) not in got  # never committed
    assert got[("programuser_runs_total", (("outcome", "committed"),))] == 1
    assert got[("programuser_runs_total", (("outcome", "failed"),))] == 1
    assert got[("programuser_failed_attempts", p(2))] == 1
    assert got[("programuser_failed_attempts", p(1))] == 0
    assert got[("programuser_events_read_total", ())] == 22
    assert got[("programuser_events_written_total", ())] == 20
    assert got[("programuser_events_dead_lettered_total", (("reason", "not_json"),))] == 2
    assert 0 <= got[("programuser_last_run_event_age_max_seconds", p(0))] < 60
    assert got[("programuser_check_passed", (("check", checks.ACCOUNTING_CHECK),))] == 1
    assert got[("programuser_check_passed", (("check", checks.DEAD_LETTER_SHARE_CHECK),))] == 0
    assert got[("programuser_dead_letter_share_warn_ratio", ())] == s.dead_letter_share_warn
    assert got[("programuser_exporter_source_up", (("source", "kafka"),))] == 1
    assert got[("programuser_exporter_source_up", (("source", "dagster"),))] == 1
    assert samples(again)[("programuser_lag_records", p(1))] == 3
    for secret in (SASL_PASSWORD, PROGRAM, USER, s.kafka_bootstrap_servers):
        assert secret not in text

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make deps` installs Debian's prometheus package")
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_the_command_serves_until_sigterm(kafka_topics: Settings, tmp_path) -> None:
    s = kafka_topics
    produce(s, [event(PROGRAM, USER)] * 2, partition=3)
    port = free_port()
    env = {**os.environ, **s.environment(), "DAGSTER_HOME": str(tmp_path),
           "PROGRAMUSER_METRICS_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "-m", "programuser_dagster.cli", "metrics"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # once it has read the history
        assert line.startswith(f"serving http://127.0.0.1:{port}/metrics"), line
        assert samples(scrape(port))[("programuser_lag_records", p(3))] == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
