"""The pure core: Kafka message values -> table rows, skips and dead letters.

Every rule of the contract, docs/contract.md (which also lists where it departs from the
founding reference-semantics.md), lives in this module and nowhere else. It knows nothing of
Dagster, Kafka or Cassandra: input is (offset, value bytes) pairs of one partition in offset
order, output is a DataFrame with one row per (program_id, user_id) plus the rejects.

Where to find a rule (one function each):
  outcome order (empty, not_json, not_an_object, fields, missing_id)  -> _message_row
  strict JSON (orjson, and the one gap it leaves)                      -> _parse_exact
  field order of the type table                                        -> _event_row
  programId / userId, key_too_long       -> _key        "text" (numbers as text) -> _text
  programExternalId / programName        -> _optional_string
  requestForPIIConsent                   -> _consent    userProfile and its groups -> _groups
  user_locations -> _user_locations      organisation_id / _name -> _organisation
  user_type      -> _user_type           user_sub_type -> _user_sub_type
  createdAt / updatedAt, `$date`         -> _date (grammar: _date_from_string, epoch: _epoch_day)
  merge of one batch (upsert, not replace) -> flatten

Interpretations where the contract leaves room (the tests pin each one):
  * "white space" is Python's str.isspace() (Unicode white space).
  * A field's checks run together at its place in the type table: a too-long programId is
    key_too_long even if userId has a wrong type. A blank id becomes null first, so a
    white-space-only id is missing_id, never key_too_long.
  * Numbers as text: a JSON integer literal keeps every digit, however long (10**30 ->
    "1000000000000000000000000000000"). Any other number is a 64-bit float: an integral one is
    written with every digit of its shortest round-trip form and no ".0" or exponent
    (2822.0 -> "2822", 1e20 -> "100000000000000000000", -0.0 -> "0"); a non-integral one is its
    shortest round-trip form with a plain exponent (2822.5 -> "2822.5", 1e-05 -> "1e-5").
  * Dates: the grammar is exact (upper-case T and Z, ASCII digits, no surrounding white space,
    seconds 00-59 so no leap second, offsets up to 23:59). The fraction never changes the date.
    A `$date` epoch must be a JSON integer literal; 1.6e12 or 1673505009476.0 is wrong_type.
"""

from __future__ import annotations

import enum
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

import orjson
import pandas as pd

COLUMNS: tuple[str, ...] = (
    "program_id",
    "user_id",
    "program_externalid",
    "program_name",
    "pii_consent_required",
    "user_locations",
    "organisation_id",
    "organisation_name",
    "user_type",
    "user_sub_type",
    "created_at",
    "updated_at",
)
# The columns an event may leave alone (absent group, blank date); the others it always writes.
MAYBE_NOT_WRITTEN: tuple[str, ...] = COLUMNS[5:]
# What one event writes or leaves alone as a whole: the columns every event writes (with the
# keys), then each group's columns and each date. A merged row records, per group, the offset
# of the event that last wrote it, and each group is written at that event's write time.
COLUMN_GROUPS: tuple[tuple[str, ...], ...] = (
    ("program_externalid", "program_name", "pii_consent_required"),
    ("user_locations",),
    ("organisation_id", "organisation_name"),
    ("user_type", "user_sub_type"),
    ("created_at",),
    ("updated_at",),
)
# Per row, `writers`: for each of COLUMN_GROUPS, the offset of the last event that wrote it, or
# None when no event of the batch did (all its columns are then NOT_WRITTEN).
_ROW_COLUMNS = (*COLUMNS, "message_count", "offsets", "writers")
# The first column of each group: an event writes all of a group's columns or none of them.
_GROUP_FIRST = tuple(COLUMNS.index(group[0]) for group in COLUMN_GROUPS)


class _NotWritten(enum.Enum):
    # An Enum member stays one object through pickling, so `cell is NOT_WRITTEN` keeps working
    # if a DataFrame is ever pickled (rows do not cross steps today: only the range's report).
    NOT_WRITTEN = "NOT_WRITTEN"

    def __repr__(self) -> str:
        return "NOT_WRITTEN"

    __str__ = __repr__


