"""The dead-letter record of a refused input record: its headers, and a size that always fits.

Pure (no client): the Kafka resource reads the original record and sends what this returns.
A letter must fit the dead-letter topic's `max.message.bytes`, or the broker refuses it and the
partition can never move on; no topic setting rules that out (a compressing producer can land
a value far above the uncompressed limit), so a letter too large for the topic loses its value
(then its key, then the original headers) and says so: `reason=too_large`, `original_bytes`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ..settings import DEAD_LETTER_HEADROOM_BYTES

TOO_LARGE = "too_large"
# Kafka's record-batch header (61 bytes) and one record's own framing (varint lengths,
# attributes, timestamp and offset deltas: at most ~36 bytes), rounded up.
BATCH_OVERHEAD = 128
# A header's two varint lengths and their record framing, rounded up.
_HEADER_OVERHEAD = 12

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Source:
    """Where the refused record came from, and what it carried."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]
    timestamp_ms: int | None  # None: the record has none
    write_time_us: int | None = None  # when its cells were (or are to be) written: core/clock.py


@dataclass(frozen=True)
class Letter:
    key: bytes | None
    value: bytes | None
    headers: Headers
    reason: str  # what it is counted as: the original reason, or too_large


def record_bytes(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """An upper bound of the bytes one record takes in a batch of its own, uncompressed."""
    size = BATCH_OVERHEAD + len(key or b"") + len(value or b"")
    return size + sum(_HEADER_OVERHEAD + len(k.encode()) + len(v or b"") for k, v in headers)


def _ours(source: Source, reason: str) -> Headers:
    headers = [
        ("reason", reason.encode()),
        ("source_topic", source.topic.encode()),
        ("source_partition", str(source.partition).encode()),
        ("source_offset", str(source.offset).encode()),
    ]
    if source.timestamp_ms is not None:
        headers.append(("source_timestamp", str(source.timestamp_ms).encode()))
    if source.write_time_us is not None:  # what a re-drive writes it at (core/clock.py)
        headers.append(("write_time", str(source.write_time_us).encode()))
    return headers


def letter(source: Source, reason: str, limit: int) -> Letter:
    """The dead letter of `source` refused for `reason`, at most `limit` bytes if it can be.

    In order, until it fits: the whole record with our headers after its own; without its
    value (reason too_large, original_reason and original_bytes say why and how big); without
    its key; without its original headers. Only a limit smaller than our own few headers is
    not met (the broker then refuses the letter and the run fails, saying so).
    """
    original: Headers = [(k, v or b"") for k, v in source.headers]
    whole = original + _ours(source, reason)
    if record_bytes(source.key, source.value, whole) <= limit:
        return Letter(source.key, source.value, whole, reason)
    marks = [
        *_ours(source, TOO_LARGE),
        ("original_reason", reason.encode()),
        ("original_bytes", str(len(source.value or b"")).encode()),
    ]
    for key, headers in ((source.key, original + marks), (None, original + marks)):
        if record_bytes(key, b"", headers) <= limit:
            return Letter(key, b"", headers, TOO_LARGE)
    return Letter(None, b"", marks, TOO_LARGE)


def room_warning(
    dead_letter_topic: str, dead_letter_limit: int, input_topic: str, input_limit: int
) -> str | None:
    """What an operator should change when a letter of the largest input record cannot fit."""
    needed = input_limit + DEAD_LETTER_HEADROOM_BYTES
    if dead_letter_limit >= needed:
        return None
    return (
        f"Dead-letter topic {dead_letter_topic!r} allows max.message.bytes={dead_letter_limit}, "
        f"less than input topic {input_topic!r}'s {input_limit} plus room for the dead-letter "
        "headers: a refused record larger than that is dead-lettered without its value "
        f"(reason={TOO_LARGE}, header original_bytes). To keep whole letters, set the "
        f"dead-letter topic's max.message.bytes to at least {needed} (kafka-configs.sh "
        f"--alter --entity-type topics --entity-name {dead_letter_topic} --add-config "
        f"max.message.bytes={needed})."
    )


@dataclass(frozen=True)
class Origin:
    """What a dead letter's own headers say about it."""

    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int | None
    write_time_us: int | None  # None: a letter from before write times, or another tool's
    original_reason: str | None  # a too_large letter's reason for being refused
    original_deleted: bool = False  # the record was gone when its letter was sent
    original_bytes: int | None = None  # a too_large letter's: the size of the original value

    @property
    def value_kept(self) -> bool:
        return self.reason != TOO_LARGE


def origin(headers: Sequence[tuple[str, bytes | None]] | None) -> Origin | None:
    """The origin of a letter from its headers; None when they are not a dead letter's.

    Ours start at the last `reason` header (the original record's own come before it, and may
    use the same names)."""
    listed = list(headers or ())
    starts = [i for i, (name, _) in enumerate(listed) if name == "reason"]
    found: dict[str, str] = {}
    for name, value in listed[starts[-1]:] if starts else ():
        if value is not None:
            found[name] = value.decode("utf-8", "replace")
    try:
        return Origin(
            reason=found["reason"],
            source_topic=found["source_topic"],
            source_partition=int(found["source_partition"]),
            source_offset=int(found["source_offset"]),
            source_timestamp_ms=_number(found.get("source_timestamp")),
            write_time_us=_number(found.get("write_time")),
            original_reason=found.get("original_reason"),
            original_deleted=any(name == "original_deleted" for name, _ in listed[:starts[-1]]),
            original_bytes=_number(found.get("original_bytes")),
        )
    except (KeyError, ValueError):
        return None


def _number(text: str | None) -> int | None:
    return None if text is None else int(text)


def key_digest(key: bytes | None) -> bytes | None:
    """What is kept of a letter's key to recognise its original: a digest, not the key (which
    may be personal data) nor its size; None for no key."""
    return None if key is None else hashlib.blake2b(key, digest_size=16).digest()


def not_the_original(
    letter: Origin, letter_key: bytes | None, key: bytes | None, timestamp_ms: int | None,
    value: bytes | None,
) -> list[str]:
    """What of the record now at a too_large letter's source offset differs from the letter's
    original (empty: it is the original): after the input topic was recreated, or on a mirror,
    that offset holds another record.

    `letter_key` is key_digest of the letter's key. The key is compared only when the letter
    kept one: a letter without (steps 2-3 of "Too large" drop it) cannot tell a dropped key
    from an original without one. The timestamp is compared always (a letter without
    source_timestamp had an original without one), and the value's size whenever the letter
    says it (original_bytes): on a letter without its key, these two decide alone.
    """
    differs = []
    if letter_key is not None and key_digest(key) != letter_key:
        differs.append("key")
    if timestamp_ms != letter.source_timestamp_ms:
        differs.append("timestamp")
    if letter.original_bytes is not None and len(value or b"") != letter.original_bytes:
        differs.append("size")
    return differs
