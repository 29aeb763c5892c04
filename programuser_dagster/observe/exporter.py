"""`programuser-dagster metrics`: the exporter Prometheus scrapes, like Kafka's lag exporters.

It reads state where it lives, on a scrape, at most once per REFRESH_S (a scrape within that gets
the last reading, so however often Prometheus, or several of them, scrape, Kafka and the
instance are asked at most every 15 s): the input topic's offsets and its lagging partitions'
oldest record times from Kafka; from the Dagster instance the health checks' latest
evaluations, the runs counted by outcome, each lagging partition's failed attempts, and the
counts of the committed runs' reports, read once each (by storage id, from where the last
refresh stopped). The metric families are core/metrics.py's; this module only gathers their
inputs and hands them to prometheus_client.

Why not the Pushgateway for the runs' counts: every run already stores them in Dagster's
storage, which outlives any process; pushing would add a server to run and back up, and a
count pushed by a run that then failed would have to be taken back (docs/design.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from dagster import AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from ..core import metrics
from ..core.metrics import CheckVerdict, EventTotals, Family, MonotonicTotals
from ..ingest import checks
from ..ingest.assets import JOB_NAME, PROGRAM_ENROLLMENT
from ..ingest.backlog import failed_attempts
from ..ingest.run_tags import COMMITTED, HELD, NO_PROGRESS, OUTCOME_TAG, SUPERSEDED
from ..kafka.resource import KafkaResource, KafkaUnavailable
from ..settings import Settings

log = logging.getLogger(__name__)

REFRESH_S = 15.0
# Committed runs' reports read per query while catching up (the first refresh reads them all).
PAGE = 1_000
CHECKS = (checks.ACCOUNTING_CHECK, checks.DEAD_LETTER_SHARE_CHECK, checks.STALLED_CHECK,
          checks.MATCHES_SOURCE_CHECK)
# A finished run's outcome: the tag a run that succeeded sets, or its status.
OUTCOMES: dict[str, RunsFilter] = {
    **{outcome: RunsFilter(job_name=JOB_NAME, statuses=[DagsterRunStatus.SUCCESS],
                           tags={OUTCOME_TAG: outcome})
       for outcome in (COMMITTED, SUPERSEDED, NO_PROGRESS, HELD)},
    "failed": RunsFilter(job_name=JOB_NAME, statuses=[DagsterRunStatus.FAILURE]),
    "canceled": RunsFilter(job_name=JOB_NAME, statuses=[DagsterRunStatus.CANCELED]),
}


class Exporter:
    """A prometheus_client collector over one Kafka resource and one Dagster instance."""

    def __init__(self, settings: Settings, instance: DagsterInstance, kafka: KafkaResource,
                 refresh_s: float = REFRESH_S) -> None:
        self.settings, self.instance, self.kafka = settings, instance, kafka
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._families: list[Family] = []
        self._events = EventTotals()
        self._cursor: int | None = None  # storage id of the last committed run's report read
        self._runs = MonotonicTotals()

    def collect(self) -> Iterator[Metric]:
        """What prometheus_client calls on each scrape."""
        for family in self.families():
            yield _client_family(family)

    def families(self) -> list[Family]:
        """The last reading, refreshed first if older than refresh_s (one refresh at a time)."""
        with self._lock:
            if time.monotonic() - self._read_at >= self.refresh_s:
                self._families = self.refresh()
                self._read_at = time.monotonic()
            return self._families

    def refresh(self) -> list[Family]:
        """Read every source; the families of one that fails are left out (not shown stale) and
        its programuser_exporter_source_up is 0."""
        families = metrics.settings_families(self.settings.dead_letter_share_warn)
        up = {}
        offsets: list[Any] = []
        try:
            offsets = self.kafka.offsets()
            oldest = self.kafka.oldest_uncommitted_times(offsets)
            families += metrics.lag_families(offsets, oldest, time.time_ns() // 1_000_000)
            up["kafka"] = True
        except KafkaUnavailable as exc:
            log.warning("metrics: Kafka did not answer: %s", exc)
            up["kafka"] = False
        try:
            families += self._from_instance(offsets)
            up["dagster"] = True
        except Exception as exc:  # the instance's storage (sqlite, PostgreSQL) is down, ...
            log.warning("metrics: the Dagster instance did not answer: %s", exc)
            up["dagster"] = False
        return families + metrics.source_families(up)

    def _from_instance(self, offsets: list[Any]) -> list[Family]:
        self._read_committed_runs()
        stored = {outcome: float(self.instance.get_runs_count(f))
                  for outcome, f in OUTCOMES.items()}
        attempts = {o.partition: len(failed_attempts(self.instance, o)) if o.lag else 0
                    for o in offsets}
        return (metrics.check_families(self._verdicts(), checks.MATCHES_SOURCE_CHECK)
                + metrics.run_families(self._runs.update(stored), attempts)
                + self._events.families())

    def _read_committed_runs(self) -> None:
        """Add the reports of the committed runs stored since the last refresh (all of them on
        the first): each is counted once, so pruning them later lowers no total."""
        while True:
            result = self.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=PROGRAM_ENROLLMENT, after_storage_id=self._cursor),
                limit=PAGE, ascending=True)
            for record in result.records:
                materialization = record.asset_materialization
                if materialization is not None:
                    self._events.add({k: v.value for k, v in materialization.metadata.items()})
                self._cursor = record.storage_id
            if len(result.records) < PAGE:
                return

    def _verdicts(self) -> dict[str, CheckVerdict]:
        return {
            name: CheckVerdict(passed=e.passed, at=e.at,
                               rows_missing=int(e.metadata.get("rows_missing", 0)),
                               cells_differing=int(e.metadata.get("cells_differing", 0)))
            for name, e in checks.latest_evaluations(self.instance, PROGRAM_ENROLLMENT,
                                                     CHECKS).items()
        }


def _client_family(family: Family) -> Metric:
    labels = sorted({name for sample in family.samples for name, _ in sample.labels})
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    out = kind(family.name, family.help, labels=labels)
    for sample in family.samples:
        values = dict(sample.labels)
        out.add_metric([values[name] for name in labels], sample.value)
    return out


def registry(exporter: Exporter) -> CollectorRegistry:
    """A registry of the exporter's metrics alone (not the client's process and GC metrics:
    the pod's are the platform's to scrape)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(exporter)
    return reg


def serve(exporter: Exporter, host: str, port: int) -> WSGIServer:
    """Serve /metrics on host:port from a background thread; the server's shutdown() stops
    it."""
    server, _ = start_http_server(port, addr=host, registry=registry(exporter))
    return server
