"""Property tests: flatten() against the plain reference implementation, on generated batches.

Generated events are JSON objects with the known keys holding every kind of value (good, blank,
null, numbers of all sizes, wrong types, odd dates), mixed with arbitrary and corrupted bytes,
in batches whose keys repeat so that merging is exercised.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from programuser_dagster.core.events import COLUMNS, NOT_WRITTEN, Batch, flatten
from tests.support import reference_impl as ref
from tests.support.bad_inputs import load_corpus

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---- values ----

blank = st.sampled_from([None, "", " ", "\t\r\n", "\u00a0", "\u3000 ", "\x1f"])
# A fixed alphabet is much cheaper to draw from than st.characters(), and holds what matters:
# ASCII, multi-byte and astral characters, digits of other scripts, and white space of all kinds.
short_text = st.text(
    alphabet=st.sampled_from(
        'aZ09 ,.:-_$"\\éß€😀٣２\t\n\r\x00\x1f\x85\u00a0\u2028\u3000\u0130\u212a'
    ),
    max_size=6,
)
surrogate_text = st.sampled_from(["\ud800", "a\udc00", "\udbff\udfff"])  # last is a valid pair
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-1000, max_value=1000),
    st.sampled_from([10**30, -(10**30), 2**63, 2**64, -(2**63) - 1, 10**308, 0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([2822.0, -0.0, 1e20, 1e-5, 0.1, 1.5e-7, 1e300, 5e-324]),
)
odd_numbers = st.sampled_from([float("nan"), float("inf"), float("-inf")])
scalars = st.one_of(st.none(), st.booleans(), numbers, short_text, blank)
any_json = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "id", "$date", "x", "name"]), children, max_size=3
        )
    ),
    max_leaves=6,
)
text_like = st.one_of(short_text, blank, numbers, st.booleans(), st.sampled_from([[], {}, ["x"]]))
# mostly usable text, sometimes anything a text field may hold
mostly_text = st.one_of(
    short_text, short_text, short_text, st.sampled_from(["Kerala", "28"]), text_like
)
string_field = st.one_of(short_text, blank, short_text, any_json)
good_program_ids = st.sampled_from(["p1", "p1", "p2", " p1", "P1"])
good_user_ids = st.sampled_from(["u1", "u1", "u2"])
ids = st.one_of(
    good_program_ids,
    blank,
    any_json,
    st.sampled_from(["x" * 65_536, "é" * 32_768, "€" * 21_845, " " * 70_000]),
)
user_ids = st.one_of(good_user_ids, blank, any_json)
good_consent = st.one_of(st.booleans(), blank, st.sampled_from(["true", "FALSE", " True "]))
consent = st.one_of(good_consent, st.sampled_from(["yes", "0", "tru e"]), any_json)


@st.composite
def date_strings(draw: st.DrawFn, valid: bool = False) -> str:
    """Strings of the date grammar's forms; unless valid, some are just outside it."""
    moment = draw(
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))
    )
    form = draw(st.sampled_from([0, 1, 3] if valid else [0, 1, 2, 3]))
    if form == 0:
        return moment.date().isoformat()
    base = moment.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0")
    base = f"{moment.year:04d}" + base[base.index("-") :]
    fraction = draw(
        st.sampled_from(["", ".8", ".829", ".123456789"] + ([] if valid else [".1234567890"]))
    )
    if form == 1:
        return base + fraction + "Z"
    if form == 2:
        return base + fraction  # no offset: bad
    offset = draw(st.integers(-23 * 60 - 59, 23 * 60 + 59))
    sign = "+" if offset >= 0 else "-"
    return f"{base}{fraction}{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"


bad_date_strings = st.sampled_from(
    [
        "2023-02-30",
        "0000-01-01",
        "2023-01-12T24:00:00Z",
        "2023-01-12T06:30:56",
        "12/01/2023",
        "2023-W02-4",
        "2023-01-12 ",
        "2023-01-12\n",
        "9999-12-31T23:00:00-01:00",
        "0001-01-01T00:30:00+01:00",
        "2023-01-12T06:30:56+05:60",
        "2023-01-12T23:59:60Z",
        "\uff12\uff10\uff12\uff13-01-12",
        "2023-01-12t06:30:56Z",
    ]
)
epoch_ms = st.one_of(
    st.integers(min_value=-62_135_596_800_000 - 10, max_value=253_402_300_800_000 + 10),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([10**30, -(10**30), 1.5e12, 1673505009476.0]),
)
good_dates = st.one_of(
    date_strings(valid=True),
    blank,
    st.fixed_dictionaries(
        {"$date": st.one_of(date_strings(valid=True), st.integers(-(10**12), 10**13), blank)}
    ),
)
dates = st.one_of(
    good_dates,
    bad_date_strings,
    st.dictionaries(
        st.sampled_from(["$date", "x"]), st.one_of(date_strings(), epoch_ms), max_size=2
    ),
    st.fixed_dictionaries({"$date": any_json}),
    any_json,
)

