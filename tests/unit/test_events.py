"""Unit tests of the pure core, one test (or table row) per rule of reference-semantics.md."""

from __future__ import annotations

import json
import pickle
from datetime import date
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from programuser_dagster.core.events import COLUMNS, NOT_WRITTEN, Batch, Reject, flatten
from tests.support.seed import EVENT_1, EVENT_2, EXPECTED_AFTER_BOTH, SEED_EVENT, SEED_ROW

# The seed's sample event (shared/seed/program-user-info.md), with ISODate(...) as the JSON
# strings real messages carry and the elided "..." parts filled with plausible ignored keys.

IDS = {"programId": "p1", "userId": "u1"}


def encode(event: Any) -> bytes:
    # stdlib json: it writes integers of any size, which orjson.dumps refuses
    return json.dumps(event).encode()


def run(*values: bytes | None) -> Batch:
    return flatten(list(enumerate(values)))


def row_of(event: Any) -> dict[str, Any]:
    """The single row one event writes."""
    batch = run(encode(event))
    assert batch.rejects == [], batch.rejects
    assert len(batch.rows) == 1
    return batch.rows.iloc[0].to_dict()


def reject_of(value: bytes | None) -> tuple[str, str]:
    batch = run(value)
    assert len(batch.rows) == 0
    [reject] = batch.rejects
    return reject.outcome, reject.reason


def with_ids(**fields: Any) -> dict[str, Any]:
    return {**IDS, **fields}


def with_profile(**groups: Any) -> dict[str, Any]:
    return with_ids(userProfile=groups)


# ---- the seed sample ----


def test_seed_sample_row():
    row = row_of(SEED_EVENT)
    assert {c: row[c] for c in COLUMNS} == SEED_ROW
    assert len(row["user_locations"]) == 15
    assert row["message_count"] == 1
    assert row["offsets"] == (0,)


def test_seed_sample_value_types():
    row = row_of(SEED_EVENT)
    assert type(row["pii_consent_required"]) is bool
    assert type(row["user_locations"]) is dict
    assert type(row["created_at"]) is date


# ---- the contract's two-event example ----


def test_two_event_example_of_the_contract():
    batch = run(encode(EVENT_1), encode(EVENT_2))
    assert batch.rejects == []
    [row] = batch.rows.to_dict("records")
    # Event 2 wrote the always-written columns, rootOrg and updatedAt last; event 1 the rest.
    assert row == {**EXPECTED_AFTER_BOTH, "message_count": 2, "offsets": (0, 1),
                   "writers": (1, 0, 1, 0, 0, 1)}


# ---- outcomes and their order ----


@pytest.mark.parametrize(
    ("value", "outcome", "reason"),
    [
        (None, "skipped", "empty"),
        (b"", "skipped", "empty"),
        (b" ", "dead_lettered", "not_json"),
        (b"not json", "dead_lettered", "not_json"),
        (b"[]", "dead_lettered", "not_an_object"),
        (b'"text"', "dead_lettered", "not_an_object"),
        (b"null", "dead_lettered", "not_an_object"),
        (b"42", "dead_lettered", "not_an_object"),
        (b"{}", "skipped", "missing_id"),
        (b'{"programId": "p1"}', "skipped", "missing_id"),
        (b'{"userId": "u1"}', "skipped", "missing_id"),
        (b'{"programId": null, "userId": "u1"}', "skipped", "missing_id"),
        (b'{"programId": " \\t\\n", "userId": "u1"}', "skipped", "missing_id"),
        (b'{"programId": "p1", "userId": ""}', "skipped", "missing_id"),
        # step 4 comes before step 5: a bad field of an event without ids is a dead letter
        (b'{"createdAt": "12/01/2023"}', "dead_lettered", "bad_date:createdAt"),
        (b'{"programName": 5}', "dead_lettered", "wrong_type:programName"),
    ],
)
def test_outcome(value, outcome, reason):
    assert reject_of(value) == (outcome, reason)


