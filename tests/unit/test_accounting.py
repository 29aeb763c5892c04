"""A range's report: its stored form and its cut (pure)."""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict

from programuser_dagster.core.report import RangeReport, balances


def _report() -> RangeReport:
    return RangeReport(partition=2, start=10, end=20, high_watermark=25, committed_before=10,
                       token_before=3, read=10, written=7, rows_upserted=6,
                       skipped={"missing_ids": 1}, dead_letters=[(12, "not_json"), (15, "x")],
                       read_to_end=True)


def test_the_stored_form_gives_back_every_field() -> None:
    report = _report()
    assert RangeReport.from_bytes(report.to_bytes()) == report
    empty = RangeReport(partition=0, start=0, end=0, high_watermark=0)
    assert RangeReport.from_bytes(empty.to_bytes()) == empty


def test_a_field_this_version_does_not_know_is_left_out() -> None:
    stored = {**asdict(_report()), "from_a_newer_version": 1}
    loaded = RangeReport.from_bytes(zlib.compress(json.dumps(stored).encode()))
    assert loaded == _report()


def test_a_cut_shortens_the_range_and_keeps_the_planned_end() -> None:
    report = _report()
    report.cut_at(20)  # at the end: no cut
    report.cut_at(25)
    assert (report.end, report.requested_end) == (20, None)
    report.cut_at(16)
    assert (report.end, report.requested_end) == (16, 20)


def test_the_balance_rule() -> None:
    assert balances(10, 7, 1, 2)
    assert not balances(10, 7, 1, 1)
    report = _report()
    report.dead_lettered = {"not_json": 1, "x": 1}
    assert report.balanced
    report.written = 6
    assert not report.balanced


def test_lost_offsets_are_counted_kept_and_cut_with_the_range() -> None:
    report = _report()
    report.lose(7, 10)  # below the start: found when the run planned
    report.lose(12, 14)  # inside the range: deleted while it read
    report.lose(17, 23)  # past the cut below: the next run's
    report.lose(5, 5)  # nothing
    assert (report.lost_to_retention, report.lost_while_reading) == (11, [(12, 14), (17, 23)])
    assert RangeReport.from_bytes(report.to_bytes()) == report
    report.cut_at(18)
    assert report.lost_offsets == [(7, 10), (12, 14), (17, 18)]
    assert report.lost_to_retention == 6
    report.cut_at(12)  # a run is not cut below a read offset; losses never go negative
    assert (report.lost_offsets, report.lost_to_retention) == ([(7, 10)], 3)
    md = report.metadata()
    assert (md["lost_to_retention"], md["lost_to_retention_offsets"]) == (3, "[7, 10)")
    assert "3 lost to retention before they were read (offsets [7, 10))" in report.describe()


def test_a_receipt_from_before_lost_offsets_keeps_its_count() -> None:
    """The version before kept only the count, lost below the range's start when it planned."""
    stored = asdict(_report())
    del stored["lost_offsets"]
    stored["lost_to_retention"] = 3
    old = RangeReport.from_bytes(zlib.compress(json.dumps(stored).encode()))
    assert (old.lost_offsets, old.lost_to_retention) == ([(7, 10)], 3)
