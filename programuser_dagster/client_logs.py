"""The client libraries' repeated log lines, summarised instead of printed hundreds of times.

While a broker or a node is down, librdkafka logs "Connection refused" from every client at
every reconnect (~20 lines a second on its own stderr) and cassandra-driver logs each failed
reconnect: the one line that says what failed is buried. `RepeatFilter` lets the first line of
each kind through, then counts its repeats and lets one summary line through per interval.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# librdkafka's lines, through confluent-kafka's `logger` client property.
KAFKA_LOGGER = "programuser_dagster.librdkafka"
CASSANDRA_LOGGERS = ("cassandra.cluster", "cassandra.connection", "cassandra.pool")
INTERVAL_S = 60.0
_SUMMARY = "_programuser_repeat_summary"  # marks our own summary records

# Addresses stay in the key (a line about another broker is another line), other numbers do
# not: client names (rdkafka#consumer-12), durations, counts, retry delays, object ids.
_ADDRESS = re.compile(
    r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:]+\]|[A-Za-z][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*)"
    r":\d{1,5}(?![\d.])"
)
_VARYING = re.compile(r"0x[0-9A-Fa-f]+|\b[0-9A-Fa-f]{8,}\b|\d+(?:\.\d+)?")


def normalise(message: str) -> str:
    """The message with its varying numbers replaced by '#', its addresses kept."""
    parts = []
    last = 0
    for m in _ADDRESS.finditer(message):
        parts += [_VARYING.sub("#", message[last:m.start()]), m.group()]
        last = m.end()
    parts.append(_VARYING.sub("#", message[last:]))
    return "".join(parts)


@dataclass
class _Seen:
    since: float  # when the last line of this kind was let through
    repeats: int  # occurrences held back since then
    example: str  # the latest one, as logged
    level: int


class RepeatFilter(logging.Filter):
    """First occurrence of a message through; repeats counted, one summary line per interval."""

    def __init__(
        self,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 1000,
    ) -> None:
        super().__init__()
        self.interval_s, self.clock, self.max_kinds = interval_s, clock, max_kinds
        self._seen: dict[tuple[str, int, str], _Seen] = {}
        self._lock = threading.Lock()  # records come from the clients' threads too

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return True
        key = (record.name, record.levelno, normalise(message))
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                if len(self._seen) >= self.max_kinds:  # bounded: forget the oldest kind
                    del self._seen[next(iter(self._seen))]
                self._seen[key] = _Seen(now, 0, message, record.levelno)
                return True
            seen.repeats += 1
            seen.example = message
            if now - seen.since < self.interval_s:
                return False
            count, elapsed = seen.repeats, now - seen.since
            seen.since, seen.repeats = now, 0
        record.msg = f"{message} {_repeated(count, elapsed)}"
        record.args = None
        return True

    def flush(self) -> None:
        """Log what is still held back (at exit: the count since the last summary line)."""
        now = self.clock()
        with self._lock:
            pending = [(k, s) for k, s in self._seen.items() if s.repeats]
            for _, seen in pending:
                count, elapsed = seen.repeats, now - seen.since
                seen.since, seen.repeats = now, 0
                seen.example = f"{seen.example} {_repeated(count, elapsed)}"
        for (name, _, _), seen in pending:
            logging.getLogger(name).log(seen.level, "%s", seen.example, extra={_SUMMARY: True})


def _repeated(count: int, elapsed: float) -> str:
    # A client's queued lines are often served at once (by its close): no "in the last 0 s".
    during = f" in the last {elapsed:.0f} s" if elapsed >= 1 else ""
    return f"[repeated {count} times{during}]"


class _Stderr(logging.Handler):
    """Writes to the sys.stderr of the moment (a test or a caller may have replaced it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


FILTER = RepeatFilter()
_installed = False
_install_lock = threading.Lock()


def kafka_logger() -> logging.Logger:
    """The logger for confluent-kafka's `logger` client property, with the repeat filter.

    librdkafka logs through it instead of writing to stderr from its own threads; the lines are
    served by the client's poll/consume/flush calls.
    """
    logger = logging.getLogger(KAFKA_LOGGER)
    with _install_lock:
        if FILTER not in logger.filters:
            logger.addFilter(FILTER)
            handler = _Stderr()
            handler.setFormatter(logging.Formatter("%(asctime)s librdkafka %(levelname)s "
                                                   "%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False  # printed once, here
    return logger


def install() -> None:
    """Apply the repeat filter to cassandra-driver's loggers and librdkafka's, and print the
    counts still held back when the process exits. Idempotent."""
    global _installed
    kafka_logger()
    with _install_lock:
        if _installed:
            return
        for name in CASSANDRA_LOGGERS:
            logging.getLogger(name).addFilter(FILTER)
        atexit.register(FILTER.flush)
        _installed = True