# The type table: every field, each kind of wrong value, the exact reason.
WRONG_TYPES = [
    ({"programId": 5}, "wrong_type:programId"),
    ({"programId": 5.5}, "wrong_type:programId"),
    ({"programId": True}, "wrong_type:programId"),
    ({"programId": ["p1"]}, "wrong_type:programId"),
    ({"programId": {"id": "p1"}}, "wrong_type:programId"),
    ({"userId": 7}, "wrong_type:userId"),
    ({"userId": False}, "wrong_type:userId"),
    ({"userId": []}, "wrong_type:userId"),
    ({"programExternalId": 1}, "wrong_type:programExternalId"),
    ({"programExternalId": {}}, "wrong_type:programExternalId"),
    ({"programName": ["A"]}, "wrong_type:programName"),
    ({"programName": True}, "wrong_type:programName"),
    ({"requestForPIIConsent": "yes"}, "wrong_type:requestForPIIConsent"),
    ({"requestForPIIConsent": 1}, "wrong_type:requestForPIIConsent"),
    ({"requestForPIIConsent": 0}, "wrong_type:requestForPIIConsent"),
    ({"requestForPIIConsent": ["true"]}, "wrong_type:requestForPIIConsent"),
    ({"requestForPIIConsent": "t r u e"}, "wrong_type:requestForPIIConsent"),
    ({"userProfile": "x"}, "wrong_type:userProfile"),
    ({"userProfile": []}, "wrong_type:userProfile"),
    ({"userProfile": ""}, "wrong_type:userProfile"),
    ({"userProfile": {"userLocations": {"type": "state"}}}, "wrong_type:userProfile.userLocations"),
    ({"userProfile": {"userLocations": "state"}}, "wrong_type:userProfile.userLocations"),
    ({"userProfile": {"userLocations": 3}}, "wrong_type:userProfile.userLocations"),
    ({"userProfile": {"rootOrg": []}}, "wrong_type:userProfile.rootOrg"),
    ({"userProfile": {"rootOrg": "o1"}}, "wrong_type:userProfile.rootOrg"),
    ({"userProfile": {"profileUserTypes": "hm"}}, "wrong_type:userProfile.profileUserTypes"),
    ({"userProfile": {"profileUserTypes": 1}}, "wrong_type:userProfile.profileUserTypes"),
    ({"userProfile": {"profileUserTypes": True}}, "wrong_type:userProfile.profileUserTypes"),
    ({"createdAt": 1673505009476}, "wrong_type:createdAt"),
    ({"createdAt": True}, "wrong_type:createdAt"),
    ({"createdAt": ["2023-01-12"]}, "wrong_type:createdAt"),
    ({"createdAt": {}}, "wrong_type:createdAt"),
    ({"createdAt": {"$date": "2023-01-12", "x": 1}}, "wrong_type:createdAt"),
    ({"createdAt": {"date": "2023-01-12"}}, "wrong_type:createdAt"),
    ({"createdAt": {"$date": True}}, "wrong_type:createdAt"),
    ({"createdAt": {"$date": 1.5}}, "wrong_type:createdAt"),
    ({"createdAt": {"$date": 1673505009476.0}}, "wrong_type:createdAt"),
    ({"createdAt": {"$date": ["2023-01-12"]}}, "wrong_type:createdAt"),
    ({"createdAt": {"$date": {"$numberLong": "1673505009476"}}}, "wrong_type:createdAt"),
    ({"updatedAt": 5}, "wrong_type:updatedAt"),
    ({"updatedAt": {"$date": False}}, "wrong_type:updatedAt"),
]


@pytest.mark.parametrize(("fields", "reason"), WRONG_TYPES)
def test_wrong_type(fields, reason):
    assert reject_of(encode({**IDS, **fields})) == ("dead_lettered", reason)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        # the first failure in table order decides
        ({"programId": 1, "userId": 2}, "wrong_type:programId"),
        ({"userId": 2, "createdAt": "bad"}, "wrong_type:userId"),
        ({**IDS, "programName": 1, "requestForPIIConsent": "no"}, "wrong_type:programName"),
        (
            {**IDS, "requestForPIIConsent": "no", "userProfile": 1},
            "wrong_type:requestForPIIConsent",
        ),
        (
            {**IDS, "userProfile": {"userLocations": 1, "rootOrg": 1, "profileUserTypes": 1}},
            "wrong_type:userProfile.userLocations",
        ),
        (
            {**IDS, "userProfile": {"rootOrg": 1, "profileUserTypes": 1}},
            "wrong_type:userProfile.rootOrg",
        ),
        (
            {**IDS, "userProfile": {"profileUserTypes": 1}, "createdAt": 1},
            "wrong_type:userProfile.profileUserTypes",
        ),
        ({**IDS, "createdAt": "bad", "updatedAt": 1}, "bad_date:createdAt"),
        ({**IDS, "createdAt": 1, "updatedAt": "bad"}, "wrong_type:createdAt"),
        ({**IDS, "updatedAt": "bad"}, "bad_date:updatedAt"),
        # a field's own checks run at its place: a too-long programId before userId's type
        ({"programId": "p" * 65_536, "userId": 5}, "key_too_long"),
        ({"programId": 5, "userId": "u" * 65_536}, "wrong_type:programId"),
        ({"programId": "p1", "userId": "u" * 65_536, "programName": 5}, "key_too_long"),
        ({"userId": "u" * 65_536, "programName": 5}, "key_too_long"),
    ],
)
def test_first_failure_in_table_order_decides(event, reason):
    assert reject_of(encode(event)) == ("dead_lettered", reason)


