"""core/metrics.py: the metric families computed from plain values."""

from __future__ import annotations

from programuser_dagster.core.metrics import (
    CheckVerdict,
    EventTotals,
    Family,
    MonotonicTotals,
    check_families,
    lag_families,
    run_families,
)
from programuser_dagster.core.offsets import PartitionOffsets


def values(families: list[Family]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(f.name, s.labels): s.value for f in families for s in f.samples}


def p(n: int) -> tuple[tuple[str, str], ...]:
    return (("partition", str(n)),)


def test_lag_in_records_and_seconds_and_the_last_commit_per_partition() -> None:
    offsets = [
        PartitionOffsets(0, low=0, high=10, committed=4, committed_at=1_700_000_000.0),
        PartitionOffsets(1, low=0, high=5, committed=5),  # caught up, commit time unknown
        PartitionOffsets(2, low=0, high=3, committed=None),  # lag, its record time unknown
    ]
    got = values(lag_families(offsets, {0: 90_000, 2: None}, now_ms=100_000))
    assert got[("programuser_lag_records", p(0))] == 6
    assert got[("programuser_lag_seconds", p(0))] == 10.0
    assert got[("programuser_lag_seconds", p(1))] == 0.0
    assert ("programuser_lag_seconds", p(2)) not in got  # unknown, not 0
    assert got[("programuser_lag_records", p(2))] == 3
    assert got[("programuser_last_commit_timestamp_seconds", p(0))] == 1_700_000_000.0
    assert ("programuser_last_commit_timestamp_seconds", p(1)) not in got
    assert ("programuser_committed_offset", p(2)) not in got
    assert got[("programuser_log_end_offset", p(1))] == 5


def test_a_commit_beyond_the_log_end_is_shown() -> None:
    got = values(lag_families([PartitionOffsets(0, low=0, high=10, committed=25)], {}, 0))
    assert got[("programuser_committed_beyond_end_records", p(0))] == 15
    assert got[("programuser_lag_records", p(0))] == 0


def test_check_verdicts_and_the_differences_table_matches_source_found() -> None:
    got = values(check_families({
        "accounting_balanced": CheckVerdict(True, 10.0),
        "table_matches_source": CheckVerdict(False, 20.0, rows_missing=2, cells_differing=3),
    }, "table_matches_source"))
    assert got[("programuser_check_passed", (("check", "accounting_balanced"),))] == 1
    assert got[("programuser_check_passed", (("check", "table_matches_source"),))] == 0
    assert got[("programuser_check_evaluated_timestamp_seconds",
                (("check", "table_matches_source"),))] == 20.0
    assert got[("programuser_table_rows_missing", ())] == 2
    assert got[("programuser_table_cells_differing", ())] == 3


def test_runs_by_outcome_and_failed_attempts() -> None:
    runs, attempts = run_families({"committed": 7, "failed": 2}, {0: 0, 3: 4})
    assert runs.kind == "counter" and runs.name == "programuser_runs_total"
    assert values([runs])[("programuser_runs_total", (("outcome", "failed"),))] == 2
    assert values([attempts])[("programuser_failed_attempts", p(3))] == 4


def test_event_totals_sum_each_report_and_keep_each_partitions_last_ages() -> None:
    totals = EventTotals()
    totals.add({"partition": 1, "messages_read": 10, "messages_written": 7,
                "skipped_by_reason": {"empty": 1}, "dead_lettered_by_reason": {"not_json": 2},
                "event_age_p50_s": 1.0, "event_age_p99_s": 2.0, "event_age_max_s": 3.0})
    totals.add({"partition": 1, "messages_read": 5, "messages_written": 4,
                "dead_lettered_by_reason": {"not_json": 1}, "lost_to_retention": 2,
                "event_age_p50_s": 0.5, "event_age_p99_s": 0.6, "event_age_max_s": 0.7})
    totals.add({"partition": 2, "messages_read": 0, "messages_written": 0})  # no ages: none
    got = values(totals.families())
    assert got[("programuser_events_read_total", ())] == 15
    assert got[("programuser_events_written_total", ())] == 11
    assert got[("programuser_events_lost_to_retention_total", ())] == 2
    assert got[("programuser_events_skipped_total", (("reason", "empty"),))] == 1
    assert got[("programuser_events_dead_lettered_total", (("reason", "not_json"),))] == 3
    ages = {(name, labels): v for (name, labels), v in got.items() if "event_age" in name}
    assert ages == {("programuser_last_run_event_age_p50_seconds", p(1)): 0.5,
                    ("programuser_last_run_event_age_p99_seconds", p(1)): 0.6,
                    ("programuser_last_run_event_age_max_seconds", p(1)): 0.7}


def test_totals_never_go_down_when_history_is_pruned() -> None:
    totals = MonotonicTotals()
    assert totals.update({"failed": 5, "committed": 100}) == {"failed": 5, "committed": 100}
    assert totals.update({"failed": 6, "committed": 110}) == {"failed": 6, "committed": 110}
    # A prune deletes 4 old failures and 50 old commits; 3 runs committed meanwhile.
    after = totals.update({"failed": 2, "committed": 63})
    assert after == {"failed": 6, "committed": 110}  # the 3 go uncounted: never an overcount
    assert totals.update({"failed": 3, "committed": 70}) == {"failed": 7, "committed": 117}
