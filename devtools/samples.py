"""Realistic program-enrolment events in the seed's shape, reproducible from a seed.

Used by `python -m devtools produce --sample N`, the benchmark and the tests.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

_LOCATIONS = [
    ("district", "ANANTAPUR", "2822"),
    ("block", "AGALI", "282262"),
    ("state", "Andhra Pradesh", "28"),
    ("cluster", "ZPHS AGALI", "2822620004"),
    ("school", "SMT PRAMEELAMMA AND SRI KGA GUPTA EM UP SCHOOL", "28226200816"),
]
_USER_TYPES = [("administrator", "deo"), ("administrator", "hm"), ("teacher", None)]


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _hex24(rng: random.Random) -> str:
    return f"{rng.getrandbits(96):024x}"


def sample_event(rng: random.Random, program_id: str | None = None) -> dict[str, Any]:
    """One event shaped like the seed's sample (about its size), with random ids and values."""
    created = datetime(2023, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(3 * 10**7))
    updated = created + timedelta(seconds=rng.randrange(10**6))
    locations = []
    parent = None
    for kind, name, code in _LOCATIONS:
        loc_id = _uid(rng)
        locations.append(
            {
                "code": f"{code}{rng.randrange(100)}",
                "name": f"{name} {rng.randrange(1000)}",
                "id": loc_id,
                "type": kind,
                "parentId": parent,
            }
        )
        parent = loc_id
    user_type, sub_type = rng.choice(_USER_TYPES)
    profile_type: dict[str, Any] = {"type": user_type}
    if sub_type:
        profile_type["subType"] = sub_type
    return {
        "_id": _hex24(rng),
        "deleted": False,
        "programId": program_id or _hex24(rng),
        "programName": f"Program {rng.randrange(10**4)}",
        "programExternalId": f"PGM-{rng.randrange(10**6)}",
        "requestForPIIConsent": rng.random() < 0.5,
        "userRoleInformation": {
            "role": "HM,DEO",
            "state": _uid(rng),
            "district": _uid(rng),
            "school": _uid(rng),
        },
        "userId": _uid(rng),
        "appInformation": {"appName": "Diksha", "appVersion": "5.2"},
        "userProfile": {
            "userLocations": locations,
            "profileUserTypes": [profile_type],
            "framework": {"board": ["CBSE"], "medium": ["English"], "gradeLevel": ["Class 5"]},
            "rootOrg": {"id": str(rng.randrange(10**18, 10**19)), "orgName": "Custodian Org"},
        },
        "noOfResourcesStarted": rng.randrange(10),
        "updatedAt": updated.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "createdAt": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "__v": 0,
    }


def sample_events(n: int, seed: int = 42, programs: int = 50) -> Iterator[dict[str, Any]]:
    """n events with unique (program, user) keys spread over `programs` programs."""
    rng = random.Random(seed)
    program_ids = [_hex24(rng) for _ in range(max(1, programs))]
    for _ in range(n):
        yield sample_event(rng, rng.choice(program_ids))


def message_key(event: Any) -> bytes | None:
    """The producer key `programId:userId`, which keeps one user's events in one partition."""
    if isinstance(event, dict):
        program, user = event.get("programId"), event.get("userId")
        if isinstance(program, str) and isinstance(user, str):
            return f"{program}:{user}".encode()
    return None
