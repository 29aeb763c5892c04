"""The whole bad-input corpus through real Kafka, the real job and real Cassandra.

Every case ends exactly as its manifest says (written, skipped or dead-lettered with its
reason), the run does not fail, and the counts add up.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import orjson
import pytest

from programuser_dagster.settings import Settings
from tests.support.bad_inputs import load_corpus
from tests.support.pipeline import dead_letters, offsets, produce, row, run_partition, step_metadata

pytestmark = pytest.mark.stack


def test_every_corpus_case_gets_its_exact_outcome_and_no_run_fails(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    cases = load_corpus()
    produced = produce(s, [c.value for c in cases])
    by_offset = dict(zip(produced, cases, strict=True))

    result = run_partition(instance, s)
    assert result.success
    md = step_metadata(result)
    expected = Counter((c.outcome, c.reason) for c in cases)
    assert md["messages_read"] == len(cases)
    assert md["messages_written"] == expected[("written", None)]
    assert md.get("skipped_by_reason", {}) == {
        r: n for (o, r), n in expected.items() if o == "skipped"
    }
    assert md.get("dead_lettered_by_reason", {}) == {
        r: n for (o, r), n in expected.items() if o == "dead_lettered"
    }
    assert offsets(s).committed == produced[-1] + 1

    # Each dead letter names the case it came from and the reason the manifest expects.
    n_dead = sum(n for (o, _), n in expected.items() if o == "dead_lettered")
    letters = dead_letters(s, expected=n_dead)
    got = {
        int(dict(m.headers())["source_offset"]): dict(m.headers())["reason"].decode()
        for m in letters
    }
    assert got == {
        off: c.reason for off, c in by_offset.items() if c.outcome == "dead_lettered"
    }
    for m in letters:
        source = by_offset[int(dict(m.headers())["source_offset"])]
        assert m.value() == source.value, source.name

    # Each written case has its own row, with the columns the manifest pins.
    for case in cases:
        if case.outcome != "written":
            continue
        event = orjson.loads(case.value)  # written cases are JSON objects with string ids
        stored = row(cassandra_session, s, event["programId"], event["userId"])
        assert stored is not None, case.name
        for column, value in case.row.items():
            if column in ("created_at", "updated_at") and value is not None:
                value = dt.date.fromisoformat(value)
            if column == "user_locations" and value == {}:
                value = None  # Cassandra stores an empty map as null
            assert stored[column] == value, (case.name, column)
