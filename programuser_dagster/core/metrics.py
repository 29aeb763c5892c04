"""The metrics Prometheus scrapes, computed from plain values: pure (no client library here).

The exporter (observe/exporter.py) gathers the values (offsets and record times from Kafka,
check evaluations, run counts and run reports from the Dagster instance) and hands them to the
functions below, which return metric families; it only turns them into prometheus_client's.

Names follow Prometheus' conventions: a `programuser_` prefix, the unit in the name (seconds,
records, ratio), base units, `_total` for counters, and labels of bounded values only
(partition, reason, outcome, check). Nothing here is a message's content, a key or a secret:
offsets, counts, ages, the contract's reasons and the checks' names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .event_ages import lag_seconds
from .offsets import PartitionOffsets

Labels = tuple[tuple[str, str], ...]
PREFIX = "programuser_"


@dataclass(frozen=True)
class Sample:
    labels: Labels
    value: float


@dataclass
class Family:
    """One metric: its name (counters end in _total), kind, help text and samples."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append(Sample(tuple(sorted(labels.items())), float(value)))


def gauge(name: str, help: str) -> Family:
    return Family(PREFIX + name, "gauge", help)


def counter(name: str, help: str) -> Family:
    return Family(PREFIX + name, "counter", help)


def lag_families(offsets: Sequence[PartitionOffsets], oldest_ms: Mapping[int, int | None],
                 now_ms: int) -> list[Family]:
    """Per partition: the lag in records and in seconds (the age of its oldest uncommitted
    record: left out where that record's time did not arrive, since unknown is not 0), the
    committed offset, the log end, and when the last commit was made (left out where its
    metadata has no time: a commit of a version before `at=`, or none yet)."""
    records = gauge("lag_records", "Records of the partition not committed yet.")
    seconds = gauge("lag_seconds", "Age of the partition's oldest uncommitted record (0: no "
                    "lag; absent: its time is unknown).")
    committed = gauge("committed_offset", "The consumer group's committed offset.")
    end = gauge("log_end_offset", "The partition's high-water mark.")
    beyond = gauge("committed_beyond_end_records", "How far the committed offset is past the "
                   "log end (records that arrive below it would be skipped: replay).")
    at = gauge("last_commit_timestamp_seconds", "When the partition's offset was last "
               "committed (a run's commit, or a renewal), seconds since the epoch.")
    for o in offsets:
        p = str(o.partition)
        records.add(o.lag, partition=p)
        if o.lag == 0 or oldest_ms.get(o.partition) is not None:
            seconds.add(lag_seconds(oldest_ms.get(o.partition), now_ms)[0], partition=p)
        if o.committed is not None:
            committed.add(o.committed, partition=p)
        end.add(o.high, partition=p)
        beyond.add(max(0, (o.committed or 0) - o.high), partition=p)
        if o.committed_at > 0:
            at.add(o.committed_at, partition=p)
    return [records, seconds, committed, end, beyond, at]


@dataclass(frozen=True)
class CheckVerdict:
    """A health check's latest evaluation: passed or not, when (s since the epoch), and for
    table_matches_source the counts it found."""

    passed: bool
    at: float
    rows_missing: int = 0
    cells_differing: int = 0


def check_families(verdicts: Mapping[str, CheckVerdict],
                   matches_source: str) -> list[Family]:
    """The latest verdict of each health check, and the differences the latest
    table_matches_source (verify on the last run's range) found."""
    passed = gauge("check_passed", "The health check's latest verdict: 1 passed, 0 failed.")
    when = gauge("check_evaluated_timestamp_seconds", "When the check was last evaluated.")
    missing = gauge("table_rows_missing", "Rows missing from the table in the latest "
                    "table_matches_source (the last run's range, a sample of its keys).")
    differing = gauge("table_cells_differing", "Cells differing from their events in the "
                      "latest table_matches_source.")
    for name, verdict in sorted(verdicts.items()):
        passed.add(1 if verdict.passed else 0, check=name)
        when.add(verdict.at, check=name)
        if name == matches_source:
            missing.add(verdict.rows_missing)
            differing.add(verdict.cells_differing)
    return [passed, when, missing, differing]


def run_families(runs_by_outcome: Mapping[str, float],
                 failed_attempts: Mapping[int, int]) -> list[Family]:
    """Runs by outcome since the history began (MonotonicTotals), and per partition the failed
    attempts at its current committed offset (the sensor's back-off counts them; a run that
    commits moves the offset and ends the streak)."""
    runs = counter("runs_total", "Runs of program_user_info that ended, by outcome.")
    for outcome, n in sorted(runs_by_outcome.items()):
        runs.add(n, outcome=outcome)
    attempts = gauge("failed_attempts", "Runs at the partition's current committed offset "
                     "that failed, were canceled or made no progress.")
    for partition, n in sorted(failed_attempts.items()):
        attempts.add(n, partition=str(partition))
    return [runs, attempts]


