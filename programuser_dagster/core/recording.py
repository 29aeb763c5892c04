"""When a sensor records what it sees: when it changed, or at least every HEARTBEAT_S.

The backlog sensor's lag observation (every 30 s) and the health sensor's check evaluations
(every 60 s) are rows of Dagster's event log that nothing deletes: recorded every tick, a quiet
pipeline grew its database ~1.8 GB a month. Recorded when they change, and at least every five
minutes so that "last observed" stays fresh, they cost a few hundred rows a day at a trickle.

What "changed" means is the caller's `seen` (JSON-safe: str keys, numbers, strings, lists);
lag_level() is the lag's. What was last recorded, and when, is kept in the sensor's cursor, a
small JSON object (read_cursor / write_cursor).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

HEARTBEAT_S = 300.0


def read_cursor(text: str | None) -> dict[str, Any]:
    """A sensor's cursor as a JSON object; {} when there is none, or it is not one (a cursor of
    an earlier version: everything is recorded once more)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def write_cursor(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def due(last: Any, seen: Any, now: float, heartbeat_s: float = HEARTBEAT_S) -> bool:
    """Whether to record `seen` at `now`, given `last`, what was recorded last: [seen, at]
    (anything else: nothing recorded yet). A clock that went back records too."""
    if not (isinstance(last, list) and len(last) == 2 and isinstance(last[1], int | float)):
        return True
    before, at = last
    return before != seen or not 0 <= now - at < heartbeat_s


def memo(seen: Any, now: float) -> list[Any]:
    """What `due` reads back: `seen`, recorded at `now`."""
    return [seen, round(now, 3)]


def lag_level(lag: int, lag_records: int) -> int:
    """The lag, coarsely: 0 below `lag_records` (the trigger's threshold: a trickle gathering,
    or caught up), then 1, 2, 3, ... for each doubling above it (a backlog growing or
    shrinking)."""
    return (lag // lag_records).bit_length()
