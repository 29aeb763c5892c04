"""The Dagster instance of processes that start side by side (drains, their workers).

Dagster's sqlite storage creates its databases and stamps their schema (alembic) when a process
first opens a fresh home, and adds dynamic partitions by check-then-insert: two processes doing
either at once left a home broken for good ("alembic ... has more than one head") or crashed one
with "IntegrityError UNIQUE ... dynamic_partitions". Both are done here under one lock file of
the home. (PostgreSQL storage does the same steps; the lock costs nothing there.)
"""

from __future__ import annotations

import fcntl
import os
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

from dagster import DagsterInstance

from ..names import PARTITIONS_NAME

LOCK_FILE = ".programuser-dagster.lock"


@contextmanager
def home_lock(home: str | os.PathLike[str]) -> Iterator[None]:
    """Held by one process of this machine at a time, per Dagster home."""
    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def open_instance(home: str | os.PathLike[str]) -> Iterator[DagsterInstance]:
    """The instance of `home`, its storage created (if new) by one process at a time."""
    with home_lock(home):
        instance = DagsterInstance.from_config(str(home))
        # Open every storage now, inside the lock: run, event-log and schedule databases.
        instance.get_run_records(limit=1)
        instance.get_dynamic_partitions(PARTITIONS_NAME)
        instance.all_instigator_state()
    with instance:
        hold_connections(instance)
        yield instance


# The pool the webserver keeps (dagster-webserver's defaults), with a statement timeout long
# enough for a write under load rather than for a page's read.
_STATEMENT_TIMEOUT_MS = 60_000
_POOL_RECYCLE_S = 3600
_POOL_MAX_OVERFLOW = 20


_HELD: weakref.WeakSet[DagsterInstance] = weakref.WeakSet()


def hold_connections(instance: DagsterInstance) -> None:
    """Keep a pooled connection to PostgreSQL storage open for the process's runs, as the
    webserver does: by default each stored event opens a connection of its own, ~20 a run
    (docs/performance.md). sqlite storage has no pool; nothing changes there.

    As in the webserver, a pooled connection the server dropped (a restart, a failover) fails
    the statement that finds it, not retried: that run fails and is retried by the sensor or
    the next drain; the pool then connects afresh. Once per instance: each call makes new
    engines (a drain's runs, each calling it, would leave a pool behind per run)."""
    if instance in _HELD:
        return
    _HELD.add(instance)
    instance.optimize_for_webserver(statement_timeout=_STATEMENT_TIMEOUT_MS,
                                    pool_recycle=_POOL_RECYCLE_S,
                                    max_overflow=_POOL_MAX_OVERFLOW)


def add_partitions(instance: DagsterInstance, keys: Sequence[str]) -> None:
    """Add the job's dynamic partitions that no other process added first."""
    name = PARTITIONS_NAME
    home = instance.root_directory
    with home_lock(home) if home else nullcontext():
        known = set(instance.get_dynamic_partitions(name))
        missing = [k for k in keys if k not in known]
        if missing:
            instance.add_dynamic_partitions(name, missing)
