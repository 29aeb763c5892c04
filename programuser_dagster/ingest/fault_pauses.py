"""Fault pauses: the only test-only branch in the product, and why it stays.

The fault tests stop, kill or race a run at an exact point of its ops: before the writes,
before the fence, before the commit. Those runs execute in processes the test does not own
(started by `dagster dev`, the daemon, a run launcher or a container), so no Dagster or Python
mechanism of the test (a fixture, monkeypatch, a resource) reaches them; an environment
variable is what crosses into them. Unset (always, in production) each pause is a dict lookup.
"""

from __future__ import annotations

import os
import time

from dagster import OpExecutionContext

# Seconds to sleep after the writes and dead letters, before the commit (a test kills the run's
# process at exactly that point), before the fence (between the start read and the commit: two
# committers interleave there), and between planning and writing (a zombie: its writes reach
# Cassandra after a newer run's).
PAUSE_BEFORE_COMMIT_ENV = "PROGRAMUSER_TEST_PAUSE_BEFORE_COMMIT_S"
PAUSE_BEFORE_FENCE_ENV = "PROGRAMUSER_TEST_PAUSE_BEFORE_FENCE_S"
PAUSE_BEFORE_WRITE_ENV = "PROGRAMUSER_TEST_PAUSE_BEFORE_WRITE_S"


def pause(context: OpExecutionContext, variable: str, where: str) -> None:
    """Sleep the seconds `variable` says (none when unset), said in the run's log."""
    seconds = float(os.environ.get(variable) or 0)
    if seconds > 0:
        context.log.warning(f"Test fault hook {variable}: pausing {seconds}s {where}.")
        time.sleep(seconds)