# ---- keys ----


@pytest.mark.parametrize(
    ("program_id", "outcome"),
    [
        ("p" * 65_535, "written"),
        ("p" * 65_536, "key_too_long"),
        ("é" * 32_767, "written"),  # 65,534 bytes
        ("é" * 32_768, "key_too_long"),  # 65,536 bytes, 32,768 characters
        ("€" * 21_845, "written"),  # 65,535 bytes
        ("€" * 21_846, "key_too_long"),
        ("😀" * 16_384, "key_too_long"),  # 65,536 bytes, only 16,384 characters
        (" " * 70_000, "missing_id"),  # blank -> null first: never too long
    ],
)
def test_key_length_counts_utf8_bytes(program_id, outcome):
    batch = run(encode({"programId": program_id, "userId": "u1"}))
    if outcome == "written":
        assert batch.rows.iloc[0]["program_id"] == program_id
    else:
        assert [r.reason for r in batch.rejects] == [outcome]


def test_user_id_too_long():
    assert reject_of(encode({"programId": "p1", "userId": "ü" * 40_000})) == (
        "dead_lettered",
        "key_too_long",
    )


def test_ids_are_stored_as_given():
    row = row_of({"programId": " p1 ", "userId": "\tu1"})
    assert (row["program_id"], row["user_id"]) == (" p1 ", "\tu1")


# ---- always-written columns ----


@pytest.mark.parametrize(
    ("fields", "external_id", "name"),
    [
        ({}, None, None),
        ({"programExternalId": None, "programName": None}, None, None),
        ({"programExternalId": "", "programName": " \n "}, None, None),
        ({"programExternalId": " X ", "programName": "A b"}, " X ", "A b"),
        ({"programExternalId": "\u00a0", "programName": "\u3000"}, None, None),  # unicode space
    ],
)
def test_program_external_id_and_name(fields, external_id, name):
    row = row_of(with_ids(**fields))
    assert (row["program_externalid"], row["program_name"]) == (external_id, name)


@pytest.mark.parametrize(
    ("consent", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("TRUE", True),
        (" True\n", True),
        ("false", False),
        ("FaLsE", False),
        (" false ", False),
        ("", False),
        ("   ", False),
        (None, False),
        ("absent", False),
    ],
)
def test_consent(consent, expected):
    event = with_ids() if consent == "absent" else with_ids(requestForPIIConsent=consent)
    value = row_of(event)["pii_consent_required"]
    assert value is expected


# ---- user_locations ----

LOCATIONS = [
    ([], {}),
    (
        [{"type": "state", "name": "Kerala", "id": "s1", "code": "32"}],
        {"state_name": "Kerala", "state_id": "s1", "state_code": "32"},
    ),
    # blank values are left out; parentId is not stored
    (
        [{"type": "state", "name": " ", "id": None, "code": "32", "parentId": "x"}],
        {"state_code": "32"},
    ),
    # type stripped, case kept; values as given
    ([{"type": "  District ", "name": " Ernakulam "}], {"District_name": " Ernakulam "}),
    # no type, blank type, type of the wrong kind: the entry is skipped
    (
        [
            {"name": "x"},
            {"type": " ", "name": "y"},
            {"type": True, "name": "z"},
            {"type": ["state"], "name": "w"},
        ],
        {},
    ),
    # entries that are not objects are ignored
    (["state", 5, None, [], {"type": "state", "name": "K"}], {"state_name": "K"}),
    # a later entry of the same type overwrites key by key; its blanks erase nothing
    (
        [
            {"type": "state", "name": "A", "id": "1"},
            {"type": "state", "name": "B", "id": " "},
            {"type": " state", "code": "9"},
        ],
        {"state_name": "B", "state_id": "1", "state_code": "9"},
    ),
    # numbers are text, booleans/objects/lists are missing
    (
        [{"type": "district", "code": 2822, "id": 2822.5, "name": 2822.0}],
        {"district_code": "2822", "district_id": "2822.5", "district_name": "2822"},
    ),
    ([{"type": "d", "code": True, "id": {"x": 1}, "name": ["n"]}], {}),
    ([{"type": 5, "name": "five"}], {"5_name": "five"}),
]


@pytest.mark.parametrize(("entries", "expected"), LOCATIONS)
def test_user_locations(entries, expected):
    assert row_of(with_profile(userLocations=entries))["user_locations"] == expected


# ---- user_type / user_sub_type ----

