"""A second, deliberately plain implementation of reference-semantics.md, for the property tests.

Written straight from the contract with the standard library only (stdlib json, datetime); it
does not import programuser_dagster and shares no code with it. Slow and obvious on purpose:
if it and programuser_dagster.core.events disagree, one of them misreads the contract.

It follows the interpretations documented at the top of programuser_dagster/core/events.py (white
space = str.isspace; a field's checks run together at its place in the table; a blank id is
missing, never too long; numbers as text; the exact date grammar).
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, date, datetime, timedelta, timezone

COLUMNS = (
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


class _NotWritten:
    def __repr__(self) -> str:
        return "<reference NOT_WRITTEN>"


NOT_WRITTEN = _NotWritten()


class Rejected(Exception):
    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


def dead(reason: str) -> Rejected:
    return Rejected("dead_lettered", reason)


# ---- words of the contract ----


def is_absent(obj: dict, key: str) -> bool:
    return key not in obj or obj[key] is None


def is_blank_string(value: object) -> bool:
    return isinstance(value, str) and value.strip() == ""


def number_text(number: float) -> str:
    """A float (a JSON number with a fraction or exponent) written as text."""
    shortest = repr(number)
    mantissa, _, exponent = shortest.partition("e")
    if number != int(number):
        return f"{mantissa}e{int(exponent)}" if exponent else mantissa
    # integral: write every digit of the shortest form, no ".0", no exponent
    negative = mantissa.startswith("-")
    whole, _, fraction = mantissa.lstrip("-").partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    integer = digits.ljust(point, "0")[:point].lstrip("0") or "0"
    if integer == "0":
        return "0"
    return "-" + integer if negative else integer


def as_text(value: object) -> str | None:
    """The contract's text: a string, or a number as text; anything else is missing."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return number_text(value)
    return None


def text_or_none(value: object) -> str | None:
    """text, with blank -> None"""
    text = as_text(value)
    if text is None or text.strip() == "":
        return None
    return text


# ---- step 2: strict JSON ----


