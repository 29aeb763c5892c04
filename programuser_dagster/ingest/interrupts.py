"""Signals that must not cut a commit in half.

Inside a step's user code Dagster turns SIGINT and SIGTERM into an exception raised at once
(`raise_execution_interrupts`), wherever the code is: in the middle of a Kafka transaction, a
signal would abort a commit whose writes and dead letters are already acknowledged, or, worse,
fail the run after its commit landed. `interrupts_deferred()` lets such a block finish.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class DeferredSignals:
    """The stop signals that arrived inside an `interrupts_deferred()` block, in order."""

    received: list[int] = field(default_factory=list)

    def names(self) -> str:
        return ", ".join(signal.Signals(s).name for s in self.received)


@contextmanager
def interrupts_deferred(deferred: DeferredSignals | None = None) -> Iterator[DeferredSignals]:
    """Record and swallow SIGINT and SIGTERM for the block, then restore the previous handlers.

    The signals are recorded in `deferred` (a new one if not given), which the caller can read
    after the block, whether it ended normally or not.

    The signals are not re-delivered afterwards: the block is meant to be the last thing a run
    does (its commit), the run then ends normally, and whoever executes runs learns of the
    signal by its own means (`drain` watches a wakeup fd, which the C-level handler writes to
    whatever Python handler is installed). Signal handlers can only be set from the main
    thread: elsewhere this is a no-op (and signals are delivered to the main thread anyway).

    Never `yield` inside the block of an op: Dagster resumes an op's generator inside a fresh
    `raise_execution_interrupts()` on every next(), which re-installs its raising handler over
    this one, so a signal after the yield raises again (yield before or after the block).
    """
    deferred = DeferredSignals() if deferred is None else deferred
    if threading.current_thread() is not threading.main_thread():
        yield deferred
        return

    def record(signum: int, _frame: FrameType | None) -> None:
        deferred.received.append(signum)

    previous: dict[int, object] = {}
    try:
        # Inside the try: a signal arriving while the handlers are being swapped is handled by
        # the old handler (the commit has not started), and the handlers are restored anyway.
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, record)
        yield deferred
    finally:
        for signum, handler in previous.items():
            # None: the previous handler was not installed from Python; the default is the
            # closest we can restore.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # type: ignore[arg-type]
