"""programuser-dagster: stack | produce | drain | lag."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import orjson

from .resources import kafka_resource
from .settings import INPUT_MAX_MESSAGE_BYTES, Settings

# Where `make run` keeps its instance (see the Makefile's run target), relative to the
# repository: drain uses it when DAGSTER_HOME is not set.
MAKE_RUN_HOME = ".dagster_home"


def positive_int(text: str) -> int:
    """argparse type of counts: 0 or less would make no progress (and loop), so refused."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
    from .samples import message_key

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
    from .samples import message_key, sample_events

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
        acked = kafka.produce(records, refused=lambda i, why: refusals.add(where(i), why))
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


def default_dagster_home(cwd: Path | None = None) -> Path:
    """Without DAGSTER_HOME: the instance of `make run`, ./.dagster_home with the repository's
    dagster.yaml linked into it (as the Makefile's run target does); the runs show in its UI.
    Sets DAGSTER_HOME (the worker processes of --processes read it)."""
    cwd = Path.cwd() if cwd is None else cwd
    if not (cwd / "dagster.yaml").is_file():
        raise ValueError(
            "DAGSTER_HOME is not set and there is no dagster.yaml here: set DAGSTER_HOME, or "
            f"run from the repository (drain then uses ./{MAKE_RUN_HOME}, the instance of "
            "make run)."
        )
    home = cwd / MAKE_RUN_HOME
    home.mkdir(exist_ok=True)
    link = home / "dagster.yaml"
    if not link.exists() and not link.is_symlink():
        link.symlink_to(Path("..") / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home.resolve())
    return home


def _cmd_drain(args: argparse.Namespace, settings: Settings) -> int:
    from .drain import drain
    from .instance import open_instance

    if not os.environ.get("DAGSTER_HOME"):
        default_dagster_home()
        print(f"drain: DAGSTER_HOME is not set; using ./{MAKE_RUN_HOME}, the instance of "
              "make run", file=sys.stderr)
    with open_instance(os.environ["DAGSTER_HOME"]) as instance:
        result = drain(instance, settings, max_messages=args.max_messages,
                       processes=args.processes)
    if result.signal:
        return 128 + result.signal  # as a shell reports a process ended by the signal
    if not result.runs and not result.skipped:
        print("nothing to drain: every partition is caught up")
    return 1 if result.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["stack"]:
        from .stack import main_stack

        return main_stack(argv[1:])

    from . import client_logs

    client_logs.install()
    parser = argparse.ArgumentParser(prog="programuser-dagster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("stack", help="start/stop/inspect the local Kafka and Cassandra")
    produce = sub.add_parser("produce", help="produce JSON lines (one message each)")
    produce.add_argument("file", nargs="?", help="a file of JSON lines, or - for stdin")
    produce.add_argument("--sample", type=positive_int,
                         help="produce N realistic sample events")
    produce.add_argument("--seed", type=int, default=42, help="seed of --sample")
    drain_p = sub.add_parser("drain", help="run the job for every partition with lag")
    drain_p.add_argument("--max-messages", type=positive_int,
                         help="offsets per run (default: PROGRAMUSER_MAX_MESSAGES, 100000)")
    drain_p.add_argument("--processes", type=positive_int, default=1,
                         help="drain partitions in this many parallel processes (default 1)")
    sub.add_parser("lag", help="low watermark, committed offset, high-water mark, lag")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        handler: Callable[[argparse.Namespace, Settings], int] = {
            "produce": _cmd_produce, "drain": _cmd_drain, "lag": _cmd_lag
        }[args.command]
        return handler(args, settings)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"programuser-dagster {args.command}: {' '.join(str(exc).split())}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