def _max_depth(text: str) -> int:
    depth = deepest = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text, re.DOTALL):
        t = token.group()
        if t in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif t in "]}":
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _check_values(document: object) -> None:
    """No lone surrogates anywhere, no number beyond a 64-bit float."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if any(0xD800 <= ord(c) <= 0xDFFF for c in item):
                raise ValueError("lone surrogate")
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            float(item)  # OverflowError when too large for a float
        elif isinstance(item, float) and item in (float("inf"), float("-inf")):
            raise ValueError("too large")


def parse_strict_json(value: bytes) -> object:
    try:
        text = value.decode("utf-8")  # strict: no invalid bytes, no encoded surrogates
    except UnicodeDecodeError:
        raise dead("not_json") from None
    if text.startswith("\ufeff"):
        raise dead("not_json")
    if _max_depth(text) > 1024:
        raise dead("not_json")
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(3000)  # json counts nesting against it; 1024 levels must fit
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
        _check_values(document)
    except (ValueError, OverflowError, RecursionError):
        raise dead("not_json") from None
    finally:
        sys.setrecursionlimit(old_limit)
    return document


# ---- step 4: fields, in the order of the type table ----


def check_id(event: dict, field: str) -> str | None:
    if is_absent(event, field):
        return None
    value = event[field]
    if not isinstance(value, str):
        raise dead("wrong_type:" + field)
    if value.strip() == "":
        return None
    if len(value.encode("utf-8")) > 65535:
        raise dead("key_too_long")
    return value


def check_string(event: dict, field: str) -> str | None:
    if is_absent(event, field):
        return None
    value = event[field]
    if not isinstance(value, str):
        raise dead("wrong_type:" + field)
    return None if value.strip() == "" else value


def check_consent(event: dict) -> bool:
    if is_absent(event, "requestForPIIConsent"):
        return False
    value = event["requestForPIIConsent"]
    if value is True or value is False:
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "true":
            return True
        if word in ("false", ""):
            return False
    raise dead("wrong_type:requestForPIIConsent")


DATE_RE = re.compile(
    r"(?P<y>\d\d\d\d)-(?P<mo>\d\d)-(?P<d>\d\d)"
    r"(T(?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)(\.\d{1,9})?"
    r"(?P<zone>Z|(?P<sign>[+-])(?P<oh>\d\d):(?P<om>\d\d)))?",
    re.ASCII,
)


def date_from_string(text: str, field: str) -> date:
    m = DATE_RE.fullmatch(text)
    if m is None:
        raise dead("bad_date:" + field)
    try:
        if m["h"] is None:
            return date(int(m["y"]), int(m["mo"]), int(m["d"]))
        if m["zone"] == "Z":
            tz = UTC
        else:
            if int(m["oh"]) > 23 or int(m["om"]) > 59:
                raise ValueError("offset")
            offset = timedelta(hours=int(m["oh"]), minutes=int(m["om"]))
            tz = timezone(offset if m["sign"] == "+" else -offset)
        local = datetime(
            int(m["y"]),
            int(m["mo"]),
            int(m["d"]),
            int(m["h"]),
            int(m["mi"]),
            int(m["s"]),
            tzinfo=tz,
        )
        return local.astimezone(UTC).date()
    except (ValueError, OverflowError):
        raise dead("bad_date:" + field) from None


def date_from_epoch_ms(ms: int, field: str) -> date:
    try:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    except OverflowError:
        raise dead("bad_date:" + field) from None
    return moment.date()


def check_date(event: dict, field: str) -> date | None:
    """None when blank (the column is left alone)."""
    if is_absent(event, field):
        return None
    value = event[field]
    if isinstance(value, dict):
        if list(value.keys()) != ["$date"]:
            raise dead("wrong_type:" + field)
        inner = value["$date"]
        if inner is None or is_blank_string(inner):
            return None
        if isinstance(inner, int) and not isinstance(inner, bool):
            return date_from_epoch_ms(inner, field)
        if isinstance(inner, str):
            return date_from_string(inner, field)
        raise dead("wrong_type:" + field)
    if isinstance(value, str):
        if value.strip() == "":
            return None
        return date_from_string(value, field)
    raise dead("wrong_type:" + field)


# ---- columns ----


def locations_map(entries: list) -> dict:
    result: dict = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kind = text_or_none(entry.get("type"))
        if kind is None:
            continue
        for part in ("name", "id", "code"):
            value = text_or_none(entry.get(part))
            if value is not None:
                result[kind.strip() + "_" + part] = value
    return result


def user_type_of(entries: list) -> str | None:
    objects = [e for e in entries if isinstance(e, dict)]
    if not objects:
        return None
    kind = text_or_none(objects[-1].get("type"))
    return None if kind is None else kind.lower()


def user_sub_type_of(entries: list) -> str | None:
    seen: list[str] = []
    for entry in entries:
        if isinstance(entry, dict):
            sub = text_or_none(entry.get("subType"))
            if sub is not None and sub.upper() not in seen:
                seen.append(sub.upper())
    return ",".join(seen) if seen else None


def event_row(event: dict) -> dict:
    program_id = check_id(event, "programId")
    user_id = check_id(event, "userId")
    external_id = check_string(event, "programExternalId")
    name = check_string(event, "programName")
    consent = check_consent(event)

    locations = root_org = user_types = None
    if not is_absent(event, "userProfile"):
        profile = event["userProfile"]
        if not isinstance(profile, dict):
            raise dead("wrong_type:userProfile")
        if not is_absent(profile, "userLocations"):
            locations = profile["userLocations"]
            if not isinstance(locations, list):
                raise dead("wrong_type:userProfile.userLocations")
        if not is_absent(profile, "rootOrg"):
            root_org = profile["rootOrg"]
            if not isinstance(root_org, dict):
                raise dead("wrong_type:userProfile.rootOrg")
        if not is_absent(profile, "profileUserTypes"):
            user_types = profile["profileUserTypes"]
            if isinstance(user_types, dict):
                user_types = [user_types]
            elif not isinstance(user_types, list):
                raise dead("wrong_type:userProfile.profileUserTypes")

    created = check_date(event, "createdAt")
    updated = check_date(event, "updatedAt")

    if program_id is None or user_id is None:
        raise Rejected("skipped", "missing_id")

    row = dict.fromkeys(COLUMNS, NOT_WRITTEN)
    row["program_id"] = program_id
    row["user_id"] = user_id
    row["program_externalid"] = external_id
    row["program_name"] = name
    row["pii_consent_required"] = consent
    if locations is not None:
        row["user_locations"] = locations_map(locations)
    if root_org is not None:
        row["organisation_id"] = text_or_none(root_org.get("id"))
        row["organisation_name"] = text_or_none(root_org.get("orgName"))
    if user_types is not None:
        row["user_type"] = user_type_of(user_types)
        row["user_sub_type"] = user_sub_type_of(user_types)
    if created is not None:
        row["created_at"] = created
    if updated is not None:
        row["updated_at"] = updated
    return row


def outcome_of(value: bytes | None) -> tuple[str, object]:
    """("written", row) or (outcome, reason) for one message value."""
    try:
        if value is None or len(value) == 0:
            raise Rejected("skipped", "empty")
        document = parse_strict_json(value)
        if not isinstance(document, dict):
            raise dead("not_an_object")
        return "written", event_row(document)
    except Rejected as rejected:
        return rejected.outcome, rejected.reason


def reference_flatten(records: list) -> tuple[list[dict], list[tuple[int, str, str]], int]:
    """(merged rows with message_count, offsets and writers, rejects as (offset, outcome,
    reason), read). A row's writers: per group of columns an event writes as a whole, the
    offset of the last event that wrote any of them."""
    groups = (("program_externalid", "program_name", "pii_consent_required"),
              ("user_locations",), ("organisation_id", "organisation_name"),
              ("user_type", "user_sub_type"), ("created_at",), ("updated_at",))

    def writers(result: dict, offset: int, before: tuple) -> tuple:
        return tuple(offset if any(result[c] is not NOT_WRITTEN for c in group) else old
                     for group, old in zip(groups, before, strict=True))

    table: dict = {}
    rejects = []
    for offset, value in records:
        outcome, result = outcome_of(value)
        if outcome != "written":
            rejects.append((offset, outcome, result))
            continue
        key = (result["program_id"], result["user_id"])
        if key not in table:
            table[key] = dict(result, message_count=1, offsets=(offset,),
                              writers=writers(result, offset, (None,) * len(groups)))
            continue
        merged = table[key]
        for column in COLUMNS:
            if result[column] is not NOT_WRITTEN:
                merged[column] = result[column]
        merged["message_count"] += 1
        merged["offsets"] = (*merged["offsets"], offset)
        merged["writers"] = writers(result, offset, merged["writers"])
    return list(table.values()), rejects, len(records)
