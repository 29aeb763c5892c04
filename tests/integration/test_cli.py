"""The command line's guards (pure) and what an operator sees first (on the real servers)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from programuser_dagster.cli import positive_int
from programuser_dagster.client_logs import RepeatFilter, normalise
from programuser_dagster.settings import Settings
from tests.support.pipeline import cli_env, event, produce

REPO = Path(__file__).parents[2]


# --------------------------------------------------------------------------- flags (pure)


@pytest.mark.parametrize(("text", "why"), [("0", "at least 1, not 0"),
                                           ("-5", "at least 1, not -5"),
                                           ("1.5", "not a whole number")])
def test_a_count_flag_refuses_values_below_one(text: str, why: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=why):
        positive_int(text)
    assert positive_int("1") == 1


@pytest.mark.parametrize("flag", ["--max-messages", "--processes"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_drain_refuses_a_count_below_one_naming_the_flag(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from programuser_dagster.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["drain", flag, value])
    assert exited.value.code == 2
    assert f"argument {flag}: must be at least 1, not {value}" in capsys.readouterr().err


def test_a_setting_out_of_range_is_one_line_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from programuser_dagster.cli import main

    monkeypatch.setenv("PROGRAMUSER_MAX_MESSAGES", "0")
    assert main(["drain"]) == 1
    assert capsys.readouterr().err == (
        "programuser-dagster drain: PROGRAMUSER_MAX_MESSAGES='0' is not allowed: use a whole "
        "number of at least 1, at most 1000000 (a run writes up to its length in microseconds "
        "ahead of the wall clock).\n"
    )


# ------------------------------------------------------------- interrupts_deferred (pure)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_inside_interrupts_deferred_is_recorded_and_the_block_goes_on(
    signum: str,
) -> None:
    import signal
    from types import FrameType

    from programuser_dagster.ingest.interrupts import interrupts_deferred

    number = getattr(signal, signum)
    delivered: list[int] = []

    def old_handler(n: int, _frame: FrameType | None) -> None:
        delivered.append(n)
        raise RuntimeError("the old handler must not run for a signal inside the block")

    saved = {s: signal.signal(s, old_handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        steps = []
        with interrupts_deferred() as deferred:
            os.kill(os.getpid(), number)
            for _ in range(100):  # handlers run between bytecodes: give them a few
                time.sleep(0.001)
            steps.append("after the signal")
        assert steps == ["after the signal"]
        assert deferred.received == [number]
        assert delivered == []  # not re-delivered on exit
        assert signal.getsignal(signal.SIGINT) is old_handler
        assert signal.getsignal(signal.SIGTERM) is old_handler
        with pytest.raises(RuntimeError):  # the old handler is back in charge
            os.kill(os.getpid(), number)
            for _ in range(100):
                time.sleep(0.001)
        assert delivered == [number]
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_interrupts_deferred_restores_the_handlers_when_the_block_raises() -> None:
    import signal

    from programuser_dagster.ingest.interrupts import interrupts_deferred

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with pytest.raises(ValueError), interrupts_deferred():
        raise ValueError("the commit failed")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_interrupts_deferred_outside_the_main_thread_changes_nothing() -> None:
    import signal
    import threading

    from programuser_dagster.ingest.interrupts import interrupts_deferred

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    seen: list[object] = []

    def body() -> None:
        with interrupts_deferred() as deferred:
            seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
        seen.append(deferred.received)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [before, []]


# ------------------------------------------------------------ the repeat filter (pure)

REFUSED = ("FAIL [rdkafka#consumer-{n}] [thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/"
           "bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after {ms}ms "
           "in state CONNECT)")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(message: str, name: str = "programuser_dagster.librdkafka",
            level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_normalise_keeps_addresses_and_drops_varying_numbers() -> None:
    assert normalise(REFUSED.format(n=3, ms=0)) == normalise(REFUSED.format(n=12, ms=17))
    assert "127.0.0.1:9092" in normalise(REFUSED.format(n=3, ms=0))
    other_broker = REFUSED.format(n=3, ms=0).replace("9092", "9093")
    assert normalise(other_broker) != normalise(REFUSED.format(n=3, ms=0))
    assert normalise("retry in 2.0 seconds: <Connection object at 0x7f3a2b1c>") == (
        "retry in # seconds: <Connection object at #>")


def test_the_first_line_passes_repeats_are_counted_and_summarised_once_per_interval() -> None:
    clock = _Clock()
    f = RepeatFilter(interval_s=60, clock=clock)
    passed = []
    for i in range(200):  # 200 lines in 50 s, then one more after the interval
        clock.now += 0.25
        record = _record(REFUSED.format(n=i % 4, ms=i % 7))
        if f.filter(record):
            passed.append(record.getMessage())
    clock.now += 15
    last = _record(REFUSED.format(n=1, ms=0))
    assert f.filter(last)
    passed.append(last.getMessage())
    assert passed[0] == REFUSED.format(n=0, ms=0)
    assert len(passed) == 2
    assert passed[1].endswith("[repeated 200 times in the last 65 s]")
    # The next interval starts again: repeats are held back.
    clock.now += 1
    assert not f.filter(_record(REFUSED.format(n=2, ms=3)))


def test_different_messages_and_loggers_are_counted_apart() -> None:
    f = RepeatFilter(interval_s=60, clock=_Clock())
    assert f.filter(_record("Host 127.0.0.1:9042 may be down", name="cassandra.cluster"))
    assert f.filter(_record("Host 127.0.0.1:9042 may be down", name="cassandra.pool"))
    assert f.filter(_record("Host 127.0.0.2:9042 may be down", name="cassandra.cluster"))
    assert not f.filter(_record("Host 127.0.0.1:9042 may be down", name="cassandra.cluster"))


def test_flush_logs_the_repeats_still_held_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    f = RepeatFilter(interval_s=60, clock=clock)
    logger = logging.getLogger("tests.repeat-flush")
    logger.addFilter(f)
    try:
        with caplog.at_level(logging.INFO, logger="tests.repeat-flush"):
            for _ in range(5):
                logger.error("Connection refused by 10.0.0.1:9042 after %d ms", 3)
            clock.now += 30
            f.flush()
            f.flush()  # nothing more held back: nothing more logged
        assert [r.getMessage() for r in caplog.records] == [
            "Connection refused by 10.0.0.1:9042 after 3 ms",
            "Connection refused by 10.0.0.1:9042 after 3 ms [repeated 4 times in the last 30 s]",
        ]
    finally:
        logger.removeFilter(f)


def test_install_filters_the_cassandra_loggers() -> None:
    from programuser_dagster import client_logs

    client_logs.install()
    client_logs.install()  # idempotent
    for name in client_logs.CASSANDRA_LOGGERS:
        assert logging.getLogger(name).filters.count(client_logs.FILTER) == 1
    kafka = client_logs.kafka_logger()
    assert kafka.filters.count(client_logs.FILTER) == 1
    assert sum(isinstance(h, client_logs._Stderr) for h in kafka.handlers) == 1


# ----------------------------------------------------------- on the real servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(s: Settings, **extra: str) -> dict[str, str]:
    return cli_env(s, os.environ.get("DAGSTER_HOME"), **extra)


@pytest.mark.stack
def test_drain_with_the_broker_down_prints_a_few_lines_naming_it(
    kafka_topics: Settings, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "programuser_dagster.cli", "drain"],
        env=_env(kafka_topics, DAGSTER_HOME=str(tmp_path), KAFKA_BOOTSTRAP_SERVERS=address),
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) < 20, done.stderr  # librdkafka alone printed ~290 lines here
    assert any(line.startswith(f"programuser-dagster drain: Kafka at {address} did not")
               for line in lines), done.stderr


@pytest.mark.stack
def test_drain_without_dagster_home_uses_the_instance_of_make_run(
    kafka_topics: Settings, tmp_path: Path
) -> None:
    from dagster import DagsterInstance, RunsFilter

    s = kafka_topics
    produce(s, [event("p", "u")], partition=0)
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")  # as in the repository
    env = {k: v for k, v in _env(s).items() if k != "DAGSTER_HOME"}
    done = subprocess.run(
        [sys.executable, "-m", "programuser_dagster.cli", "drain"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert ("drain: DAGSTER_HOME is not set; using ./.dagster_home, the instance of make run"
            in done.stderr.splitlines())
    home = tmp_path / ".dagster_home"
    link = home / "dagster.yaml"
    assert link.is_symlink() and os.readlink(link) == "../dagster.yaml"
    with DagsterInstance.from_config(str(home)) as instance:
        assert len(instance.get_run_records(RunsFilter(job_name="program_user_info"))) == 1


@pytest.mark.stack
def test_drain_without_dagster_home_outside_the_repository_says_what_to_do(
    kafka_topics: Settings, tmp_path: Path
) -> None:
    env = {k: v for k, v in _env(kafka_topics).items() if k != "DAGSTER_HOME"}
    done = subprocess.run(
        [sys.executable, "-m", "programuser_dagster.cli", "drain"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("programuser-dagster drain: DAGSTER_HOME is not set and "
                                  "there is no dagster.yaml here: set DAGSTER_HOME")
    assert not (tmp_path / ".dagster_home").exists()