USER_TYPES = [
    ([], None, None),
    ([{"type": "Administrator", "subType": "deo"}], "administrator", "DEO"),
    # the last object entry decides user_type, even when its type is blank
    ([{"type": "teacher"}, {"type": "administrator"}], "administrator", None),
    ([{"type": "teacher"}, {"type": " "}], None, None),
    ([{"type": "teacher"}, {"subType": "hm"}], None, "HM"),
    ([{"type": "teacher"}, "not an object", 5], "teacher", None),
    # the contract's example: hm, crp, hm, chm -> HM,CRP,CHM
    (
        [{"subType": "hm"}, {"subType": "crp"}, {"subType": "hm"}, {"subType": "chm"}],
        None,
        "HM,CRP,CHM",
    ),
    ([{"subType": "hm"}, {"subType": "HM"}, {"subType": " "}, {"subType": None}], None, "HM"),
    # values as given: not stripped
    ([{"type": " Teacher ", "subType": " hm "}], " teacher ", " HM "),
    ([{"type": 7, "subType": 12}], "7", "12"),
    ([{"type": True, "subType": ["hm"]}], None, None),
]


@pytest.mark.parametrize(("entries", "user_type", "user_sub_type"), USER_TYPES)
def test_user_type_and_sub_type(entries, user_type, user_sub_type):
    row = row_of(with_profile(profileUserTypes=entries))
    assert (row["user_type"], row["user_sub_type"]) == (user_type, user_sub_type)


def test_profile_user_types_single_object_is_a_list_of_one():
    row = row_of(with_profile(profileUserTypes={"type": "Teacher", "subType": "crp"}))
    assert (row["user_type"], row["user_sub_type"]) == ("teacher", "CRP")


# ---- organisation ----


@pytest.mark.parametrize(
    ("root_org", "org_id", "org_name"),
    [
        ({"id": "o1", "orgName": "Org"}, "o1", "Org"),
        ({}, None, None),
        ({"id": " ", "orgName": ""}, None, None),
        ({"id": None, "orgName": " Org "}, None, " Org "),
        ({"id": 126796199493140480, "orgName": True}, "126796199493140480", None),
        ({"id": [1], "orgName": {"n": 1}}, None, None),
    ],
)
def test_organisation(root_org, org_id, org_name):
    row = row_of(with_profile(rootOrg=root_org))
    assert (row["organisation_id"], row["organisation_name"]) == (org_id, org_name)


# ---- absent vs blank vs null: which columns an event writes ----

GROUP_COLUMNS = (
    "user_locations",
    "organisation_id",
    "organisation_name",
    "user_type",
    "user_sub_type",
)


@pytest.mark.parametrize(
    "event",
    [
        with_ids(),
        with_ids(userProfile=None),
        with_ids(userProfile={}),
        with_profile(userLocations=None, rootOrg=None, profileUserTypes=None),
    ],
)
def test_absent_groups_write_nothing(event):
    row = row_of(event)
    for column in GROUP_COLUMNS:
        assert row[column] is NOT_WRITTEN
    assert row["created_at"] is NOT_WRITTEN
    assert row["updated_at"] is NOT_WRITTEN


def test_present_but_empty_groups_write_empty_values():
    row = row_of(with_profile(userLocations=[], rootOrg={}, profileUserTypes=[]))
    assert row["user_locations"] == {}  # the writer clears the column
    for column in GROUP_COLUMNS[1:]:
        assert row[column] is None


def test_always_written_columns_are_never_not_written():
    row = row_of(with_ids())
    assert row["program_externalid"] is None
    assert row["program_name"] is None
    assert row["pii_consent_required"] is False


# ---- dates ----

GOOD_DATES = [
    ("2023-01-12T06:30:56.829Z", date(2023, 1, 12)),
    ("2023-01-12T06:30:56Z", date(2023, 1, 12)),
    ("2023-01-12T06:30:56.8Z", date(2023, 1, 12)),
    ("2023-01-12T23:59:59.999999999Z", date(2023, 1, 12)),
    ("2023-01-12T02:00:00+05:30", date(2023, 1, 11)),
    ("2023-01-12T05:30:00+05:30", date(2023, 1, 12)),
    ("2023-01-12T05:29:59.999+05:30", date(2023, 1, 11)),
    ("2023-01-12T22:00:00-02:00", date(2023, 1, 13)),
    ("2023-01-12T21:59:59-02:00", date(2023, 1, 12)),
    ("2023-01-12T12:00:00+00:00", date(2023, 1, 12)),
    ("2023-01-12T12:00:00-00:00", date(2023, 1, 12)),
    ("2023-12-31T23:30:00-01:00", date(2024, 1, 1)),
    ("2024-03-01T00:00:00+01:00", date(2024, 2, 29)),
    ("2023-03-01T00:00:00+01:00", date(2023, 2, 28)),
    ("2023-01-12T00:00:00+23:59", date(2023, 1, 11)),
    ("2023-01-12", date(2023, 1, 12)),
    ("2024-02-29", date(2024, 2, 29)),
    ("0001-01-01", date(1, 1, 1)),
    ("0001-01-01T00:30:00+00:30", date(1, 1, 1)),
    ("9999-12-31T23:59:59Z", date(9999, 12, 31)),
    ("9999-12-31T23:00:00+01:00", date(9999, 12, 31)),
    ({"$date": "2023-01-12T06:30:56.829Z"}, date(2023, 1, 12)),
    ({"$date": "2023-01-12"}, date(2023, 1, 12)),
    ({"$date": 1673505009476}, date(2023, 1, 12)),
    ({"$date": 0}, date(1970, 1, 1)),
    ({"$date": -1}, date(1969, 12, 31)),
    ({"$date": -86_400_000}, date(1969, 12, 31)),
    ({"$date": -86_400_001}, date(1969, 12, 30)),
    ({"$date": -62_135_596_800_000}, date(1, 1, 1)),
    ({"$date": 253_402_300_799_999}, date(9999, 12, 31)),
]