def settings_families(dead_letter_share_warn: float) -> list[Family]:
    """Settings the alert rules compare with, so that the rules follow the deployment's."""
    share = gauge("dead_letter_share_warn_ratio", "PROGRAMUSER_DLQ_SHARE_WARN: the share of "
                  "dead letters above which the dead-letter alert fires.")
    share.add(dead_letter_share_warn)
    return [share]


def source_families(up: Mapping[str, bool]) -> list[Family]:
    """Whether the last refresh could read each source (kafka, dagster): the metrics of one
    that could not are left out rather than shown stale."""
    family = gauge("exporter_source_up", "1 if the exporter's last refresh read the source.")
    for source, ok in sorted(up.items()):
        family.add(1 if ok else 0, source=source)
    return [family]


# A run's event ages at write (core/event_ages.py: Ages.metadata()): one gauge each, since a
# "quantile" label belongs to summaries only (promtool's lint), and a run's ages are no summary.
AGES = (("p50", "event_age_p50_s"), ("p99", "event_age_p99_s"), ("max", "event_age_max_s"))


@dataclass
class EventTotals:
    """Events read, written, skipped and dead-lettered (by reason), summed over the recorded
    counts of committed runs (RangeReport.metadata()), each counted once, plus each
    partition's last run's event ages at write."""

    read: int = 0
    written: int = 0
    lost_to_retention: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    last_ages: dict[int, dict[str, float]] = field(default_factory=dict)

    def add(self, counts: Mapping[str, Any]) -> None:
        """Add one committed run's recorded counts (a newer run after an older one)."""
        self.read += int(counts.get("messages_read", 0))
        self.written += int(counts.get("messages_written", 0))
        self.lost_to_retention += int(counts.get("lost_to_retention", 0))
        for reason, n in (counts.get("skipped_by_reason") or {}).items():
            self.skipped[reason] = self.skipped.get(reason, 0) + int(n)
        for reason, n in (counts.get("dead_lettered_by_reason") or {}).items():
            self.dead_lettered[reason] = self.dead_lettered.get(reason, 0) + int(n)
        if "partition" in counts and all(key in counts for _, key in AGES):
            self.last_ages[int(counts["partition"])] = {
                name: float(counts[key]) for name, key in AGES}

    def families(self) -> list[Family]:
        read = counter("events_read_total", "Events read by committed runs.")
        read.add(self.read)
        written = counter("events_written_total", "Events written to Cassandra by committed "
                          "runs.")
        written.add(self.written)
        lost = counter("events_lost_to_retention_total", "Records deleted by the topic's "
                       "retention before a run read them.")
        lost.add(self.lost_to_retention)
        skipped = counter("events_skipped_total", "Events skipped by the contract, by reason.")
        for reason, n in sorted(self.skipped.items()):
            skipped.add(n, reason=reason)
        letters = counter("events_dead_lettered_total", "Events sent to the dead-letter topic, "
                          "by reason.")
        for reason, n in sorted(self.dead_lettered.items()):
            letters.add(n, reason=reason)
        ages = {name: gauge(f"last_run_event_age_{name}_seconds", f"The {what} of the "
                            "event ages at write (record time to Cassandra's acknowledgement) "
                            "of the partition's last committed run that wrote events.")
                for name, what in (("p50", "median"), ("p99", "99th percentile"),
                                   ("max", "largest"))}
        for partition, last in sorted(self.last_ages.items()):
            for name, value in last.items():
                ages[name].add(value, partition=str(partition))
        return [read, written, lost, skipped, letters, *ages.values()]


@dataclass
class MonotonicTotals:
    """Totals recounted from stored history (runs by outcome) that must not go down while the
    exporter runs: prune_history deletes old runs, and a total that dropped would read as a
    counter reset. A drop is carried in `carried` instead. During a prune, the runs that end
    within the same refresh as a deletion may go uncounted (the error is at most the smaller of
    the two, never an overcount); a restart starts from the stored history again."""

    seen: dict[str, float] = field(default_factory=dict)
    carried: dict[str, float] = field(default_factory=dict)

    def update(self, stored: Mapping[str, float]) -> dict[str, float]:
        """The totals to export, given what the history holds now."""
        for key, now in stored.items():
            before = self.seen.get(key, now)
            if now < before:
                self.carried[key] = self.carried.get(key, 0.0) + before - now
            self.seen[key] = now
        return {key: self.carried.get(key, 0.0) + now for key, now in self.seen.items()}

