"""`python -m devtools produce FILE | - | --sample N`: JSON lines (or sample events) onto the
input topic, one message each (`make produce`). Was KafkaResource.produce and the CLI's
`produce`: a deployment never produces to its input topic, so it does not ship."""

from __future__ import annotations

import argparse
import contextlib
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from programuser_dagster.cli import positive_int
from programuser_dagster.kafka.dead_letters import BATCH_OVERHEAD
from programuser_dagster.kafka.resource import KafkaResource, KafkaUnavailable
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import INPUT_MAX_MESSAGE_BYTES, Settings

from .samples import message_key, sample_events


def produce_records(
    kafka: KafkaResource,
    records: Iterable[tuple[bytes | None, bytes | None]],
    partition: int | None = None,
    refused: Callable[[int, str], None] | None = None,
) -> int:
    """Produce (key, value) records to the input topic; returns how many were acknowledged.

    Without `partition`, the key picks the partition, so one user's events stay in order.
    A record the client or the broker refuses does not stop the others, and every accepted
    record is flushed. Each refusal is reported as `refused(index of the record, reason)`;
    without `refused`, refusals raise KafkaUnavailable after the flush.
    """
    kafka.partitions()  # a missing topic is said now, not after delivery.timeout.ms
    producer = input_producer(kafka)
    acked = 0
    pending: set[int] = set()  # sent, no delivery report yet
    failures: list[tuple[int, str]] = []
    tell = refused or (lambda i, why: failures.append((i, why)))

    def report(err: KafkaError | None, i: int) -> None:
        nonlocal acked
        pending.discard(i)
        if err is None:
            acked += 1
        else:
            tell(i, err.str())

    extra = {} if partition is None else {"partition": partition}
    sent = 0
    for i, (key, value) in enumerate(records):
        while True:
            try:
                producer.produce(
                    kafka.input_topic, value=value, key=key, **extra,
                    on_delivery=lambda err, _msg, i=i: report(err, i),
                )
                pending.add(i)  # reports are served by poll/flush, on this thread
                break
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain
            except KafkaException as exc:  # refused by the client (e.g. too large)
                err = exc.args[0] if exc.args else None
                tell(i, err.str() if isinstance(err, KafkaError) else str(exc))
                break
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    wait_s = kafka.delivery_timeout_s + 5
    producer.flush(wait_s)
    for i in sorted(pending):
        tell(i, f"not acknowledged within {wait_s:.0f}s (it may or may not be on the topic)")
    if failures:
        raise KafkaUnavailable(
            f"{acked} of {sent} records reached {kafka.input_topic!r} on "
            f"{kafka.bootstrap_servers}; {len(failures)} did not, the first (record "
            f"{failures[0][0]}): {failures[0][1]}"
        )
    return acked

def input_producer(kafka: KafkaResource) -> Producer:
    """A producer of the input topic (`produce`), with the input topic's record limit."""
    return Producer(
        {
            **kafka._common_config(),
            "enable.idempotence": True,
            "acks": "all",
            # librdkafka checks a record's key, value and headers against this; the broker
            # checks the whole batch, framing included: leave the framing's room, so that
            # what the producer takes the topic takes.
            "message.max.bytes": INPUT_MAX_MESSAGE_BYTES - BATCH_OVERHEAD,
            "delivery.timeout.ms": int(kafka.delivery_timeout_s * 1000),
            "linger.ms": 5,
        }
    )


class _Refusals:
    """Refused input lines: each of the first few said with its line number and reason, then
    counted by reason."""

    SHOWN = 20

    def __init__(self) -> None:
        self.count = 0
        self.where: list[str] = []
        self.reasons: Counter[str] = Counter()

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        self.reasons[reason] += 1
        if len(self.where) < 10:
            self.where.append(where)
        if self.count <= self.SHOWN:
            print(f"produce: {where} refused: {reason}", file=sys.stderr, flush=True)


def _read_lines(
    source: BinaryIO, refusals: _Refusals, numbers: array
) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) of each non-blank line; appends each yielded line's number to `numbers`.

    Bytes, decoded per line, so a line that is not UTF-8 is refused with its number and the
    others go on; so is a line larger than the input topic accepts.
    """
    for number, line in enumerate(source, 1):
        raw = line.rstrip(b"\r\n")
        if not raw.strip():
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            refusals.add(f"line {number}", f"not UTF-8: byte 0x{raw[exc.start]:02x} at byte "
                         f"{exc.start + 1} of the line ({exc.reason})")
            continue
        if len(raw) > INPUT_MAX_MESSAGE_BYTES:
            refusals.add(f"line {number}", f"{len(raw)} bytes, more than the input topic's "
                         f"limit of {INPUT_MAX_MESSAGE_BYTES} bytes")
            continue
        try:
            key = message_key(orjson.loads(raw))
        except orjson.JSONDecodeError:
            key = None  # produced as it is: the job will dead-letter it as not_json
        numbers.append(number)
        yield key, raw


def _cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    with contextlib.ExitStack() as stack:
        return _produce(args, settings, stack)


def _produce(args: argparse.Namespace, settings: Settings, stack: contextlib.ExitStack) -> int:
    refusals = _Refusals()
    numbers = array("q")  # line number of each record sent, by its index
    if args.sample is not None:
        records: Iterator[tuple[bytes | None, bytes]] = (
            (message_key(e), orjson.dumps(e)) for e in sample_events(args.sample, seed=args.seed)
        )

        def where(i: int) -> str:
            return f"sample event {i + 1}"
    elif args.file:
        if args.file == "-":
            source: BinaryIO = sys.stdin.buffer
        else:
            path = Path(args.file)
            source = stack.enter_context(path.open("rb"))
        records = _read_lines(source, refusals, numbers)

        def where(i: int) -> str:
            return f"line {numbers[i]}"
    else:
        print("produce: give FILE, '-' for standard input, or --sample N", file=sys.stderr)
        return 2
    kafka = kafka_resource(settings)
    try:
        acked = produce_records(kafka, records, refused=lambda i, why: refusals.add(where(i), why))
    finally:
        kafka.close()
    print(f"produced {acked} messages to {settings.kafka_input_topic}")
    if refusals.count:
        lines = ", ".join(refusals.where) + (", ..." if refusals.count > len(refusals.where)
                                             else "")
        hidden = refusals.count - min(refusals.count, _Refusals.SHOWN)
        reasons = "; ".join(f"{n} x {why}" for why, n in refusals.reasons.most_common(3))
        print(f"produce: {refusals.count} refused ({lines}), {acked} acknowledged"
              + (f"; {hidden} refusals not shown above: {reasons}" if hidden else ""),
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str]) -> int:
    """`produce FILE | - | --sample N [--seed S]` (argv excludes the word "produce")."""
    parser = argparse.ArgumentParser(prog="python -m devtools produce",
                                     description="produce JSON lines (one message each)")
    parser.add_argument("file", nargs="?", help="a file of JSON lines, or - for stdin")
    parser.add_argument("--sample", type=positive_int, help="produce N realistic sample events")
    parser.add_argument("--seed", type=int, default=42, help="seed of --sample")
    args = parser.parse_args(argv)
    try:
        return _cmd_produce(args, Settings.from_env())
    except (ValueError, RuntimeError, OSError) as exc:  # bad settings, a server unreachable
        print(f"produce: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
