"""Is ingestion healthy? The rules behind the asset checks, from what the runs recorded.

Each rule returns a Verdict; assets.py turns it into an asset check (launchable from the UI)
and sensors.py into an evaluation reported by the monitoring sensor.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ..cassandra.client import CassandraResource
from ..core.offsets import PartitionOffsets
from ..core.report import balances
from ..incidents.expected_cells import unverified_line
from ..incidents.verify import VerifyReport, verify
from ..kafka.resource import KafkaResource
from ..settings import Settings
from .run_tags import PARTITION_TAG

ACCOUNTING_CHECK = "accounting_balanced"
DEAD_LETTER_SHARE_CHECK = "dead_letter_share"
STALLED_CHECK = "lag_without_progress"
MATCHES_SOURCE_CHECK = "table_matches_source"
# Keys compared per evaluation of table_matches_source: keeps a sensor tick well inside 60 s.
MATCHES_SOURCE_KEYS = 1_000


@dataclass
class Verdict:
    check_name: str
    passed: bool
    severity: AssetCheckSeverity
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def result(self) -> AssetCheckResult:
        return AssetCheckResult(
            check_name=self.check_name,
            passed=self.passed,
            severity=self.severity,
            description=self.description,
            metadata=self.metadata,
        )

    def evaluation(self, asset_key: Any) -> AssetCheckEvaluation:
        return AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=self.check_name,
            passed=self.passed,
            severity=self.severity,
            description=self.description,
            metadata=self.metadata,
        )


def recent_runs_counts(
    instance: DagsterInstance, asset_key: Any, limit: int
) -> list[dict[str, Any]]:
    """The recorded counts of the latest `limit` materializations, newest first."""
    records = instance.fetch_materializations(asset_key, limit=limit, ascending=False).records
    out = []
    for record in records:
        mat = record.asset_materialization
        if mat is not None:
            out.append({k: v.value for k, v in mat.metadata.items()})
    return out


def balanced(counts: dict[str, Any]) -> bool:
    """The accounting rule (accounting.balances) on a run's recorded counts."""
    return balances(counts["messages_read"], counts["messages_written"],
                    counts["messages_skipped"], counts["messages_dead_lettered"])


def accounting(runs: Sequence[dict[str, Any]]) -> Verdict:
    """Every message of the latest runs is written, skipped or dead-lettered."""
    unbalanced = [r for r in runs if not balanced(r)]
    return Verdict(
        ACCOUNTING_CHECK,
        passed=not unbalanced,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"The latest {len(runs)} runs each account for every message they read."
            if not unbalanced
            else f"{len(unbalanced)} of the latest {len(runs)} runs lost track of messages: "
            f"partition {unbalanced[0]['partition']} offsets [{unbalanced[0]['start_offset']}, "
            f"{unbalanced[0]['end_offset']})."
        ),
        metadata={"runs_checked": len(runs), "runs_unbalanced": len(unbalanced)},
    )


def dead_letter_share(runs: Sequence[dict[str, Any]], threshold: float) -> Verdict:
    """The share of the last run's messages that went to the dead-letter topic."""
    if not runs:
        return Verdict(DEAD_LETTER_SHARE_CHECK, True, AssetCheckSeverity.WARN, "No run yet.")
    last = runs[0]
    share = last["messages_dead_lettered"] / last["messages_read"] if last["messages_read"] else 0
    return Verdict(
        DEAD_LETTER_SHARE_CHECK,
        passed=share <= threshold,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"{share:.1%} of the last run's {last['messages_read']} messages were dead-lettered "
            f"(threshold {threshold:.1%})"
            + ("." if share <= threshold else ": read the dead-letter topic's reason headers.")
        ),
        metadata={"dead_letter_share": round(share, 4), "threshold": threshold},
    )


