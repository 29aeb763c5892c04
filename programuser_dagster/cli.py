"""programuser-dagster: stack | produce | drain | lag."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import orjson

from .resources import kafka_resource
from .settings import Settings


def _read_lines(source: TextIO) -> Iterator[tuple[bytes | None, bytes]]:
    from .samples import message_key

    for line in source:
        raw = line.rstrip("\n").encode()
        if not raw.strip():
            continue
        try:
            key = message_key(orjson.loads(raw))
        except orjson.JSONDecodeError:
            key = None  # produced as it is: the job will dead-letter it as not_json
        yield key, raw


def _cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    with contextlib.ExitStack() as stack:
        return _produce(args, settings, stack)


def _produce(args: argparse.Namespace, settings: Settings, stack: contextlib.ExitStack) -> int:
    from .samples import message_key, sample_events

    if args.sample is not None:
        records: Iterator[tuple[bytes | None, bytes]] = (
            (message_key(e), orjson.dumps(e)) for e in sample_events(args.sample, seed=args.seed)
        )
    elif args.file == "-":
        records = _read_lines(sys.stdin)
    elif args.file:
        path = Path(args.file)
        records = _read_lines(stack.enter_context(path.open(encoding="utf-8")))
    else:
        print("produce: give FILE, '-' for standard input, or --sample N", file=sys.stderr)
        return 2
    kafka = kafka_resource(settings)
    try:
        count = kafka.produce(records)
    finally:
        kafka.close()
    print(f"produced {count} messages to {settings.kafka_input_topic}")
    return 0


def _cmd_lag(args: argparse.Namespace, settings: Settings) -> int:
    kafka = kafka_resource(settings)
    try:
        offsets = kafka.offsets()
    finally:
        kafka.close()
    print(f"topic {settings.kafka_input_topic}, group {settings.kafka_group_id}")
    print(f"{'partition':>9} {'low':>10} {'committed':>10} {'high':>10} {'lag':>10}")
    for o in offsets:
        committed = "-" if o.committed is None else str(o.committed)
        print(f"{o.partition:>9} {o.low:>10} {committed:>10} {o.high:>10} {o.lag:>10}")
    print(f"{'total':>9} {'':>10} {'':>10} {'':>10} {sum(o.lag for o in offsets):>10}")
    return 0


def _cmd_drain(args: argparse.Namespace, settings: Settings) -> int:
    from dagster import DagsterInstance

    from .drain import drain

    with DagsterInstance.get() as instance:
        result = drain(instance, settings, max_messages=args.max_messages,
                       processes=args.processes)
    if not result.runs and not result.skipped:
        print("nothing to drain: every partition is caught up")
    return 1 if result.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["stack"]:
        from .stack import main_stack

        return main_stack(argv[1:])

    parser = argparse.ArgumentParser(prog="programuser-dagster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("stack", help="start/stop/inspect the local Kafka and Cassandra")
    produce = sub.add_parser("produce", help="produce JSON lines (one message each)")
    produce.add_argument("file", nargs="?", help="a file of JSON lines, or - for stdin")
    produce.add_argument("--sample", type=int, help="produce N realistic sample events")
    produce.add_argument("--seed", type=int, default=42, help="seed of --sample")
    drain_p = sub.add_parser("drain", help="run the job for every partition with lag")
    drain_p.add_argument("--max-messages", type=int, help="offsets per run (default 100000)")
    drain_p.add_argument("--processes", type=int, default=1,
                         help="drain partitions in this many parallel processes (default 1)")
    sub.add_parser("lag", help="low watermark, committed offset, high-water mark, lag")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        handler = {"produce": _cmd_produce, "drain": _cmd_drain, "lag": _cmd_lag}[args.command]
        return handler(args, settings)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"programuser-dagster {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