NOT_WRITTEN = _NotWritten.NOT_WRITTEN
"""A cell holding this means: this upsert leaves the column alone."""

Outcome = Literal["skipped", "dead_lettered"]


@dataclass(frozen=True)
class Reject:
    offset: int
    outcome: Outcome
    reason: str  # never holds a value from the message: values are personal data


@dataclass
class Batch:
    rows: pd.DataFrame  # COLUMNS, message_count, offsets, writers; a row per key, first seen first
    rejects: list[Reject]  # in offset order
    read: int  # messages given to flatten(); read == rows.message_count.sum() + len(rejects)


class _Rejected(Exception):
    """Raised by a field rule; flatten() turns it into a Reject."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


def _wrong_type(field: str) -> _Rejected:
    return _Rejected("dead_lettered", f"wrong_type:{field}")


def _bad_date(field: str) -> _Rejected:
    return _Rejected("dead_lettered", f"bad_date:{field}")


# --- strict JSON ---------------------------------------------------------------------------

# orjson is strict RFC 8259 on everything the contract lists (checked by the tests): it refuses
# NaN/Infinity, invalid UTF-8 (also encoded surrogates), lone surrogate escapes, a BOM, trailing
# garbage and numbers beyond a 64-bit float (1e400, or an integer that long), and its depth
# limit is exactly ours (1024 levels parse, 1025 do not). Its one gap: an integer literal
# outside the 64-bit range comes back as a float, losing digits. _text and _date notice such a
# float where a number matters and ask for the exact parse below.
_MAX_DEPTH = 1024
_EXACT_INT_LIMIT = 2.0**63  # orjson keeps every integer literal with |n| < 2**63 an int


class _NeedExactNumbers(Exception):
    """A float where orjson may have rounded a big integer literal: re-parse exactly."""


class _LiteralFloat(float):
    """A float that was written as a float literal (the exact parse marks them)."""


def _parse_exact(value: bytes) -> Any:
    """The stdlib parse of a document orjson already accepted: same structure, exact integers.

    Rare (only when a number too big for 64 bits sits in a field we read). The stdlib scanner
    counts nesting against the recursion limit, so lift it enough for 1024 levels.
    """
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * _MAX_DEPTH))
    try:
        return json.loads(bytes(value).decode("utf-8"), parse_float=_LiteralFloat)
    finally:
        sys.setrecursionlimit(limit)


# --- values --------------------------------------------------------------------------------


def _blank(value: str) -> bool:
    return not value or value.isspace()


def _text(value: Any) -> str | None:
    """The contract's "text": a string as is, a number as text; anything else is missing."""
    kind = type(value)
    if kind is str:
        return value
    if kind is int:  # bool is a subclass of int, but type() is bool, so true/false are missing
        return str(value)
    if kind is float and abs(value) >= _EXACT_INT_LIMIT:
        raise _NeedExactNumbers
    if kind is float or kind is _LiteralFloat:
        return _float_text(value)
    return None


def _float_text(number: float) -> str:
    """Shortest round-trip form; integral values with every digit, never "2822.0" or "1e+20"."""
    shortest = float.__repr__(number)
    if number.is_integer():
        return str(int(Decimal(shortest)))
    if "e" in shortest:  # only tiny numbers get here: "1e-05" -> "1e-5"
        mantissa, exponent = shortest.split("e")
        return f"{mantissa}e{int(exponent)}"
    return shortest


# --- fields, in the order of the type table ------------------------------------------------

_MAX_KEY_BYTES = 65_535  # Cassandra refuses longer partition and clustering keys


def _key(event: dict, field: str) -> str | None:
    """programId / userId: a string or blank (-> None); longer than 64 KiB of UTF-8 is refused."""
    value = event.get(field)
    if value is None:
        return None
    if type(value) is not str:
        raise _wrong_type(field)
    if _blank(value):
        return None
    # 4 bytes per character at most, so only long strings need encoding to be measured
    if len(value) > _MAX_KEY_BYTES // 4 and len(value.encode("utf-8")) > _MAX_KEY_BYTES:
        raise _Rejected("dead_lettered", "key_too_long")
    return value


