"""How a run's process manages memory: the cyclic collector paused while a range is written,
and finished runs' memory given back before the next run of the same process once it grew."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic cyclic garbage collection inside the block; collect() between chunks.

    A chunk creates ~10 containers per event (parsed JSON, rows) that live until it is written,
    in no reference cycle: the automatic passes, triggered by the allocations, only re-scanned
    them (docs/performance.md). The driver's requests do leave cycles: the caller collects them
    once per chunk instead (collect_between_chunks). Only a plain block, never a generator, may
    hold this: a pause must end where it began, whatever fails inside.
    """
    enabled = gc.isenabled()
    gc.disable()
    # Objects older than the block (Dagster's, the modules') are left out of every collection
    # until it ends, so the collections per chunk only scan the range's own objects.
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


def collect_between_chunks() -> None:
    """Collect the cyclic garbage the driver left for the chunks already written (requests and
    their futures, ~0.5 KB a row), which a paused collector would keep to the end of the run."""
    gc.collect()


def release_memory() -> None:
    """Give a finished run's memory back to the system before the process's next run.

    A run's messages, rows and DataFrames are garbage once it ends, but glibc keeps the freed
    heap and Python's arenas fragment: without this a long drain's RSS grows run after run.
    Done only once the process has grown by RELEASE_AFTER_GROWTH since it last was: a full
    collection of a process holding Dagster costs ~0.13 s, most of a small run's own time.
    """
    global _released_at
    rss = _rss_bytes()
    if rss is not None and _released_at is not None and rss < _released_at + RELEASE_AFTER_GROWTH:
        return
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    _released_at = _rss_bytes()


RELEASE_AFTER_GROWTH = 32 * 1024 * 1024
_released_at: int | None = None  # the process's RSS after its last release_memory()
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


_LIBC = _glibc()
