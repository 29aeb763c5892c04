"""The bad-inputs corpus through flatten(): every case gets exactly its expected outcome."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from programuser_dagster.core.events import flatten
from tests.support.bad_inputs import Case, load_corpus

CORPUS = load_corpus()
REASONS = {
    "skipped": {"empty", "missing_id"},
    "dead_lettered": {"not_json", "not_an_object", "key_too_long"},
}


def _expected_cell(column: str, value: Any) -> Any:
    if column in ("created_at", "updated_at") and isinstance(value, str):
        return date.fromisoformat(value)
    return value


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_case(case: Case):
    batch = flatten([(7, case.value)])
    assert batch.read == 1
    if case.outcome == "written":
        assert batch.rejects == []
        assert batch.rows["offsets"].tolist() == [(7,)]
        row = batch.rows.iloc[0]
        for column, value in case.row.items():
            assert row[column] == _expected_cell(column, value), column
    else:
        assert len(batch.rows) == 0
        assert [(r.offset, r.outcome, r.reason) for r in batch.rejects] == [
            (7, case.outcome, case.reason)
        ]


def test_corpus_is_well_formed():
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names))
    assert len(CORPUS) >= 40
    for case in CORPUS:
        assert case.outcome in ("written", "skipped", "dead_lettered"), case.name
        assert (case.reason is None) == (case.outcome == "written"), case.name


def test_corpus_covers_every_reason():
    seen = {(case.outcome, case.reason) for case in CORPUS}
    for outcome, reasons in REASONS.items():
        for reason in reasons:
            assert (outcome, reason) in seen
    prefixes = {case.reason.split(":")[0] for case in CORPUS if case.reason}
    assert {"wrong_type", "bad_date"} <= prefixes
    fields = {case.reason.split(":", 1)[1] for case in CORPUS if case.reason and ":" in case.reason}
    assert fields >= {
        "programId",
        "userId",
        "programExternalId",
        "programName",
        "requestForPIIConsent",
        "userProfile",
        "userProfile.userLocations",
        "userProfile.rootOrg",
        "userProfile.profileUserTypes",
        "createdAt",
        "updatedAt",
    }


def test_large_cases_are_built_at_load_time():
    sizes = {case.name: len(case.value or b"") for case in CORPUS}
    assert sizes["two_megabytes_valid"] > 2 * 1024 * 1024
    assert sizes["two_megabytes_truncated"] > 2 * 1024 * 1024


def test_whole_corpus_in_one_batch_accounts_for_every_message():
    batch = flatten(enumerate(case.value for case in CORPUS))
    written = [case for case in CORPUS if case.outcome == "written"]
    assert batch.read == len(CORPUS)
    assert int(batch.rows["message_count"].sum()) == len(written)
    assert len(batch.rows) == len(written)  # one row per written case
    assert [(r.outcome, r.reason) for r in batch.rejects] == [
        (case.outcome, case.reason) for case in CORPUS if case.outcome != "written"
    ]
