"""Failure notices for a webhook: what is an incident, which are new or over since the notices
already sent, and what a notice says (Slack-compatible: `{"text": ...}` plus structured fields).

An incident has a key that stays the same while it lasts (a partition's runs failing at one
committed state; a check failing), so a notice goes out once per incident, not once per tick,
and a resolved notice once it is over. What was sent lives in the sensor's cursor; a notice that
could not be posted stays pending and is tried again next tick.

No I/O and no client library here: observe/notices.py reads the instance and posts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# Failed attempts in a row at one committed state before a notice (the sensor keeps retrying
# with a back-off meanwhile: 30 s, then 60 s; the alert rule ProgramuserRunsFailing uses 3 too).
FAILED_ATTEMPTS_NOTICE = 3
SOURCE = "programuser-dagster"
INCIDENTS_DOC = "docs/incidents.md"
OPERATING_DOC = "docs/operating.md"


@dataclass(frozen=True)
class Incident:
    """Something wrong an operator is told of once: `key` names it while it lasts, `title` is
    one line, `lines` the detail, `todo` what to do."""

    key: str
    title: str
    lines: tuple[str, ...] = ()
    todo: str = ""

    def notice(self) -> dict[str, Any]:
        text = "\n".join([f"[{SOURCE}] FIRING: {self.title}", *self.lines,
                          *([f"What to do: {self.todo}"] if self.todo else [])])
        return {"text": text, "source": SOURCE, "status": "firing", "incident": self.key,
                "title": self.title}


def resolved_notice(key: str, title: str) -> dict[str, Any]:
    """The notice that an incident sent earlier (`title`, as sent) is over."""
    return {"text": f"[{SOURCE}] RESOLVED: {title}", "source": SOURCE, "status": "resolved",
            "incident": key, "title": title}


@dataclass(frozen=True)
class Due:
    """The notices to post this tick: incidents not yet notified, and notified ones now over
    (key -> the title sent)."""

    firing: tuple[Incident, ...]
    resolved: tuple[tuple[str, str], ...]


def due(notified: Mapping[str, str], current: Mapping[str, Incident]) -> Due:
    """Given what was notified (key -> title, from the cursor) and the incidents now."""
    return Due(
        firing=tuple(i for k, i in sorted(current.items()) if k not in notified),
        resolved=tuple((k, t) for k, t in sorted(notified.items()) if k not in current),
    )


def runs_failing(partition: int, start: int, end: int | None, token: str, attempts: int,
                 error: str, run_url: str | None) -> Incident | None:
    """A partition whose runs failed FAILED_ATTEMPTS_NOTICE times or more in a row at its
    committed state (offset `start`, fence token `token`); None below that (a retry may pass)."""
    if attempts < FAILED_ATTEMPTS_NOTICE:
        return None
    where = f"[{start}, {end})" if end is not None else f"from offset {start}"
    lines = [f"Range {where}; the sensor retries with a growing back-off (up to 15 min).",
             f"Last error: {first_line(error)}"]
    if run_url:
        lines.append(f"Last run: {run_url}")
    return Incident(
        key=f"runs_failing:{partition}:{start}:{token}",
        title=f"partition {partition}: {attempts} runs in a row failed at offset {start}",
        lines=tuple(lines),
        todo=f"read the run's error in the UI ({OPERATING_DOC}#the-ui, 'When a run fails'); "
             f"{INCIDENTS_DOC}#what-to-do-when",
    )


def check_failing(check_name: str, description: str, todo: str) -> Incident:
    """A health check of program_enrollment whose latest evaluation failed."""
    return Incident(key=f"check:{check_name}", title=f"check {check_name} failed",
                    lines=(first_line(description, 400),), todo=todo)


def first_line(text: str, most: int = 300) -> str:
    """The first non-blank line of an error, at most `most` characters."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "(no message)")
    return line if len(line) <= most else line[: most - 1] + "…"


def url_host(url: str) -> str:
    """What of a webhook URL may be logged: its scheme and host (the path or query may hold a
    token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


def run_url(ui_url: str | None, run_id: str) -> str | None:
    """A run's page in the Dagster UI at `ui_url` (None: no UI address set)."""
    return f"{ui_url.rstrip('/')}/runs/{run_id}" if ui_url else None
