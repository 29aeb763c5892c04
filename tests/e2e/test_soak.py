"""Soak: the real `dagster dev` (sensor on) under a steady producer, on loopback only.

Runs with `make soak` (PROGRAMUSER_SOAK=1); `make test` skips it. A producer writes at least
SOAK_RATE events/s (default 500) spread over the 4 partitions for SOAK_SECONDS (default 180),
bounded in count and time. Then: the table holds exactly the expected rows, no run failed, and
the lag is back to 0 within 10 minutes after the producer stops. The rate held, the worst lag
and the catch-up time are reported (printed and written to soak-results.json), not asserted.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from programuser_dagster.events import COLUMNS, NOT_WRITTEN, flatten
from programuser_dagster.resources import kafka_resource
from programuser_dagster.samples import message_key, sample_events
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO, dagster_dev, settings_env
from tests.support.pipeline import all_rows

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(not os.environ.get("PROGRAMUSER_SOAK"), reason="run by `make soak`"),
]

RATE = int(os.environ.get("SOAK_RATE", "500"))
SECONDS = int(os.environ.get("SOAK_SECONDS", "180"))
CATCH_UP_LIMIT_S = 600


def total_lag(s: Settings) -> int:
    kafka = kafka_resource(s)
    try:
        return sum(o.lag for o in kafka.offsets())
    finally:
        kafka.close()


def test_soak_holds_the_rate_and_loses_nothing(
    kafka_topics: Settings, cassandra_session, tmp_path: Path
) -> None:
    s = kafka_topics
    home = tmp_path / "dagster_home"
    log = tmp_path / "dagster-dev.log"
    values: list[bytes] = []
    worst_lag = 0
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
                worst_lag = max(worst_lag, total_lag(s))
                next_lag_probe = time.monotonic() + 5
            # Hold the pace: sleep until the next second's budget is due.
            time.sleep(max(0.0, started + second + 1 - time.monotonic()))
        assert producer.flush(60) == 0
        produce_s = time.monotonic() - started
        producer.close()  # else its threads outlive the test and log the stack's shutdown
        stopped = time.monotonic()
        while (lag := total_lag(s)) > 0:
            worst_lag = max(worst_lag, lag)
            assert dev.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - stopped < CATCH_UP_LIMIT_S, f"lag still {lag} after 10 min"
            time.sleep(2)
        catch_up_s = time.monotonic() - stopped

    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_run_records(RunsFilter(job_name="program_user_info"))
    statuses = [r.dagster_run.status for r in runs]
    assert statuses and all(st == DagsterRunStatus.SUCCESS for st in statuses), statuses

    # The table is exactly what the pure core makes of every event produced (unique keys).
    batch = flatten(enumerate(values))
    expected = {
        (r["program_id"], r["user_id"]): {
            c: (None if r[c] is NOT_WRITTEN or r[c] == {} else r[c]) for c in COLUMNS
        }
        for r in batch.rows.to_dict("records")
    }
    assert all_rows(cassandra_session, s) == expected

    results = {
        "events": len(values),
        "rate_held_events_per_s": round(len(values) / produce_s, 1),
        "worst_lag": worst_lag,
        "catch_up_s": round(catch_up_s, 1),
        "runs": len(runs),
    }
    (REPO / "soak-results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nsoak: {results}")
