"""The metadata string committed with an offset, written and parsed back: pure (no client).

It carries the fence's token, the partition's write clock, the topic's partition count and, on a
new partition's claim, its barrier (core/growth.py):
"programuser-dagster token=N clock=C id=2 partitions=P[ barrier=Q:M,...] at=T host=H"
(commit_metadata); `at`: when it was committed, in seconds (core/kept_commit.py renews commits
before the broker's offset retention removes them).
"""

from __future__ import annotations

import re

from ..core.offsets import Barrier

_TOKEN = re.compile(r"\btoken=(\d+)\b")
_CLOCK = re.compile(r"\bclock=(\d+)\b")
_PARTITIONS = re.compile(r"\bpartitions=(\d+)\b")
_BARRIER = re.compile(r"\bbarrier=(\d+:\d+(?:,\d+:\d+)*)")
# `id=2`: committed under the escaped transactional id (fence.py: transactional_id);
# `host=H`: the host whose clock the commit's clock came from (core/clock_skew.py names it).
_ID_2 = re.compile(r"\bid=2\b")
_HOST = re.compile(r"\bhost=(\S+)")
_AT = re.compile(r"\bat=(\d+)\b")
_TXN_PREFIX = "programuser-dagster"


def _number(pattern: re.Pattern[str], metadata: str | None) -> int:
    match = pattern.search(metadata or "")
    return int(match.group(1)) if match else 0


def _token(metadata: str | None) -> int:
    return _number(_TOKEN, metadata)


def _clock(metadata: str | None) -> int:
    return _number(_CLOCK, metadata)


def _barrier(metadata: str | None) -> Barrier:
    match = _BARRIER.search(metadata or "")
    if not match:
        return ()
    return tuple((int(q), int(mark)) for q, mark in
                 (pair.split(":") for pair in match.group(1).split(",")))


def _host(metadata: str | None) -> str:
    match = _HOST.search(metadata or "")
    return match.group(1) if match else ""


def _at(metadata: str | None) -> float:
    return float(_number(_AT, metadata))


def commit_metadata(token: int, clock: int, partitions: int = 0, barrier: Barrier = (),
                    host: str = "", at: float = 0) -> str:
    """The metadata committed with an offset (parsed back by KafkaResource.offsets): the
    fence's token, the write clock (core/clock.py), the mark of a commit under the escaped
    transactional id, the topic's partition count and a claim's barrier (core/growth.py), the
    commit's time (core/kept_commit.py) and the committing host (core/clock_skew.py)."""
    text = f"{_TXN_PREFIX} token={token} clock={clock} id=2"
    if partitions:
        text += f" partitions={partitions}"
    if barrier:
        text += " barrier=" + ",".join(f"{q}:{mark}" for q, mark in barrier)
    if at > 0:
        text += f" at={int(at)}"
    name = "".join(host.split())[:255]
    return text + (f" host={name}" if name else "")