@pytest.mark.parametrize(("value", "expected"), GOOD_DATES)
@pytest.mark.parametrize("field", ["createdAt", "updatedAt"])
def test_dates(field, value, expected):
    column = "created_at" if field == "createdAt" else "updated_at"
    assert row_of(with_ids(**{field: value}))[column] == expected


BAD_DATES = [
    "12/01/2023",
    "2023-01-12T06:30:56",  # a time without an offset
    "2023-01-12T06:30:56.829",
    "2023-W02-4",  # week date
    "2023-012",  # ordinal date
    "2023-02-30",
    "2023-13-01",
    "2023-00-10",
    "2023-01-00",
    "2023-02-29",
    "0000-01-01",
    "0000-12-31T23:00:00Z",
    "10000-01-01",
    "0001-01-01T00:30:00+01:00",  # year 0 after conversion to UTC
    "9999-12-31T23:00:00-01:00",  # year 10000 after conversion to UTC
    "2023-01-12T06:30:56.1234567890Z",  # 10 digits of fraction
    "2023-01-12T06:30:56.Z",
    "2023-01-12t06:30:56Z",
    "2023-01-12T06:30:56z",
    "2023-01-12 06:30:56Z",
    "2023-01-12T24:00:00Z",
    "2023-01-12T23:60:00Z",
    "2023-01-12T23:59:60Z",  # no leap second
    "2023-01-12T06:30Z",
    "2023-01-12T06:30:56+0530",
    "2023-01-12T06:30:56+05",
    "2023-01-12T06:30:56+24:00",
    "2023-01-12T06:30:56+05:60",
    "2023-01-12T06:30:56,829Z",
    "20230112",
    "2023-1-12",
    "23-01-12",
    "+2023-01-12",
    " 2023-01-12",
    "2023-01-12 ",
    "2023-01-12\n",
    "\uff12\uff10\uff12\uff13-01-12",  # non-ASCII digits
    "2023-01-12T06:30:56.829ZZ",
    "2023-01-12T06:30:56.829Z[UTC]",
    "now",
    {"$date": "12/01/2023"},
    {"$date": "2023-02-30T00:00:00Z"},
    {"$date": -62_135_596_800_001},  # before 0001-01-01
    {"$date": 253_402_300_800_000},  # 10000-01-01
    {"$date": 10**15 * 1000},
    {"$date": 10**30},  # beyond 64 bits: still an integer, so a bad date, not a wrong type
    {"$date": -(10**30)},
]


@pytest.mark.parametrize("value", BAD_DATES)
@pytest.mark.parametrize("field", ["createdAt", "updatedAt"])
def test_bad_dates(field, value):
    assert reject_of(encode(with_ids(**{field: value}))) == ("dead_lettered", f"bad_date:{field}")


@pytest.mark.parametrize(
    "value", [None, "", "  ", "\t\n", {"$date": None}, {"$date": ""}, {"$date": "  "}]
)
def test_blank_dates_leave_the_column_alone(value):
    row = row_of(with_ids(createdAt=value, updatedAt=value))
    assert row["created_at"] is NOT_WRITTEN
    assert row["updated_at"] is NOT_WRITTEN


def test_blank_date_keeps_the_earlier_value():
    first = with_ids(createdAt="2023-01-12T00:00:00Z", updatedAt="2023-02-01")
    second = with_ids(createdAt=" ", updatedAt={"$date": None})
    batch = run(encode(first), encode(second))
    row = batch.rows.iloc[0]
    assert (row["created_at"], row["updated_at"]) == (date(2023, 1, 12), date(2023, 2, 1))


# ---- text: numbers as text ----

