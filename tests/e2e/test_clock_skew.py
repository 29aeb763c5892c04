"""Clock skew (issue 24, item 5), on the real servers: one `drain` process with its clock
shifted against a control `drain` on the host's own clock.

The shifted process replaces clock.now_us (the write clock, and the clock the skew check
reads) before it imports the job; everything else in it runs on the host's clock. libfaketime
(LD_PRELOAD) was tried first: under it Python 3.11's time.sleep fails with EINVAL (Dagster's
orphan watcher died, the run hung), and with an offset of -3 s or more librdkafka's requests
time out, so a whole-process shift could not run the pipeline here.

- a host ahead commits a clock the control refuses, naming that host; `reset-clock` repairs it;
- a host behind the committed clock refuses before writing (CreateTime topic); the control
  writes;
- on a topic with LogAppendTime (the stack's), a host behind the broker refuses before writing.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO
from tests.support.faults import env_for
from tests.support.pipeline import event, offsets, produce, row

pytestmark = pytest.mark.stack
HOST = socket.gethostname()

# `programuser-dagster <argv[2:]>` with the write clock (clock.now_us) argv[1] us off.
_SHIFTED = """
import sys, time
from programuser_dagster.core import clock
clock.now_us = lambda: time.time_ns() // 1000 + int(sys.argv[1])
from programuser_dagster.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _cli(s: Settings, home: Path, *args: str, shift_s: int = 0,
         ) -> subprocess.CompletedProcess[str]:
    """`programuser-dagster <args>`, its clock `shift_s` seconds ahead (< 0: behind)."""
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    command = [sys.executable, "-m", "programuser_dagster.cli", *args]
    if shift_s:
        command = [sys.executable, "-c", _SHIFTED, str(shift_s * 1_000_000), *args]
    return subprocess.run(command, env=env_for(s, home), cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def _lead_s(said: str) -> float:
    """The lead over this host's clock a refusal names, from the committing host (s)."""
    found = re.search(rf"committed from host {re.escape(HOST)}\) is ([0-9.]+) s ahead of "
                      rf"this host's clock \({re.escape(HOST)}, ", said)
    assert found, said
    return float(found.group(1))


def _timestamps(s: Settings, kind: str) -> None:
    """Set the input topic's message.timestamp.type (CreateTime or LogAppendTime)."""
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    [done] = admin.incremental_alter_configs([ConfigResource(
        "TOPIC", s.kafka_input_topic, incremental_configs=[ConfigEntry(
            "message.timestamp.type", kind,
            incremental_operation=AlterConfigOpType.SET)])]).values()
    done.result(30)


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return " ".join((done.stdout + done.stderr).split())


def test_a_host_behind_the_committed_clock_writes_nothing_and_a_control_host_writes(
    kafka_topics: Settings, cassandra_session, tmp_path: Path,
) -> None:
    s = kafka_topics
    _timestamps(s, "CreateTime")  # the broker's times would tell first (the next test)
    produce(s, [event("p", "u1")])
    control = _cli(s, tmp_path / "control", "drain")
    assert control.returncode == 0, _out(control)
    assert offsets(s).committed == 1
    produce(s, [event("p", "u2")])

    shifted = _cli(s, tmp_path / "shifted", "drain", shift_s=-30)

    said = _out(shifted)
    assert shifted.returncode == 1, said
    # 30 s, less the time from that commit to this run's start
    assert 20 < _lead_s(said) <= 30, said
    assert "PROGRAMUSER_CLOCK_SKEW_MAX_S (2.000 s)" in said
    assert "Nothing was written" in said
    assert row(cassandra_session, s, "p", "u2") is None
    assert offsets(s).committed == 1
    # The same range on the host's own clock.
    again = _cli(s, tmp_path / "control", "drain")
    assert again.returncode == 0, _out(again)
    assert row(cassandra_session, s, "p", "u2") is not None
    assert offsets(s).committed == 2


def test_on_a_log_append_time_topic_a_host_behind_the_broker_writes_nothing(
    kafka_topics: Settings, cassandra_session, tmp_path: Path,
) -> None:
    s = kafka_topics
    _timestamps(s, "LogAppendTime")
    # The producer's own clock says an hour ago: the broker's time replaces it.
    produce(s, [event("p", "u1")], timestamp=1_000)

    shifted = _cli(s, tmp_path / "shifted", "drain", shift_s=-30)

    said = _out(shifted)
    assert shifted.returncode == 1, said
    assert f"This host's clock ({HOST}) is at least 2" in said  # ~30 s
    assert "behind the Kafka broker's: partition 0 holds a record the broker appended" in said
    assert row(cassandra_session, s, "p", "u1") is None
    assert offsets(s).committed is None
    control = _cli(s, tmp_path / "control", "drain")
    assert control.returncode == 0, _out(control)
    assert row(cassandra_session, s, "p", "u1") is not None


def test_a_host_ahead_is_named_by_the_next_run_and_reset_clock_repairs_the_clock(
    kafka_topics: Settings, cassandra_session, tmp_path: Path,
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u1")])
    ahead = _cli(s, tmp_path / "ahead", "drain", shift_s=3600)
    assert ahead.returncode == 0, _out(ahead)  # nothing to compare with yet: it commits
    produce(s, [event("p", "u2")])

    control = _cli(s, tmp_path / "control", "drain")

    said = _out(control)
    assert control.returncode == 1, said
    assert 3590 < _lead_s(said) <= 3600, said
    assert "`programuser-dagster reset-clock --partition 0` (a dry run; add --apply)" in said
    assert row(cassandra_session, s, "p", "u2") is None

    before = offsets(s)
    dry = _cli(s, tmp_path / "control", "reset-clock", "--partition", "0")
    assert dry.returncode == 0, _out(dry)
    assert "partition 0: committed offset 1, clock " in _out(dry)
    assert "would reset to this host's clock" in _out(dry)
    assert offsets(s) == before  # a dry run changes nothing
    applied = _cli(s, tmp_path / "control", "reset-clock", "--partition", "0", "--apply")
    assert applied.returncode == 0, _out(applied)
    assert "reset the clock of 1 partitions" in _out(applied)
    after = offsets(s)
    assert (after.committed, after.token) == (1, before.token + 1)
    assert after.clock < before.clock - 3000 * 1_000_000

    again = _cli(s, tmp_path / "control", "drain")
    assert again.returncode == 0, _out(again)
    assert row(cassandra_session, s, "p", "u2") is not None
    assert offsets(s).committed == 2
