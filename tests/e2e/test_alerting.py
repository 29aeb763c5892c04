"""Someone is told: a partition stalls while events arrive, and the project's stall alert goes
from `programuser-dagster metrics` through a real Prometheus and Alertmanager (Debian's) to a
webhook; once the partition commits again the resolved notice follows, and no row is lost.

The fault: the partition's runs cannot reach Cassandra (their settings name a port where
nothing listens), so each run fails and nothing commits while records keep arriving; the shared
Cassandra keeps serving the other tests. The rules are deploy/prometheus/rules.yml with their
times scaled by SCALE (tests/support/alerting.py: scaled_rules)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from programuser_dagster.ingest.instance import open_instance
from programuser_dagster.observe.exporter import REFRESH_S
from programuser_dagster.settings import Settings
from tests.support.alerting import (
    RULES,
    alertmanager,
    free_port,
    metrics_exporter,
    prometheus,
    scaled_rules,
    webhook_receiver,
)
from tests.support.pipeline import all_rows, event, expected_rows, produce, run_partition

pytestmark = pytest.mark.stack

SCALE = 1 / 30
# The stall rule, scaled: no commit for NO_COMMIT_S, then lag for FOR_S more (10 s and 20 s).
NO_COMMIT_S = round(300 * SCALE)
FOR_S = round(600 * SCALE)
STALL = "ProgramuserPartitionStalled"
# Beyond the rule's own time: the exporter's reading (up to REFRESH_S old), a scrape and an
# evaluation (1 s each), Alertmanager's group_wait (1 s) and this slow shared machine.
SLACK_S = REFRESH_S + 15


def batch(n: int, first: int) -> list[bytes | None]:
    return [orjson.dumps(event("program-alerting", f"user-{i}")) for i in range(first, first + n)]


def test_a_stalled_partition_is_told_then_resolved_and_nothing_is_lost(
    kafka_topics: Settings, cassandra_session: Any, tmp_path: Path
) -> None:
    s = kafka_topics
    rules = scaled_rules(RULES.read_text(), SCALE)
    assert f"< {NO_COMMIT_S}" in rules and f"for: {FOR_S}s" in rules
    home = tmp_path / "dagster"
    home.mkdir()
    values = batch(20, 0)
    produce(s, values, partition=0)
    with open_instance(home) as instance:
        # The stall rule counts from this commit, which lands after this mark (its time is
        # recorded in whole seconds: up to 1 s earlier).
        before_commit = time.monotonic()
        assert run_partition(instance, s, partition=0).success  # committed: no stall
    with (open_instance(home) as instance, webhook_receiver() as receiver,
          metrics_exporter(s.environment(), home, tmp_path / "exporter.log") as target,
          alertmanager(tmp_path / "alertmanager", receiver.port) as am_port,
          prometheus(tmp_path / "prometheus", target, am_port, rules)):
        # The fault: Cassandra unreachable for the runs, while events keep arriving.
        unreachable = dataclasses.replace(s, cassandra_port=free_port())
        fault = time.monotonic()
        while receiver.first(STALL, "firing", partition="0") is None:
            assert time.monotonic() - fault < NO_COMMIT_S + FOR_S + SLACK_S, receiver.posts
            arriving = batch(5, len(values))
            produce(s, arriving, partition=0)
            values += arriving
            assert not run_partition(instance, unreachable, partition=0).success
            time.sleep(2)
        fired, alert = receiver.wait_for(STALL, "firing", 0, partition="0")
        # Repaired: the next run commits everything that waited.
        repaired = time.monotonic()
        assert run_partition(instance, s, partition=0).success
        resolved, _ = receiver.wait_for(STALL, "resolved", REFRESH_S + 15, partition="0")

    to_fire, to_resolve, after_repair = fired - fault, resolved - fault, resolved - repaired
    print(f"\nstall alert: fault -> firing notice {to_fire:.1f} s, fault -> resolved notice "
          f"{to_resolve:.1f} s (repair -> resolved {after_repair:.1f} s); "
          f"{len(values)} events, {len(receiver.posts)} webhook posts")
    # Not before the rule's time, counted from the last commit (the servers' start-up lies
    # between it and the fault, longer on a busy machine).
    assert fired - before_commit >= NO_COMMIT_S + FOR_S - 2, (fired - before_commit, to_fire)
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"].startswith("Partition 0 has ")
    # The quiet partitions (no record, never committed) were never reported stalled.
    stalled = {a["labels"]["partition"] for _, p in receiver.posts for a in p["alerts"]
               if a["labels"]["alertname"] == STALL}
    assert stalled == {"0"}
    assert all_rows(cassandra_session, s) == expected_rows(values)
