"""How a run's process manages memory: the cyclic collector paused while a range is written,
and a finished run's memory given back before the next run of the same process."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic cyclic garbage collection inside the block; collect() between chunks.

    A chunk creates ~10 containers per event (parsed JSON, rows) that live until it is written,
    in no reference cycle: the automatic passes, triggered by the allocations, only re-scanned
    them (README: Performance). The driver's requests do leave cycles: the caller collects them
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
    """
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


_LIBC = _glibc()
