"""The corpus of malformed and hostile messages, each with its exact expected outcome.

`cases.jsonl` holds one case a line: `name`, `outcome` ("written", "skipped" or
"dead_lettered"), `reason` (null when written), an optional `note`, an optional `row` (for
written cases: expected column values, dates as "YYYY-MM-DD"), and the message value as one of
  `tombstone: true`   no value at all (a Kafka tombstone),
  `text`              the value as UTF-8 text (JSON escapes inside it are kept as written),
  `value_b64`         the raw bytes, base64 (invalid UTF-8, raw NUL bytes, BOMs...),
  `parts`             [[text, count], ...]: the UTF-8 text of each part repeated count times,
                      joined; builds the large cases (2 MB, deep nesting) at load time.
Written cases use programId "bad-inputs" and their name as userId, so that sending the whole
corpus through a real pipeline writes one row per written case.

Used by tests/unit/test_bad_inputs_core.py and tests/unit/test_events_properties.py, and through
real Kafka by tests/integration/test_bad_inputs_e2e.py.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = Path(__file__).with_name("cases.jsonl")


@dataclass(frozen=True)
class Case:
    name: str
    value: bytes | None
    outcome: str  # "written", "skipped" or "dead_lettered"
    reason: str | None  # None when written
    note: str = ""
    row: dict[str, Any] = field(default_factory=dict)  # expected columns of a written case

    def __repr__(self) -> str:  # keep pytest ids and failure output short (values can be 2 MB)
        size = "tombstone" if self.value is None else f"{len(self.value)} bytes"
        return f"Case({self.name!r}, {size}, {self.outcome}, {self.reason})"


def _value(entry: dict[str, Any]) -> bytes | None:
    if entry.get("tombstone"):
        return None
    if "value_b64" in entry:
        return base64.b64decode(entry["value_b64"], validate=True)
    if "parts" in entry:
        return b"".join(text.encode("utf-8") * count for text, count in entry["parts"])
    return entry["text"].encode("utf-8")


def load_corpus() -> list[Case]:
    cases = []
    for line in MANIFEST.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        cases.append(
            Case(
                name=entry["name"],
                value=_value(entry),
                outcome=entry["outcome"],
                reason=entry["reason"],
                note=entry.get("note", ""),
                row=entry.get("row", {}),
            )
        )
    return cases
