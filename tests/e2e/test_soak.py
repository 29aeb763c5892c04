"""Soak: the real `dagster dev` (sensor on) under a steady producer, on loopback only.

Runs with `make soak` (PROGRAMUSER_SOAK=1); `make test` skips it. A producer writes at least
SOAK_RATE events/s (default 500) spread over the 4 partitions for SOAK_SECONDS (default 180),
bounded in count and time. Then: the table holds exactly the expected rows, no run failed, and
the lag is back to 0 within 10 minutes after the producer stops. The rate held, the worst lag
(records and seconds), the runs' event ages at write (p50, p99, max) and the catch-up time are
reported (printed and written to soak-results.json), not asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    EventRecordsFilter,
    RunsFilter,
)

from devtools.samples import message_key, sample_events
from programuser_dagster.core.event_ages import lag_seconds
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO, dagster_dev, settings_env, settle_runs
from tests.support.pipeline import all_rows, expected_rows

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(not os.environ.get("PROGRAMUSER_SOAK"), reason="run by `make soak`"),
]

RATE = int(os.environ.get("SOAK_RATE", "500"))
SECONDS = int(os.environ.get("SOAK_SECONDS", "180"))
CATCH_UP_LIMIT_S = 600


def total_lag(s: Settings) -> tuple[int, float]:
    """The lag of all partitions in records, and the worst partition's in seconds."""
    kafka = kafka_resource(s)
    try:
        offsets = kafka.offsets()
        oldest = kafka.oldest_uncommitted_times(offsets)
    finally:
        kafka.close()
    now_ms = time.time_ns() // 1_000_000
    worst_s = max((lag_seconds(t, now_ms)[0] for t in oldest.values()), default=0.0)
    return sum(o.lag for o in offsets), worst_s


def event_ages(instance: DagsterInstance) -> dict[str, float]:
    """The runs' event ages at write: the median run's p50, the worst p99 and max (s)."""
    ages = []
    for record in instance.get_event_records(EventRecordsFilter(
            DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey("program_enrollment"))):
        md = record.asset_materialization.metadata
        if "event_age_p50_s" in md:
            ages.append({k: md[k].value for k in
                         ("event_age_p50_s", "event_age_p99_s", "event_age_max_s")})
    if not ages:
        return {}
    return {
        "event_age_p50_s_median_run": statistics.median(a["event_age_p50_s"] for a in ages),
        "event_age_p99_s_worst_run": max(a["event_age_p99_s"] for a in ages),
        "event_age_max_s": max(a["event_age_max_s"] for a in ages),
    }


def failure_messages(instance: DagsterInstance, run_id: str) -> list[str]:
    """What a failed run's step and run failure events said: the soak says why, not only that."""
    kinds = {DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
    return [
        (e.dagster_event.message or "") + " " + str(getattr(e.dagster_event.event_specific_data,
                                                          "error", "") or "")[:1500]
        for e in instance.all_logs(run_id)
        if e.dagster_event is not None and e.dagster_event.event_type in kinds
    ]


def test_soak_holds_the_rate_and_loses_nothing(
    kafka_topics: Settings, cassandra_session, tmp_path: Path
) -> None:
    s = kafka_topics
    home = tmp_path / "dagster_home"
    log = tmp_path / "dagster-dev.log"
    values: list[bytes] = []
    worst_lag, worst_lag_s = 0, 0.0
    with dagster_dev(home, log, {**settings_env(s), "PROGRAMUSER_SENSOR_INTERVAL_S": "10"}) as dev:
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, "linger.ms": 20})
        events = sample_events(RATE * SECONDS, seed=7, programs=200)
        started = time.monotonic()
        next_lag_probe = started
        for second in range(SECONDS):
            for _ in range(RATE):
                event = next(events)
                value = orjson.dumps(event)
                values.append(value)
                producer.produce(s.kafka_input_topic, value=value, key=message_key(event))
            producer.poll(0)
            if time.monotonic() >= next_lag_probe:
                lag, lag_s = total_lag(s)
                worst_lag, worst_lag_s = max(worst_lag, lag), max(worst_lag_s, lag_s)
                next_lag_probe = time.monotonic() + 5
            # Hold the pace: sleep until the next second's budget is due.
            time.sleep(max(0.0, started + second + 1 - time.monotonic()))
        assert producer.flush(60) == 0
        produce_s = time.monotonic() - started
        producer.close()  # else its threads outlive the test and log the stack's shutdown
        stopped = time.monotonic()
        while (lag := total_lag(s))[0] > 0:
            worst_lag, worst_lag_s = max(worst_lag, lag[0]), max(worst_lag_s, lag[1])
            assert dev.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - stopped < CATCH_UP_LIMIT_S, f"lag still {lag} after 10 min"
            time.sleep(2)
        catch_up_s = time.monotonic() - stopped
        # Lag 0 is the last commit, not the end of its run: leaving dagster dev interrupts the
        # runs still finishing (their last events, or a late trigger's "nothing to do").
        unfinished_at_lag_0 = settle_runs(home, dev, log, "program_user_info")

    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_run_records(RunsFilter(job_name="program_user_info"))
        ages = event_ages(instance)
        failed = {r.dagster_run.run_id: failure_messages(instance, r.dagster_run.run_id)
                  for r in runs if r.dagster_run.status != DagsterRunStatus.SUCCESS}
    assert runs and not failed, f"{len(failed)} of {len(runs)} runs did not succeed: {failed}"

    # The table is exactly what the pure core makes of every event produced.
    assert all_rows(cassandra_session, s) == expected_rows(values)

    results = {
        "events": len(values),
        "rate_held_events_per_s": round(len(values) / produce_s, 1),
        "worst_lag": worst_lag,
        "worst_lag_s": round(worst_lag_s, 1),
        **{k: round(v, 2) for k, v in ages.items()},
        "catch_up_s": round(catch_up_s, 1),
        "runs": len(runs),
        "runs_unfinished_at_lag_0": unfinished_at_lag_0,
    }
    (REPO / "soak-results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nsoak: {results}")