def _optional_string(event: dict, field: str) -> str | None:
    """programExternalId / programName: a string as given; blank -> None."""
    value = event.get(field)
    if value is None:
        return None
    if type(value) is not str:
        raise _wrong_type(field)
    return None if _blank(value) else value


_CONSENT = {"true": True, "false": False, "": False}


def _consent(event: dict) -> bool:
    """requestForPIIConsent: true/false, "true"/"false" in any case (stripped); blank -> false."""
    value = event.get("requestForPIIConsent")
    if value is True or value is False:
        return value
    if value is None:
        return False
    if type(value) is str:
        consent = _CONSENT.get(value.strip().lower())
        if consent is not None:
            return consent
    raise _wrong_type("requestForPIIConsent")


def _groups(event: dict) -> tuple[list | None, dict | None, list | None]:
    """userProfile and its three groups, type-checked in table order; None means absent."""
    profile = event.get("userProfile")
    if profile is None:
        return None, None, None
    if type(profile) is not dict:
        raise _wrong_type("userProfile")
    locations = profile.get("userLocations")
    if locations is not None and type(locations) is not list:
        raise _wrong_type("userProfile.userLocations")
    root_org = profile.get("rootOrg")
    if root_org is not None and type(root_org) is not dict:
        raise _wrong_type("userProfile.rootOrg")
    user_types = profile.get("profileUserTypes")
    if type(user_types) is dict:  # older producers send the single object itself
        user_types = [user_types]
    elif user_types is not None and type(user_types) is not list:
        raise _wrong_type("userProfile.profileUserTypes")
    return locations, root_org, user_types


# --- column rules --------------------------------------------------------------------------

_LOCATION_KEYS: dict[str, tuple[str, str, str]] = {}  # non-blank type -> its three map keys


def _user_locations(entries: list) -> dict[str, str]:
    """<type>_name/_id/_code for each object entry with a non-blank type (stripped, case kept),
    in list order, each only when not blank: later entries win key by key, blank values erase
    nothing. An empty map clears the column."""
    # The hot loop of flatten(): str values take the fast path, keys are built once per type.
    locations: dict[str, str] = {}
    for entry in entries:
        if type(entry) is not dict:
            continue
        kind = entry.get("type")
        if type(kind) is not str:
            kind = _text(kind)
            if kind is None:
                continue
        keys = _LOCATION_KEYS.get(kind)
        if keys is None:
            if _blank(kind):
                continue
            prefix = kind.strip()
            keys = (f"{prefix}_name", f"{prefix}_id", f"{prefix}_code")
            if len(_LOCATION_KEYS) < 4096:  # a handful of real types; bound hostile input
                _LOCATION_KEYS[kind] = keys
        name = entry.get("name")
        if type(name) is not str:
            name = _text(name)
        if name and not name.isspace():
            locations[keys[0]] = name
        id_ = entry.get("id")
        if type(id_) is not str:
            id_ = _text(id_)
        if id_ and not id_.isspace():
            locations[keys[1]] = id_
        code = entry.get("code")
        if type(code) is not str:
            code = _text(code)
        if code and not code.isspace():
            locations[keys[2]] = code
    return locations


def _organisation(root_org: dict) -> tuple[str | None, str | None]:
    """organisation_id / organisation_name: rootOrg.id / rootOrg.orgName as text; blank -> None."""
    org_id = _text(root_org.get("id"))
    org_name = _text(root_org.get("orgName"))
    return (
        None if org_id is None or _blank(org_id) else org_id,
        None if org_name is None or _blank(org_name) else org_name,
    )


def _user_type(entries: list) -> str | None:
    """The type of the last object entry, lower-cased; None when it is blank or there is none."""
    for entry in reversed(entries):
        if type(entry) is dict:
            kind = _text(entry.get("type"))
            return None if kind is None or _blank(kind) else kind.lower()
    return None


def _user_sub_type(entries: list) -> str | None:
    """Every non-blank subType, upper-cased, first occurrence kept, joined by ","; or None."""
    sub_types: dict[str, None] = {}  # an ordered set
    for entry in entries:
        if type(entry) is dict:
            sub_type = _text(entry.get("subType"))
            if sub_type is not None and not _blank(sub_type):
                sub_types[sub_type.upper()] = None
    return ",".join(sub_types) if sub_types else None


