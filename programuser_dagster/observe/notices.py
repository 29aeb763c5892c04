"""Failure notices without Prometheus: a sensor that posts a JSON notice (Slack-compatible
`{"text": ...}`) to PROGRAMUSER_ALERT_WEBHOOK_URL when a partition's runs keep failing, or
lag_without_progress or table_matches_source fails; once per incident, and once when it is over.

It reads only the Dagster instance: the runs' records, and the checks' evaluations that the
health sensor (or a check launched from the UI) recorded; it evaluates nothing itself. Not
Dagster's run-failure sensor: that one is called for every failed run and keeps its own cursor,
while a notice is due at the third failure in a row at one committed state, and once over, which
needs the notices sent remembered (this sensor's cursor). Ingestion never waits on it: a post
has a short timeout, a failed one is logged by the webhook's host alone and tried next tick.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    EnvVar,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ..core.notices import (
    Incident,
    check_failing,
    due,
    resolved_notice,
    run_url,
    runs_failing,
    url_host,
)
from ..core.recording import read_cursor, write_cursor
from ..ingest import checks
from ..ingest.assets import JOB_NAME, PROGRAM_ENROLLMENT
from ..ingest.backlog import failed_attempt, failed_attempts_at
from ..ingest.job import kafka_partitions
from ..ingest.run_tags import END_TAG, PARTITION_TAG, START_TAG, START_TOKEN_TAG
from ..settings import ALERT_WEBHOOK_URL, Settings, check_webhook_url

POST_TIMEOUT_S = 5.0
INTERVAL_S = 60
FINISHED_RUNS = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
# The checks that notify, and what to do about each (docs/operating.md, docs/incidents.md).
CHECK_TODO = {
    checks.STALLED_CHECK: "the partition's runs in the UI: failing (Cassandra or Kafka down, a "
                          "refusal)? sensor off? docs/operating.md#the-ui; a lost commit: "
                          "docs/incidents.md#a-commit-kafka-lost",
    checks.MATCHES_SOURCE_CHECK: "`programuser-dagster verify --partition P` for the offsets "
                                 "concerned: docs/incidents.md#prove-nothing-was-lost-verify",
}


def run_incidents(instance: DagsterInstance, ui_url: str | None) -> list[Incident]:
    """Per partition: its newest finished run, when it is the FAILED_ATTEMPTS_NOTICE-th (or
    later) failed attempt in a row at its committed state (what the sensor's back-off counts)."""
    found = []
    for partition in instance.get_dynamic_partitions(kafka_partitions.name or ""):
        last = instance.get_run_records(
            RunsFilter(job_name=JOB_NAME, statuses=FINISHED_RUNS,
                       tags={PARTITION_TAG: partition}), limit=1)
        run = last[0].dagster_run if last else None
        if run is None or not failed_attempt(run):
            continue
        start, token = run.tags.get(START_TAG), run.tags.get(START_TOKEN_TAG)
        if start is None or token is None:
            continue
        attempts = failed_attempts_at(instance, int(partition), start, token)
        end = run.tags.get(END_TAG)
        incident = runs_failing(int(partition), int(start), int(end) if end else None, token,
                                len(attempts), run_error(instance, run),
                                run_url(ui_url, run.run_id))
        if incident is not None:
            found.append(incident)
    return found


def run_error(instance: DagsterInstance, run: DagsterRun) -> str:
    """What a failed attempt says: its first step failure's error, else the run's failure."""
    if run.status == DagsterRunStatus.CANCELED:
        return "the run was canceled"
    if run.status == DagsterRunStatus.SUCCESS:
        return "the run ended without moving the offset (outcome no_progress)"
    said = ""
    for entry in instance.all_logs(
            run.run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            if error is not None:
                return f"{error.cls_name}: {error.message}" if error.cls_name else error.message
        said = said or event.message or entry.user_message
    return said


def check_incidents(instance: DagsterInstance) -> list[Incident]:
    """The notifying checks whose latest recorded evaluation failed."""
    return [check_failing(name, e.description, CHECK_TODO[name])
            for name, e in checks.latest_evaluations(instance, PROGRAM_ENROLLMENT,
                                                     tuple(CHECK_TODO)).items()
            if not e.passed]


def post(url: str, payload: dict[str, Any], warn: Callable[[str], None]) -> bool:
    """POST the notice as JSON; False (and a warning naming the host only) if it did not go."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT_S) as response:
            response.read()
        return True
    except urllib.error.HTTPError as exc:  # its text is the status line: no URL
        why = f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        why = str(exc.reason)
    except (OSError, ValueError) as exc:  # a timeout, a reset connection
        why = type(exc).__name__
    warn(f"Could not post the notice to {url_host(url)} ({why}); trying again next tick.")
    return False


def build_notice_sensor(settings: Settings, webhook: EnvVar | None) -> SensorDefinition:
    """The sensor posting failure notices to `webhook` (EnvVar(PROGRAMUSER_ALERT_WEBHOOK_URL),
    read at each tick; None: unset, the sensor only says it is off)."""

    @sensor(name="failure_notice_sensor", minimum_interval_seconds=INTERVAL_S,
            default_status=DefaultSensorStatus.RUNNING)
    def failure_notice_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        """Every minute: posts a notice to PROGRAMUSER_ALERT_WEBHOOK_URL when a partition's
        runs failed 3 times in a row at its committed offset, or lag_without_progress or
        table_matches_source failed (their latest recorded evaluation), once per incident,
        and a resolved notice when it is over."""
        raw = webhook.get_value() if webhook is not None else None
        if not raw:
            return SkipReason(f"Off: {ALERT_WEBHOOK_URL} is not set.")
        url = check_webhook_url(raw)
        current = {i.key: i for i in
                   run_incidents(context.instance, settings.ui_url)
                   + check_incidents(context.instance)}
        cursor = read_cursor(context.cursor)
        notified: dict[str, str] = dict(cursor.get("notified") or {})
        todo = due(notified, current)
        sent = failed = 0
        for incident in todo.firing:
            if post(url, incident.notice(), context.log.warning):
                notified[incident.key] = incident.title
                sent += 1
            else:
                failed += 1
        for key, title in todo.resolved:
            if post(url, resolved_notice(key, title), context.log.warning):
                del notified[key]
                sent += 1
            else:
                failed += 1
        summary = (f"{len(current)} incident(s) open; {sent} notice(s) sent to "
                   f"{url_host(url)} this tick" + (f", {failed} to retry" if failed else ""))
        if sent or failed:
            context.log.info(summary)
        return SensorResult(skip_reason=SkipReason(summary),
                            cursor=write_cursor({**cursor, "notified": notified}))

    return failure_notice_sensor