good_location = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(
            st.sampled_from(["state", "district", " state ", "State", "block"]), text_like
        ),
        "name": mostly_text,
        "id": mostly_text,
        "code": mostly_text,
        "parentId": text_like,
    },
)
good_user_type = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["administrator", "Teacher", " hm "]), mostly_text),
        "subType": st.one_of(st.sampled_from(["hm", "HM", "crp", "deo"]), mostly_text),
    },
)
locations = st.lists(st.one_of(good_location, good_location, good_location, any_json), max_size=5)
user_types = st.one_of(
    st.lists(st.one_of(good_user_type, good_user_type, any_json), max_size=4), good_user_type
)
good_profile = st.fixed_dictionaries(
    {  # None is an absent group
        "userLocations": st.one_of(locations, locations, st.none()),
        "rootOrg": st.one_of(
            st.fixed_dictionaries({}, optional={"id": mostly_text, "orgName": mostly_text}),
            st.none(),
        ),
        "profileUserTypes": st.one_of(user_types, user_types, st.none()),
    },
    optional={"framework": any_json},
)
profile = st.one_of(
    good_profile,
    st.fixed_dictionaries(
        {},
        optional={"userLocations": any_json, "rootOrg": any_json, "profileUserTypes": any_json},
    ),
    any_json,
)
# Events that pass every check more often than not, so that rows and merges get exercised...
good_events = st.fixed_dictionaries(
    {
        "programId": good_program_ids,
        "userId": good_user_ids,
        "userProfile": st.one_of(good_profile, good_profile, good_profile, st.none()),
        "createdAt": st.one_of(good_dates, st.none()),
        "updatedAt": st.one_of(good_dates, st.none()),
    },
    optional={
        "programExternalId": st.one_of(short_text, blank),
        "programName": st.one_of(short_text, blank),
        "requestForPIIConsent": good_consent,
        "_id": any_json,
    },
)
# ...and events where any field may hold anything.
wild_events = st.fixed_dictionaries(
    {},
    optional={
        "programId": ids,
        "userId": user_ids,
        "programExternalId": string_field,
        "programName": string_field,
        "requestForPIIConsent": consent,
        "userProfile": profile,
        "createdAt": dates,
        "updatedAt": dates,
        "_id": any_json,
        "deleted": any_json,
        "__v": st.one_of(numbers, odd_numbers, surrogate_text),
    },
)
events = st.one_of(
    good_events,
    good_events,
    good_events,
    wild_events,
    wild_events,
    st.tuples(good_events, wild_events).map(lambda pair: {**pair[0], **pair[1]}),
)


@st.composite
def serialized(draw: st.DrawFn, event: dict[str, Any]) -> bytes:
    """json.dumps (it writes big integers, NaN, lone surrogates) plus occasional corruption."""
    ensure_ascii = draw(st.booleans())
    text = json.dumps(event, ensure_ascii=ensure_ascii, indent=draw(st.sampled_from([None, 1])))
    value = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8
    corruption = draw(st.integers(0, 30))
    if corruption == 0 and value:
        cut = draw(st.integers(0, len(value) - 1))
        value = value[:cut]
    elif corruption == 1:
        at = draw(st.integers(0, len(value)))
        value = value[:at] + draw(st.binary(min_size=1, max_size=3)) + value[at:]
    elif corruption == 2:
        value = draw(st.sampled_from([b"\xef\xbb\xbf", b" ", b"\x00"])) + value
    elif corruption == 3:
        value = value + draw(st.sampled_from([b" x", b"\x00", b"\r\n", b"}"]))
    return value


messages = st.one_of(
    events.flatmap(serialized),
    events.flatmap(serialized),
    events.flatmap(serialized),
    events.flatmap(serialized),
    events.flatmap(serialized),
    st.binary(max_size=40),
    st.none(),
    any_json.map(lambda v: json.dumps(v).encode()),
)
batches = st.one_of(
    st.lists(messages, max_size=16),
    st.lists(good_events.flatmap(serialized), min_size=3, max_size=12),  # many merges
)


# ---- comparison ----


def _cell(value: Any) -> Any:
    if value is NOT_WRITTEN or value is ref.NOT_WRITTEN:
        return "<NOT_WRITTEN>"
    return value