# --- dates ---------------------------------------------------------------------------------

# Hours 00-23, minutes and seconds 00-59 (no leap second), offsets up to 23:59. Groups: 1 the
# day, 2 the time (hour and minute), 3 the offset; the fraction never changes the date.
_DATE_GRAMMAR = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"(?:T((?:[01][0-9]|2[0-3]):[0-5][0-9]):[0-5][0-9](?:\.[0-9]{1,9})?"
    r"(?:Z|([+-](?:[01][0-9]|2[0-3]):[0-5][0-9])))?"
)
_FIRST_DAY = date.min.toordinal()  # 0001-01-01
_LAST_DAY = date.max.toordinal()  # 9999-12-31
_UNIX_EPOCH_DAY = date(1970, 1, 1).toordinal()
_MS_PER_DAY = 86_400_000
_DAYS: dict[str, date | None] = {}  # "YYYY-MM-DD" -> its date, None when impossible
_UNSEEN = object()


def _date(event: dict, field: str) -> date | _NotWritten:
    """createdAt / updatedAt: a date string, {"$date": string | epoch ms | blank}, or blank.

    Returns the UTC calendar date, or NOT_WRITTEN when blank (the column is left alone).
    """
    value = event.get(field)
    kind = type(value)
    if kind is dict:  # MongoDB extended JSON
        if len(value) != 1 or "$date" not in value:
            raise _wrong_type(field)
        value = value["$date"]
        kind = type(value)
        if kind is int:
            return _epoch_day(value, field)
        if kind is float and abs(value) >= _EXACT_INT_LIMIT:
            raise _NeedExactNumbers  # maybe a big integer literal: bad_date, not wrong_type
    if value is None:
        return NOT_WRITTEN
    if kind is not str:
        raise _wrong_type(field)
    if _blank(value):
        return NOT_WRITTEN
    return _date_from_string(value, field)


def _date_from_string(text: str, field: str) -> date:
    """The date grammar; the calendar date after conversion to UTC."""
    match = _DATE_GRAMMAR.fullmatch(text)  # fullmatch: "$" would let a trailing newline in
    if match is None:
        raise _bad_date(field)
    day_text = text[:10]
    day = _DAYS.get(day_text, _UNSEEN)
    if day is _UNSEEN:
        day = _calendar_day(day_text)
    if day is None:  # 2023-02-30, year 0000, month 13
        raise _bad_date(field)
    if match.lastindex != 3:  # a plain date, or a time in UTC ("Z")
        return day
    time, offset = match.group(2, 3)
    offset_minutes = int(offset[1:3]) * 60 + int(offset[4:6])
    utc_minutes = int(time[:2]) * 60 + int(time[3:5])
    utc_minutes += -offset_minutes if offset[0] == "+" else offset_minutes
    shift = utc_minutes // 1440  # -1, 0 or +1 day
    if shift == 0:
        return day
    ordinal = day.toordinal() + shift
    if not _FIRST_DAY <= ordinal <= _LAST_DAY:
        raise _bad_date(field)
    return date.fromordinal(ordinal)


def _calendar_day(day_text: str) -> date | None:
    try:
        day: date | None = date(int(day_text[:4]), int(day_text[5:7]), int(day_text[8:10]))
    except ValueError:
        day = None
    if len(_DAYS) >= 100_000:  # bound the cache; real traffic has a few thousand days
        _DAYS.clear()
    _DAYS[day_text] = day
    return day


def _epoch_day(milliseconds: int, field: str) -> date:
    """Epoch milliseconds (UTC) -> calendar date; years outside 0001-9999 are bad_date."""
    ordinal = _UNIX_EPOCH_DAY + milliseconds // _MS_PER_DAY  # floor: before 1970 counts too
    if not _FIRST_DAY <= ordinal <= _LAST_DAY:
        raise _bad_date(field)
    return date.fromordinal(ordinal)


# --- one message ---------------------------------------------------------------------------