TEXT_NUMBERS = [
    (b"2822", "2822"),
    (b"-7", "-7"),
    (b"0", "0"),
    (b"-0", "0"),
    (b"2822.5", "2822.5"),
    (b"2822.0", "2822"),
    (b"2.8220e3", "2822"),
    (b"-0.0", "0"),
    (b"0.1", "0.1"),
    (b"1e20", "100000000000000000000"),
    (b"1E+20", "100000000000000000000"),
    (b"1e-5", "1e-5"),
    (b"1.5e-7", "1.5e-7"),
    (b"0.0001", "0.0001"),
    (b"123456789.125", "123456789.125"),
    (b"9007199254740993.0", "9007199254740992"),  # a float: shortest form of the double
    (b"18446744073709551615", "18446744073709551615"),  # 2**64 - 1
    (b"18446744073709551616", "18446744073709551616"),  # beyond 64 bits: every digit
    (b"-9223372036854775809", "-9223372036854775809"),
    (b"1000000000000000000000000000000", "1000000000000000000000000000000"),
    (b"123456789012345678901234567890123", "123456789012345678901234567890123"),
    (b"1e30", "1000000000000000000000000000000"),
    (b"1.7976931348623157e308", "17976931348623157" + "0" * 292),
]


@pytest.mark.parametrize(("number", "text"), TEXT_NUMBERS)
def test_numbers_as_text(number, text):
    value = b'{"programId":"p1","userId":"u1","userProfile":{"rootOrg":{"id":' + number + b"}}}"
    batch = run(value)
    assert batch.rejects == []
    assert batch.rows.iloc[0]["organisation_id"] == text


@pytest.mark.parametrize("value", [True, False, {}, {"a": 1}, [], ["x"]])
def test_other_json_types_in_a_text_field_count_as_missing(value):
    row = row_of(with_profile(rootOrg={"id": value, "orgName": value}))
    assert (row["organisation_id"], row["organisation_name"]) == (None, None)


# ---- strict JSON ----

NOT_JSON = [
    b"{",
    b'{"programId": "p1", "userId": "u1"',
    b'{"programId": "p1", "userId": "u1"} x',
    b'{"programId": "p1", "userId": "u1"}{}',
    b'{"programId": "p1", "userId": "u1",}',
    b"{'programId': 'p1'}",
    b'{programId: "p1"}',
    b'\xef\xbb\xbf{"programId": "p1", "userId": "u1"}',  # BOM
    b'{"programId": "p\xff", "userId": "u1"}',  # invalid UTF-8
    b'{"programId": "p\xc0\xaf", "userId": "u1"}',  # overlong encoding
    b'{"programId": "p\xed\xa0\x80", "userId": "u1"}',  # an encoded surrogate
    b'{"programId": "p\xf4\x90\x80\x80", "userId": "u1"}',  # beyond U+10FFFF
    b'{"programId": "p\\ud800", "userId": "u1"}',  # lone high surrogate escape
    b'{"programId": "p\\udc00", "userId": "u1"}',  # lone low surrogate escape
    b'{"programId": "p1", "userId": "u1", "x": "\\ud800\\u0041"}',  # high then not-low
    b'{"programId": "p1", "userId": "u1", "\\udfff": 1}',  # in a key
    b'{"programId": "p1", "userId": "u1", "x": NaN}',
    b'{"programId": "p1", "userId": "u1", "x": Infinity}',
    b'{"programId": "p1", "userId": "u1", "x": -Infinity}',
    b'{"programId": "p1", "userId": "u1", "x": 1e400}',
    b'{"programId": "p1", "userId": "u1", "x": -1e400}',
    b'{"programId": "p1", "userId": "u1", "x": 1' + b"0" * 400 + b"}",
    b'{"programId": "p1", "userId": "u1", "x": 1.8e308}',
    b'{"programId": "p1", "userId": "u1"}\x00',  # a raw NUL byte outside a string
    b'\x00{"programId": "p1", "userId": "u1"}',
    b'{"programId": "p\x00", "userId": "u1"}',  # a raw NUL byte inside a string
    b'{"programId": "p\t1", "userId": "u1"}',  # a raw control character
    b'{"programId": "p1", "userId": "u1", "x": 01}',
    b'{"programId": "p1", "userId": "u1", "x": .5}',
    b'{"programId": "p1", "userId": "u1", "x": +1}',
    b'{"programId": "p1", "userId": "u1", "x": 0x1F}',
    b'{"programId": "p1", "userId": "u1", "x": True}',
    b'{"programId": "p1", "userId": "u1", "x": "\\x41"}',
    b'{"programId": "p1", "userId": "u1"} /* c */',
    b'\x0c{"programId": "p1", "userId": "u1"}',  # form feed is not JSON white space
    b"\xa0{}",
    b"[" * 1025 + b"]" * 1025,
    b'{"programId": "p1", "userId": "u1", "x": ' + b"[" * 1024 + b"]" * 1024 + b"}",
]


