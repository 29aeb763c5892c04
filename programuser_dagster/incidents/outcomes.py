"""The two ways an operator's command ends without doing everything asked, told apart because
their exit statuses differ (cli.py: 2 and 3)."""

from __future__ import annotations


class Refused(ValueError):
    """Bad arguments or settings: nothing was changed; the message says what to give instead."""


class CouldNotComplete(RuntimeError):
    """A server or a run stood in the way: the message says what was done and what was not."""