def _event_row(event: dict) -> list:
    """The row one event writes (NOT_WRITTEN where it leaves a column alone).

    Fields are checked in the order of the type table; the first failure raises _Rejected.
    """
    program_id = _key(event, "programId")
    user_id = _key(event, "userId")
    external_id = _optional_string(event, "programExternalId")
    program_name = _optional_string(event, "programName")
    consent = _consent(event)
    locations, root_org, user_types = _groups(event)
    created_at = _date(event, "createdAt")
    updated_at = _date(event, "updatedAt")
    if program_id is None or user_id is None:
        raise _Rejected("skipped", "missing_id")
    # Groups cannot fail past their type check, so their columns are computed last.
    org_id = org_name = user_type = user_sub_type = NOT_WRITTEN
    if root_org is not None:
        org_id, org_name = _organisation(root_org)
    if user_types is not None:
        user_type = _user_type(user_types)
        user_sub_type = _user_sub_type(user_types)
    return [
        program_id,
        user_id,
        external_id,
        program_name,
        consent,
        NOT_WRITTEN if locations is None else _user_locations(locations),
        org_id,
        org_name,
        user_type,
        user_sub_type,
        created_at,
        updated_at,
    ]


def _message_row(value: bytes | None) -> list:
    """The outcome of one message, in the contract's order: a row to write, or _Rejected."""
    if value is None or len(value) == 0:  # a tombstone or zero bytes
        raise _Rejected("skipped", "empty")
    try:
        event = orjson.loads(value)  # strict JSON: see "strict JSON" above
    except orjson.JSONDecodeError:
        raise _Rejected("dead_lettered", "not_json") from None
    if type(event) is not dict:
        raise _Rejected("dead_lettered", "not_an_object")
    try:
        return _event_row(event)
    except _NeedExactNumbers:
        return _event_row(_parse_exact(value))


# --- a batch -------------------------------------------------------------------------------

_MERGED_COLUMNS = range(2, len(COLUMNS))  # all but the key


def flatten(records: Iterable[tuple[int, bytes | None]]) -> Batch:
    """Messages of one partition, in offset order -> one merged row per key, plus the rejects.

    Merging replays the upserts in offset order: a later event's written columns override,
    its NOT_WRITTEN columns keep the earlier value, and each group remembers the offset of the
    event that wrote it last (`writers`), so that it can be written at that event's write time.
    Rows keep the order of first appearance.
    """
    merged: dict[tuple[str, str], list] = {}  # key -> row + [message_count, [offsets], writers]
    rejects: list[Reject] = []
    read = 0
    for offset, value in records:
        read += 1
        try:
            row = _message_row(value)
        except _Rejected as rejected:
            rejects.append(Reject(offset, rejected.outcome, rejected.reason))
            continue
        key = (row[0], row[1])
        earlier = merged.get(key)
        if earlier is None:
            row.append(1)
            row.append([offset])
            row.append([None if row[i] is NOT_WRITTEN else offset for i in _GROUP_FIRST])
            merged[key] = row
            continue
        for i in _MERGED_COLUMNS:
            if row[i] is not NOT_WRITTEN:
                earlier[i] = row[i]
        earlier[-3] += 1
        earlier[-2].append(offset)
        writers = earlier[-1]
        for g, i in enumerate(_GROUP_FIRST):
            if row[i] is not NOT_WRITTEN:
                writers[g] = offset
    return Batch(rows=_frame(list(merged.values())), rejects=rejects, read=read)


def _frame(rows: list[list]) -> pd.DataFrame:
    """Column lists -> DataFrame in one go. Object columns keep str/None/bool/dict/date as they
    are (pandas would otherwise turn None into NaN in string columns)."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(_ROW_COLUMNS)
    data = {
        name: pd.Series(values, dtype=object)
        for name, values in zip(COLUMNS, columns[: len(COLUMNS)], strict=True)
    }
    data["message_count"] = pd.Series(columns[-3], dtype="int64")
    data["offsets"] = pd.Series([tuple(offsets) for offsets in columns[-2]], dtype=object)
    data["writers"] = pd.Series([tuple(writers) for writers in columns[-1]], dtype=object)
    return pd.DataFrame(data, columns=list(_ROW_COLUMNS))
