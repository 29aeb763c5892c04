"""Months at a trickle, compressed into minutes: `make bench-steady`'s code, short and scaled down.

Run by `make soak-steady` (marker `steady`; `make test` deselects it). dagster-daemon on
PostgreSQL with deploy/dagster.yaml, a trickle of 1 event/s over partitions 0-2 for 3.5 minutes
(partition 3 gets a few events at the start only), the trigger age 10 s, the sensor every 3 s,
2 minutes of history kept and the prune every minute. Asserted: nothing lost, no run failed, the
trigger (not the sensor's ticks) paces each partition's runs, the prunes ran and deleted old runs
and their event rows while keeping each partition's newest success, and the history stays
bounded by the window.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from devtools.steady import Plan, soak, table
from programuser_dagster.housekeeping.job import PRUNE_JOB
from programuser_dagster.ingest.job import JOB_NAME
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO

pytestmark = [pytest.mark.stack, pytest.mark.steady]

PLAN = Plan(seconds=210, idle_s=0, trigger_age_s=10, sensor_interval_s=3, keep_s=120,
            prune_cron="* * * * *", fed=(0, 1, 2), once=(3,), once_events=5)
# A prune starts within a minute of its cron time and takes seconds; a run's end is stored a
# moment after the last event the prune read.
PRUNE_SLACK_S = 15


def test_a_trickle_on_the_daemon_path_is_paced_by_the_trigger_and_its_history_stays_bounded(
    postgres: dict[str, str], kafka_topics: Settings
) -> None:
    from devtools.stack.postgres import fresh_database

    pg = fresh_database(postgres, "steady")
    result = soak(kafka_topics, pg, PLAN)
    (REPO / "steady-soak-results.json").write_text(
        json.dumps({k: v for k, v in result.items() if k != "remaining"}, indent=2) + "\n")
    print("\n" + table(result))

    # Nothing lost: the table is what the pure core makes of every event produced.
    assert result["lost"]["missing"] == result["lost"]["unexpected"] == 0, result["lost"]
    assert result["lost"]["different"] == 0, result["lost"]
    assert result["lag_left"] == 0
    runs = result["runs"]
    assert set(runs["statuses"]) == {"SUCCESS"}, runs["statuses"]
    assert set(runs["prune_statuses"]) == {"SUCCESS"}, runs["prune_statuses"]

    # The trigger paces each fed partition: a run only once its oldest record is 10 s old, so
    # two runs of a partition are at least the age apart, not one per 3 s tick.
    for partition in ("0", "1", "2"):
        assert runs["min_gap_s_per_partition"][partition] >= PLAN.trigger_age_s - 1, runs
        most = PLAN.seconds / PLAN.trigger_age_s + 1
        assert 3 <= runs["per_partition"][partition] <= most, runs

    # The prunes deleted old runs and their event rows.
    deleting = [p for p in result["prunes"] if p.get("runs_deleted")]
    assert deleting, result["prunes"]
    assert sum(p["run_event_rows_deleted"] for p in deleting) > 0
    assert result["remaining"]["orphan_event_rows"] == 0

    # What is left is the window, plus what the rules keep: partition 3's only success is older
    # than the window and still there (the newest success of its partition).
    last = max(datetime.fromisoformat(p["oldest_kept"]).timestamp() for p in result["prunes"])
    ingest = [r for r in result["remaining"]["runs"] if r["job"] == JOB_NAME]
    old = [r for r in ingest if r["ended"] is not None and r["ended"] < last - PRUNE_SLACK_S]
    assert [r["partition"] for r in old if r["partition"] == "3"] == ["3"], old
    newest = {p: max(r["ended"] for r in ingest if r["partition"] == p and r["ended"])
              for p in {r["partition"] for r in ingest}}
    assert all(r["status"] == "SUCCESS" and r["ended"] == newest[r["partition"]]
               for r in old), old
    # The prune's own runs are bounded by the window too (one a minute).
    prunes_left = [r for r in result["remaining"]["runs"] if r["job"] == PRUNE_JOB]
    assert len(prunes_left) <= PLAN.keep_s / 60 + 2, prunes_left