@pytest.mark.parametrize("value", NOT_JSON)
def test_not_json(value):
    assert reject_of(value) == ("dead_lettered", "not_json")


def test_nesting_limit_is_1024_levels():
    inner = b"[" * 1023 + b"]" * 1023  # 1023 levels inside the top-level object: 1024 in all
    value = b'{"programId": "p1", "userId": "u1", "x": ' + inner + b"}"
    assert len(run(value).rows) == 1
    assert reject_of(b"[" * 1024 + b"]" * 1024) == ("dead_lettered", "not_an_object")


def test_nesting_limit_with_exact_numbers():
    # the rare exact-number path (a number beyond 64 bits) must accept 1024 levels too
    inner = b"[" * 1023 + b"]" * 1023
    value = (
        b'{"programId": "p1", "userId": "u1", "x": '
        + inner
        + b', "userProfile": {"rootOrg": {"id": 100000000000000000000000}}}'
    )
    assert run(value).rows.iloc[0]["organisation_id"] == "100000000000000000000000"


@pytest.mark.parametrize(
    ("value", "column", "expected"),
    [
        # duplicate keys: the last one wins
        (b'{"programId": "a", "programId": "p2", "userId": "u1"}', "program_id", "p2"),
        (
            b'{"programId": "p1", "userId": "u1", "programName": 5, "programName": "N"}',
            "program_name",
            "N",
        ),
        # an escaped NUL inside a string is valid and kept
        (b'{"programId": "p\\u0000", "userId": "u1"}', "program_id", "p\x00"),
        # an escaped surrogate pair is one character
        (b'{"programId": "\\ud83d\\ude00", "userId": "u1"}', "program_id", "\U0001f600"),
        # JSON white space around the document is fine
        (b' \r\n\t{"programId": "p1", "userId": "u1"} \r\n\t', "program_id", "p1"),
        # a number that underflows to zero is still a 64-bit float
        (b'{"programId": "p1", "userId": "u1", "x": 1e-400}', "program_id", "p1"),
    ],
)
def test_valid_json_corner_cases(value, column, expected):
    batch = run(value)
    assert batch.rejects == []
    assert batch.rows.iloc[0][column] == expected


def test_duplicate_key_last_one_decides_the_type():
    value = b'{"programId": "p1", "programId": 5, "userId": "u1"}'
    assert reject_of(value) == ("dead_lettered", "wrong_type:programId")


def test_other_keys_are_ignored():
    event = with_ids(_id={"$oid": 1}, deleted="yes", __v=[1], appInformation=5, unknown=None)
    event["userRoleInformation"] = "x"
    event["noOfResourcesStarted"] = "many"
    event["userProfile"] = {"framework": 1, "other": []}
    assert row_of(event)["program_id"] == "p1"


def test_accepts_bytearray_and_memoryview():
    value = encode(with_ids())
    batch = flatten([(0, bytearray(value)), (1, memoryview(value)), (2, memoryview(b""))])
    assert batch.rows.iloc[0]["message_count"] == 2
    assert batch.rejects == [Reject(2, "skipped", "empty")]


# ---- merge within one batch ----


def test_merge_later_written_columns_override_not_written_keep():
    first = with_ids(
        programExternalId="X",
        programName="A",
        requestForPIIConsent=True,
        userProfile={
            "userLocations": [{"type": "state", "name": "Kerala"}],
            "rootOrg": {"id": "o1", "orgName": "Org"},
            "profileUserTypes": [{"type": "teacher", "subType": "crp"}],
        },
        createdAt="2023-01-01",
        updatedAt="2023-01-02",
    )
    second = with_ids(userProfile={"userLocations": []})
    third = with_ids(programName="C", userProfile={"profileUserTypes": []}, updatedAt="2023-05-05")
    batch = run(encode(first), encode(second), encode(third))
    [row] = batch.rows.to_dict("records")
    assert row["program_externalid"] is None  # always written: a later event without it nulls it
    assert row["program_name"] == "C"
    assert row["pii_consent_required"] is False
    assert row["user_locations"] == {}  # written empty by the second event: cleared
    assert (row["organisation_id"], row["organisation_name"]) == ("o1", "Org")
    assert (row["user_type"], row["user_sub_type"]) == (None, None)
    assert (row["created_at"], row["updated_at"]) == (date(2023, 1, 1), date(2023, 5, 5))
    assert row["message_count"] == 3
    assert row["offsets"] == (0, 1, 2)