def stalled_partitions(
    instance: DagsterInstance,
    job_name: str,
    offsets: Sequence[PartitionOffsets],
    now: float,
    max_age_s: float,
    gathering: Collection[int] = (),
    lost: Mapping[int, str] | None = None,
) -> Verdict:
    """Partitions with lag whose last successful run is older than max_age_s (or never ran),
    but for those `gathering` (their lag waits for the sensor's trigger, core/trigger.py: a
    quiet partition's first records); partitions whose committed offset is beyond the log end
    (no lag, and no progress ever: an error, whatever the runs did), or whose commit Kafka lost
    (`lost`: each one's line, core/kept_commit.py; not run until an operator resumes it: an
    error too)."""
    lost = lost or {}
    stalled: dict[str, int] = {}
    beyond = [o for o in offsets if o.beyond_end]
    for o in offsets:
        # Gathering: waits for the trigger; lost: not run, said below.
        if o.lag == 0 or o.partition in gathering or o.partition in lost:
            continue
        last = instance.get_run_records(
            RunsFilter(
                job_name=job_name,
                statuses=[DagsterRunStatus.SUCCESS],
                tags={PARTITION_TAG: str(o.partition)},
            ),
            limit=1,
        )
        ended = (last[0].end_time or 0.0) if last else 0.0
        if now - ended > max_age_s:
            stalled[str(o.partition)] = o.lag
    said = [f"partition {o.partition}: {o.beyond_end_warning()}." for o in beyond]
    said += [f"partition {p}: {line}." for p, line in sorted(lost.items())]
    if stalled:
        said.append(f"Partitions {sorted(stalled)} have lag but no successful run in the last "
                    f"{max_age_s:.0f}s: is the sensor (or schedule) on, and are their runs "
                    "failing?")
    return Verdict(
        STALLED_CHECK,
        passed=not stalled and not beyond and not lost,
        severity=AssetCheckSeverity.ERROR if beyond or lost else AssetCheckSeverity.WARN,
        description=" ".join(said) or "Every partition with lag had a successful run recently.",
        metadata={"stalled_partitions": stalled, "max_age_s": max_age_s,
                  "beyond_end_partitions": {str(o.partition): (o.committed or 0) - o.high
                                            for o in beyond},
                  "lost_commit_partitions": sorted(lost)},
    )


def last_range(runs: Sequence[dict[str, Any]]) -> tuple[int, int, int] | None:
    """(partition, start, end) of the newest materialization's range, if it read anything."""
    if not runs or "partition" not in runs[0]:
        return None
    last = runs[0]
    start, end = int(last["start_offset"]), int(last["end_offset"])
    return (int(last["partition"]), start, end) if end > start else None


def table_matches(report: VerifyReport, partition: int, start: int, end: int) -> Verdict:
    """The keys and columns the last run's events wrote hold what those events say (a
    verify.VerifyReport of that range, on a sample of at most MATCHES_SOURCE_KEYS keys)."""
    cells = sum(report.cells_differing.values())
    where = f"partition {partition} offsets [{start}, {end})"
    if report.ok:
        description = (f"The {report.keys_checked} keys checked of the last run's range "
                       f"({where}) hold what its events wrote.")
    elif not cells and not report.rows_missing:  # only cells a run may still be writing
        description = (f"Of the {report.keys_checked} keys checked of the last run's range "
                       f"({where}), " + unverified_line(report.cells_unverified,
                                                        report.unverified_sample))
    else:
        columns = ", ".join(f"{c} {n}" for c, n in sorted(report.cells_differing.items()) if n)
        description = (
            f"Of the {report.keys_checked} keys checked of the last run's range ({where}), "
            f"{report.rows_missing} rows are missing and {cells} cells differ"
            + (f" ({columns})" if columns else "")
            + ": run `programuser-dagster verify --partition "
            f"{partition}` for the offsets concerned (a hand edit also shows here)."
            + (f" {unverified_line(report.cells_unverified, report.unverified_sample)}"
               if report.cells_unverified else ""))
    return Verdict(
        MATCHES_SOURCE_CHECK,
        passed=report.ok,
        severity=AssetCheckSeverity.WARN,
        description=description,
        metadata={"partition": partition, "start_offset": start, "end_offset": end,
                  "keys_checked": report.keys_checked, "rows_missing": report.rows_missing,
                  "cells_differing": cells, "cells_unverified": report.cells_unverified},
    )


def matches_source(
    settings: Settings, partition: int, start: int, end: int,
    kafka: KafkaResource | None = None, cassandra: CassandraResource | None = None,
) -> Verdict:
    """Evaluate table_matches_source on the range [start, end) of a partition, with the
    clients Dagster gives the sensor or the check (default: verify's own)."""
    report = verify(settings, ranges={partition: (start, end)}, max_keys=MATCHES_SOURCE_KEYS,
                    recheck_delay_s=1.0, kafka=kafka, cassandra=cassandra)
    return table_matches(report, partition, start, end)


FINISHED = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}


@dataclass(frozen=True)
class Evaluated:
    """A check's latest recorded evaluation: its verdict, when (s since the epoch), its words
    and metadata."""

    passed: bool
    at: float
    description: str
    metadata: dict[str, Any]


def latest_evaluations(instance: DagsterInstance, asset_key: Any,
                       names: Sequence[str]) -> dict[str, Evaluated]:
    """The latest finished evaluation of each named check of the asset, as recorded (by the
    health sensor, or a check launched from the UI); a check never evaluated is left out."""
    found = {}
    for name in names:
        history = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset_key, name), limit=1, status=FINISHED)
        if history and history[0].event is not None:
            entry = history[0].event
            evaluation = entry.dagster_event.event_specific_data
            found[name] = Evaluated(
                passed=bool(evaluation.passed), at=float(entry.timestamp),
                description=evaluation.description or "",
                metadata={k: v.value for k, v in evaluation.metadata.items()})
    return found
