"""What one run of program_user_info is told to do: its op config, built from the settings.

`run_config` is the one place a run's config is made, for the sensor, the schedule, drain and
the job's own default (what the Launchpad and a backfill from the UI start from), so a setting
such as PROGRAMUSER_MAX_MESSAGES bounds every run however it was launched.
"""

from __future__ import annotations

from typing import Any

from dagster import Config
from pydantic import Field

from ..settings import DEFAULTS, MAX_RANGE_MESSAGES, Settings

FLATTEN_STEP = "flatten_events"


class IngestConfig(Config):
    end_offset: int | None = Field(
        default=None,
        description="Exclusive end of the range (the sensor sets the high-water mark it saw). "
        "Unset: the partition's current high-water mark.",
    )
    max_messages: int = Field(
        default=DEFAULTS.max_messages, gt=0, le=MAX_RANGE_MESSAGES,
        description="At most this many offsets per run (PROGRAMUSER_MAX_MESSAGES; at most "
        f"{MAX_RANGE_MESSAGES}).",
    )
    chunk_messages: int = Field(
        default=DEFAULTS.chunk_messages, gt=0,
        description="Messages read, flattened and written together (PROGRAMUSER_CHUNK_MESSAGES).",
    )
    chunk_bytes: int = Field(
        default=DEFAULTS.chunk_bytes, gt=0,
        description="At most about this many bytes of message values per chunk "
        "(PROGRAMUSER_CHUNK_BYTES).",
    )
    clock_skew_max_s: float = Field(
        default=DEFAULTS.clock_skew_max_s, gt=0,
        description="A run refuses to write when its host's clock is this far from the "
        "partition's committed clock or the broker's (PROGRAMUSER_CLOCK_SKEW_MAX_S).",
    )
    dead_letter_bytes: int = Field(
        default=DEFAULTS.dead_letter_bytes, gt=0,
        description="A run ends its range early once its dead letters reach about this many "
        "bytes; the next run goes on from there (PROGRAMUSER_DEAD_LETTER_BYTES).",
    )


def run_config(settings: Settings, end_offset: int | None = None) -> dict[str, Any]:
    """The run config of a run of the job: the settings' limits, and the range's end if known."""
    config: dict[str, Any] = {
        "max_messages": settings.max_messages,
        "chunk_messages": settings.chunk_messages,
        "chunk_bytes": settings.chunk_bytes,
        "dead_letter_bytes": settings.dead_letter_bytes,
        "clock_skew_max_s": settings.clock_skew_max_s,
    }
    if end_offset is not None:
        config["end_offset"] = end_offset
    return {"ops": {FLATTEN_STEP: {"config": config}}}