def test_later_location_map_replaces_the_whole_earlier_map():
    first = with_profile(userLocations=[{"type": "state", "name": "K"}])
    second = with_profile(userLocations=[{"type": "district", "name": "E"}])
    row = run(encode(first), encode(second)).rows.iloc[0]
    assert row["user_locations"] == {"district_name": "E"}


def test_rows_in_order_of_first_appearance_with_their_offsets():
    a = encode({"programId": "p1", "userId": "a"})
    b = encode({"programId": "p1", "userId": "b"})
    c = encode({"programId": "p2", "userId": "a"})
    batch = flatten([(10, b), (11, a), (12, None), (13, b), (14, c), (15, b"x"), (16, a)])
    rows = batch.rows
    assert list(zip(rows["program_id"], rows["user_id"], strict=True)) == [
        ("p1", "b"),
        ("p1", "a"),
        ("p2", "a"),
    ]
    assert rows["offsets"].tolist() == [(10, 13), (11, 16), (14,)]
    assert rows["message_count"].tolist() == [2, 2, 1]
    assert batch.rejects == [
        Reject(12, "skipped", "empty"),
        Reject(15, "dead_lettered", "not_json"),
    ]


def test_keys_are_exact_strings():
    values = [encode({"programId": p, "userId": "u"}) for p in ("p", " p", "P", "p ")]
    assert len(run(*values).rows) == 4


def test_rejected_messages_do_not_touch_the_row():
    good = encode(with_ids(programName="A"))
    bad = encode(with_ids(programName="B", createdAt="bad"))
    batch = run(good, bad)
    assert batch.rows.iloc[0]["program_name"] == "A"
    assert batch.rows.iloc[0]["offsets"] == (0,)


# ---- the batch ----


def test_accounting_equation():
    values = [
        None,
        b"",
        b"{",
        b"[]",
        b"{}",
        encode(with_ids()),
        encode(with_ids(programName="B")),
        encode({"programId": "p2", "userId": "u"}),
        encode(with_ids(createdAt="x")),
    ]
    batch = run(*values)
    assert batch.read == len(values) == 9
    assert batch.read == int(batch.rows["message_count"].sum()) + len(batch.rejects)
    assert [(r.outcome, r.reason) for r in batch.rejects] == [
        ("skipped", "empty"),
        ("skipped", "empty"),
        ("dead_lettered", "not_json"),
        ("dead_lettered", "not_an_object"),
        ("skipped", "missing_id"),
        ("dead_lettered", "bad_date:createdAt"),
    ]


def test_empty_batch_has_the_columns():
    batch = flatten([])
    assert batch.read == 0
    assert batch.rejects == []
    assert list(batch.rows.columns) == [*COLUMNS, "message_count", "offsets", "writers"]
    assert len(batch.rows) == 0
    assert batch.rows["message_count"].dtype == "int64"


def test_accepts_any_iterable_once():
    batch = flatten((i, encode(with_ids())) for i in range(3))
    assert batch.read == 3
    assert batch.rows.iloc[0]["offsets"] == (0, 1, 2)


def test_frame_keeps_python_values():
    batch = run(encode(with_ids()), encode({"programId": "p2", "userId": "u2", "programName": "N"}))
    rows = batch.rows
    assert all(dtype is np.dtype(object) for dtype in rows[list(COLUMNS)].dtypes)
    assert rows["program_name"].tolist() == [None, "N"]  # None, not NaN
    assert [type(v) for v in rows["pii_consent_required"]] == [bool, bool]
    assert isinstance(rows, pd.DataFrame)


def test_not_written_survives_pickling():
    batch = run(encode(with_ids()))
    rows = pickle.loads(pickle.dumps(batch.rows))
    assert rows.iloc[0]["user_locations"] is NOT_WRITTEN
    assert repr(NOT_WRITTEN) == "NOT_WRITTEN"


# ---- reasons never carry values ----


def test_reasons_never_contain_values_from_the_message():
    secret = "SECRET-VALUE"
    values = [
        encode({"programId": 5, "userId": secret}),
        encode({"programId": secret, "userId": secret, "createdAt": secret}),
        encode({"programId": secret, "userId": secret, "requestForPIIConsent": secret}),
        encode({"programId": secret * 10_000, "userId": secret}),
        encode([secret]),
        secret.encode(),
    ]
    batch = run(*values)
    assert len(batch.rejects) == len(values)
    for reject in batch.rejects:
        assert secret not in reject.reason
        assert secret.lower() not in reject.reason.lower()


def test_orjson_gap_is_what_the_exact_path_covers():
    # Documents the one orjson gap the core patches: integers beyond 64 bits become floats.
    assert type(orjson.loads(b"18446744073709551616")) is float
    assert type(orjson.loads(b"18446744073709551615")) is int