def _rows_of(batch: Batch) -> list[dict[str, Any]]:
    return [{k: _cell(v) for k, v in row.items()} for row in batch.rows.to_dict("records")]


def _records(values: list[bytes | None], start: int = 100) -> list[tuple[int, bytes | None]]:
    return [(start + i, v) for i, v in enumerate(values)]


@SETTINGS
@given(batches)
def test_flatten_equals_reference(values):
    records = _records(values)
    batch = flatten(records)  # no exception may escape
    ref_rows, ref_rejects, ref_read = ref.reference_flatten(records)
    assert batch.read == ref_read == len(records)
    assert [(r.offset, r.outcome, r.reason) for r in batch.rejects] == ref_rejects
    assert _rows_of(batch) == [{k: _cell(v) for k, v in row.items()} for row in ref_rows]
    # every message is accounted for, exactly once
    counted = sorted(
        [r.offset for r in batch.rejects] + [o for offs in batch.rows["offsets"] for o in offs]
    )
    assert counted == [offset for offset, _ in records]
    assert batch.read == int(batch.rows["message_count"].sum()) + len(batch.rejects)
    assert all(
        len(offs) == n
        for offs, n in zip(batch.rows["offsets"], batch.rows["message_count"], strict=True)
    )


def _apply(table: dict, batch: Batch) -> None:
    """What the writer does: upsert each row, leaving NOT_WRITTEN columns alone."""
    for row in batch.rows.to_dict("records"):
        stored = table.setdefault((row["program_id"], row["user_id"]), {})
        for column in COLUMNS:
            value = row[column]
            if value is not NOT_WRITTEN:
                stored[column] = value or None if column == "user_locations" else value


@settings(SETTINGS, max_examples=60)
@given(batches, st.data())
def test_merging_in_one_batch_equals_applying_one_by_one(values, data):
    records = _records(values)
    whole: dict = {}
    _apply(whole, flatten(records))
    one_by_one: dict = {}
    for record in records:
        _apply(one_by_one, flatten([record]))
    assert whole == one_by_one
    cut = data.draw(st.integers(0, len(records)))
    split: dict = {}
    _apply(split, flatten(records[:cut]))
    _apply(split, flatten(records[cut:]))
    assert whole == split


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(value):
    batch = flatten([(0, value)])
    assert batch.read == 1
    assert len(batch.rejects) + len(batch.rows) == 1
    _, ref_rejects, _ = ref.reference_flatten([(0, value)])
    assert [(r.offset, r.outcome, r.reason) for r in batch.rejects] == ref_rejects


@settings(max_examples=150, deadline=None)
@given(date_strings())
def test_dates_match_reference(text):
    value = json.dumps({"programId": "p", "userId": "u", "createdAt": text}).encode()
    batch = flatten([(0, value)])
    _, result = ref.outcome_of(value)
    if isinstance(result, dict):
        assert batch.rows.iloc[0]["created_at"] == result["created_at"]
        assert isinstance(result["created_at"], date)
    else:
        assert [r.reason for r in batch.rejects] == [result]


@settings(max_examples=200, deadline=None)
@given(numbers)
def test_numbers_as_text_match_reference(number):
    value = json.dumps(
        {"programId": "p", "userId": "u", "userProfile": {"rootOrg": {"id": number}}}
    )
    batch = flatten([(0, value.encode())])
    _, row = ref.outcome_of(value.encode())
    assert isinstance(row, dict)
    text = batch.rows.iloc[0]["organisation_id"]
    assert text == row["organisation_id"]
    assert not text.endswith(".0")
    assert float(text) == float(number)  # the text reads back as the same number


@settings(max_examples=60, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
def test_offset_dates_are_utc_calendar_dates(moment, offset_minutes):
    tz = timezone(timedelta(minutes=offset_minutes))
    local = moment.replace(tzinfo=tz, microsecond=0)
    text = local.isoformat()  # YYYY-MM-DDTHH:MM:SS+HH:MM
    row = flatten([(0, json.dumps({"programId": "p", "userId": "u", "updatedAt": text}).encode())])
    assert row.rows.iloc[0]["updated_at"] == local.astimezone(UTC).date()


def test_reference_agrees_with_the_bad_inputs_corpus():
    # the reference is checked against the hand-written expectations too, not only against flatten
    for case in load_corpus():
        outcome, result = ref.outcome_of(case.value)
        if case.outcome == "written":
            assert outcome == "written", case.name
        else:
            assert (outcome, result) == (case.outcome, case.reason), case.name
