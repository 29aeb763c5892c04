"""Failure notices, the pure part: which incidents are new or over, and what a notice says."""

from __future__ import annotations

from programuser_dagster.core.notices import (
    FAILED_ATTEMPTS_NOTICE,
    check_failing,
    due,
    first_line,
    resolved_notice,
    run_url,
    runs_failing,
    url_host,
)


def failing(attempts: int = FAILED_ATTEMPTS_NOTICE, start: int = 1500, token: str = "7"):
    return runs_failing(2, start, 1800, token, attempts,
                        "KafkaException: dead-letter topic unknown\n  at line 3", "http://ui/runs/r1")


def test_runs_failing_is_an_incident_from_the_third_failure_in_a_row_only() -> None:
    assert failing(FAILED_ATTEMPTS_NOTICE - 1) is None
    incident = failing()
    assert incident is not None
    text = incident.notice()["text"]
    assert "partition 2: 3 runs in a row failed at offset 1500" in text
    assert "Range [1500, 1800)" in text
    assert "Last error: KafkaException: dead-letter topic unknown\n" in text
    assert "at line 3" not in text
    assert "Last run: http://ui/runs/r1" in text
    assert "What to do: " in text and "docs/incidents.md" in text


def test_one_incident_per_committed_state_however_many_failures() -> None:
    assert failing(3).key == failing(9).key  # a fourth failure is the same incident
    assert failing(3).key != failing(3, start=1800).key  # a commit: a new state, a new one
    assert failing(3).key != failing(3, token="8").key


def test_a_new_incident_is_due_once_and_resolved_once_over() -> None:
    incident = failing()
    check = check_failing("table_matches_source", "3 rows are missing.\nmore", "verify")
    now = {incident.key: incident, check.key: check}
    first = due({}, now)
    assert first.firing == (check, incident) and first.resolved == ()
    notified = {i.key: i.title for i in first.firing}
    assert due(notified, now).firing == () and due(notified, now).resolved == ()
    over = due(notified, {check.key: check})
    assert over.firing == () and over.resolved == ((incident.key, incident.title),)


def test_a_notice_not_sent_is_due_again() -> None:
    # The caller records only what it posted: an unrecorded incident stays due.
    incident = failing()
    assert due({}, {incident.key: incident}).firing == (incident,)


def test_notices_are_slack_compatible_json_with_structured_fields() -> None:
    check = check_failing("lag_without_progress", "Partitions ['2'] have lag", "see the runs")
    firing = check.notice()
    assert firing["text"].startswith("[programuser-dagster] FIRING: check lag_without_progress")
    assert (firing["status"], firing["incident"]) == ("firing", "check:lag_without_progress")
    resolved = resolved_notice(check.key, check.title)
    assert resolved["text"] == ("[programuser-dagster] RESOLVED: check lag_without_progress "
                                "failed")
    assert resolved["status"] == "resolved"


def test_only_the_scheme_and_host_of_a_webhook_are_shown() -> None:
    url = "https://hooks.slack.com:443/services/T0/B0/SECRETTOKEN?token=x#y"
    assert url_host(url) == "https://hooks.slack.com"
    assert url_host("http://user:pw@127.0.0.1:8080/h") == "http://127.0.0.1"


def test_first_line_and_run_links() -> None:
    assert first_line("\n\n  boom  \nrest") == "boom"
    assert first_line("") == "(no message)"
    assert len(first_line("x" * 1000)) == 300
    assert run_url("https://dagster.example.org/", "abc") == "https://dagster.example.org/runs/abc"
    assert run_url(None, "abc") is None
