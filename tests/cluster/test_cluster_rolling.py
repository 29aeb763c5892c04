"""A rolling restart under load (issue 14 f): the real `dagster dev` (sensor every 5 s) drains
4 partitions while a producer sends 500 events/s and every Cassandra node, then every broker,
is restarted one at a time (SIGTERM, start, the whole cluster healthy again before the next).

The table ends with exactly the expected rows and the successful runs tile each partition;
failed runs (goal: none), the worst lag and the catch-up time are recorded.
`make test-cluster` rolls one node of each kind for at least two minutes of producing;
`make test-cluster-full` (ROLL=all) rolls all six.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from devtools.samples import message_key, sample_events
from devtools.stack import cluster
from programuser_dagster.core.event_ages import lag_seconds
from programuser_dagster.ingest.job import JOB_NAME
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import dagster_dev, settings_env, settle_runs
from tests.support.faults import RunInThread, assert_ranges_tile
from tests.support.pipeline import all_rows, expected_rows

pytestmark = pytest.mark.cluster

RATE = 500
MIN_PRODUCE_S = 120
CATCH_UP_LIMIT_S = 600
QUICK = ("cassandra-2", "kafka-2")
ALL = tuple(n.name for n in cluster.CASSANDRA_NODES + cluster.KAFKA_NODES)


def lag(s: Settings) -> tuple[int, float] | None:
    """All partitions' lag in records and the worst one's in seconds (None while Kafka cannot
    tell, e.g. during a broker's restart)."""
    kafka = kafka_resource(s)
    try:
        offsets = kafka.offsets()
        oldest = kafka.oldest_uncommitted_times(offsets)
    except Exception:
        return None
    finally:
        kafka.close()
    now_ms = time.time_ns() // 1_000_000
    return (sum(o.lag for o in offsets),
            max((lag_seconds(t, now_ms)[0] for t in oldest.values()), default=0.0))


class SteadyProducer:
    """RATE events/s, keyed (a key keeps to one partition, in order), until stop()."""

    def __init__(self, s: Settings) -> None:
        self.values: list[bytes] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers,
                                   "linger.ms": 20, "enable.idempotence": True})
        self._topic = s.kafka_input_topic
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _report(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))

    def _run(self) -> None:
        events = sample_events(10_000_000, seed=13, programs=200)
        started = time.monotonic()
        second = 0
        while not self._stop.is_set():
            for _ in range(RATE):
                event = next(events)
                value = orjson.dumps(event)
                self.values.append(value)
                self._producer.produce(self._topic, value=value, key=message_key(event),
                                       on_delivery=self._report)
            self._producer.poll(0)
            second += 1
            time.sleep(max(0.0, started + second - time.monotonic()))

    def stop(self) -> int:
        """Stop producing and wait for every delivery; how many events were produced."""
        self._stop.set()
        self._thread.join(30)
        assert self._producer.flush(120) == 0
        return len(self.values)


def roll(names: tuple[str, ...], stages: list[dict[str, Any]]) -> None:
    for name in names:
        t0 = time.monotonic()
        cluster.restart_node(name)
        cluster.healthy()
        stages.append({"node": name, "restart_to_healthy_s": round(time.monotonic() - t0, 1)})


def test_f_rolling_restart_under_load_loses_nothing(
    cluster_settings: Settings, cassandra: Any, tmp_path: Path, measured: Callable[..., None]
) -> None:
    s = cluster_settings
    names = ALL if os.environ.get("ROLL") == "all" else QUICK
    home, log = tmp_path / "dagster_home", tmp_path / "dagster-dev.log"
    worst = (0, 0.0)
    stages: list[dict[str, Any]] = []
    env = {**settings_env(s), "PROGRAMUSER_SENSOR_INTERVAL_S": "5"}
    with dagster_dev(home, log, env) as dev:
        producer = SteadyProducer(s)
        started = time.monotonic()
        rolling = RunInThread(lambda: roll(names, stages))
        while rolling.thread.is_alive() or time.monotonic() - started < MIN_PRODUCE_S:
            if (now := lag(s)) is not None:
                worst = (max(worst[0], now[0]), max(worst[1], now[1]))
            assert dev.poll() is None, log.read_text()[-3000:]
            time.sleep(5)
        rolling.join(60)  # raises what the restarts raised
        assert [stage["node"] for stage in stages] == list(names)
        produced = producer.stop()
        produce_s = time.monotonic() - started
        assert not producer.failed, producer.failed[:5]
        stopped = time.monotonic()
        while (now := lag(s)) is None or now[0] > 0:
            if now is not None:
                worst = (max(worst[0], now[0]), max(worst[1], now[1]))
            assert dev.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - stopped < CATCH_UP_LIMIT_S, f"lag still {now}"
            time.sleep(2)
        catch_up_s = time.monotonic() - stopped
        settle_runs(home, dev, log, JOB_NAME)

    assert all_rows(cassandra, s) == expected_rows(producer.values)
    kafka = kafka_resource(s)
    try:
        ends = {o.partition: o.high for o in kafka.offsets()}
    finally:
        kafka.close()
    with DagsterInstance.from_config(str(home)) as instance:
        for partition, end in ends.items():
            assert_ranges_tile(instance, 0, end, partition)
        runs = instance.get_run_records(RunsFilter(job_name=JOB_NAME))
    failed = [r.dagster_run.run_id for r in runs
              if r.dagster_run.status == DagsterRunStatus.FAILURE]
    measured("f: rolling restart under 500 events/s", nodes=list(names), stages=stages,
             events=produced, rate_held=round(produced / produce_s, 1), runs=len(runs),
             failed_runs=len(failed), worst_lag=worst[0], worst_lag_s=round(worst[1], 1),
             catch_up_s=round(catch_up_s, 1))
