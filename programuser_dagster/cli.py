"""programuser-dagster: drain | lag | replay | redrive | verify | reset-clock | prune-history |
metrics."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .core.offsets import PartitionOffsets
from .resources import cassandra_resource, kafka_resource
from .settings import MAX_RANGE_MESSAGES, Settings

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


def run_length(text: str) -> int:
    """argparse type of --max-messages: a count, at most settings.MAX_RANGE_MESSAGES."""
    value = positive_int(text)
    if value > MAX_RANGE_MESSAGES:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_RANGE_MESSAGES} (a run writes up to its length in "
            f"microseconds ahead of the wall clock), not {value}")
    return value


def _cmd_lag(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from .core.event_ages import lag_seconds

    kafka = kafka_resource(settings)
    try:
        offsets = kafka.offsets()
        oldest = kafka.oldest_uncommitted_times(offsets)
    finally:
        kafka.close()
    now_ms = time.time_ns() // 1_000_000
    print(f"topic {settings.kafka_input_topic}, group {settings.kafka_group_id}")
    print(f"{'partition':>9} {'low':>10} {'committed':>10} {'high':>10} {'lag':>10} "
          f"{'lag s':>10}")
    worst = 0.0
    for o in offsets:
        committed = "-" if o.committed is None else str(o.committed)
        if o.lag and oldest.get(o.partition) is None:
            shown = "?"  # the record's time did not arrive in time: unknown, not 0
        else:
            seconds, _ = lag_seconds(oldest.get(o.partition), now_ms)
            worst, shown = max(worst, seconds), f"{seconds:.1f}"
        print(f"{o.partition:>9} {o.low:>10} {committed:>10} {o.high:>10} {o.lag:>10} "
              f"{shown:>10}")
    print(f"{'total':>9} {'':>10} {'':>10} {'':>10} {sum(o.lag for o in offsets):>10} "
          f"{worst:>10.1f}")
    return _say_beyond_end(offsets)


def _say_beyond_end(offsets: Sequence[PartitionOffsets]) -> int:
    """Say each partition whose committed offset is beyond the log end (its lag 0 is not
    caught up); 1 if there is one."""
    beyond = [o for o in offsets if o.beyond_end]
    for o in beyond:
        print(f"partition {o.partition}: {o.beyond_end_warning()}")
    return 1 if beyond else 0


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


def _dagster_home(command: str) -> str:
    if not os.environ.get("DAGSTER_HOME"):
        default_dagster_home()
        print(f"{command}: DAGSTER_HOME is not set; using ./{MAKE_RUN_HOME}, the instance of "
              "make run", file=sys.stderr)
    return os.environ["DAGSTER_HOME"]


def _cmd_drain(args: argparse.Namespace, settings: Settings) -> int:
    from .ingest.drain import drain
    from .ingest.instance import open_instance

    with open_instance(_dagster_home("drain")) as instance:
        result = drain(instance, settings, max_messages=args.max_messages,
                       processes=args.processes)
    if result.signal:
        return 128 + result.signal  # as a shell reports a process ended by the signal
    if not result.runs and not result.skipped and not result.lost:
        kafka = kafka_resource(settings)
        try:
            offsets = kafka.offsets()
        finally:
            kafka.close()
        if _say_beyond_end(offsets):
            return 1
        print("nothing to drain: every partition is caught up")
    return 1 if result.failed else 0


def operator() -> str:
    """Who ran a command, as the asset's events say it: "CLI by user@host"."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"CLI by {user}@{socket.gethostname()}"


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from .incidents import replay
    from .incidents.jobs import replay_observation, run_replay
    from .ingest.instance import open_instance

    target = replay.Target(
        offset=args.to_offset,
        time_ms=None if args.to_time is None else replay.parse_time(args.to_time),
        earliest=args.to_earliest,
    )
    kafka, cassandra = kafka_resource(settings), cassandra_resource(settings)
    try:
        if not args.apply:
            run_replay(kafka, cassandra, args.partition, target, False, print, lambda _: None)
            return 0
        # The instance first: each rewind is recorded where the UI shows it as it is applied.
        with open_instance(_dagster_home("replay")) as instance:
            by = operator()
            done = run_replay(
                kafka, cassandra, args.partition, target, True, print,
                lambda rewind: instance.report_runless_asset_event(
                    replay_observation(rewind, by)))
        print(f"rewound {len(done)} partitions; the sensor (or `programuser-dagster drain`) "
              "re-ingests from there")
        return 0
    finally:
        kafka.close()
        cassandra.close()


def _cmd_reset_clock(args: argparse.Namespace, settings: Settings) -> int:
    from .cassandra.kept_commits import keep_commit
    from .incidents import reset_clock

    kafka, cassandra = kafka_resource(settings), cassandra_resource(settings)
    try:
        resets = reset_clock.plan(kafka, args.partition)
        if not args.apply:
            for reset in resets:
                print(reset.line(applied=False))
            return 0
        done = reset_clock.apply(
            kafka, resets, lambda r: print(r.line(applied=True)),
            lambda kept: keep_commit(cassandra, kafka.group_id, kafka.input_topic, kept, print))
        for reset in resets:
            if not reset.wrong:
                print(reset.line(applied=True))
        print(f"reset the clock of {len(done)} partitions")
        return 0
    finally:
        kafka.close()
        cassandra.close()


def _cmd_prune_history(args: argparse.Namespace, settings: Settings) -> int:
    from .housekeeping.history import prune
    from .ingest.instance import open_instance

    keep_days = settings.history_keep_days if args.keep_days is None else args.keep_days
    kafka = kafka_resource(settings)
    try:
        with open_instance(_dagster_home("prune-history")) as instance:
            report = prune(instance, kafka, keep_days, apply=args.apply, say=print)
        for line in report.lines():
            print(line)
        return 0
    finally:
        kafka.close()


def _cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from .ingest.instance import open_instance
    from .observe.exporter import Exporter, serve

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    kafka = kafka_resource(settings)
    try:
        with open_instance(_dagster_home("metrics")) as instance:
            exporter = Exporter(settings, instance, kafka)
            # The first reading counts every stored run's report: done before serving, so
            # that no scrape waits for it.
            exporter.families()
            server = serve(exporter, settings.metrics_host, settings.metrics_port)
            print(f"serving http://{settings.metrics_host}:{settings.metrics_port}/metrics "
                  f"(topic {settings.kafka_input_topic}, group {settings.kafka_group_id})",
                  flush=True)
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop as on SIGTERM
                stop.wait()
            server.shutdown()
        return 0
    finally:
        kafka.close()


def days(text: str) -> float:
    """argparse type of --keep-days: days above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 < value <= 3650:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 3650, not {text}")
    return value


def _cmd_redrive(args: argparse.Namespace, settings: Settings) -> int:
    from .incidents import redrive
    from .incidents.jobs import redrive_filters, redrive_observation
    from .ingest.instance import open_instance
    from .resources import cassandra_io_manager

    filters = redrive_filters(args.reason, args.partition, args.since, args.until)
    kafka, writer = kafka_resource(settings), cassandra_io_manager(settings).writer()
    try:
        if not args.apply:
            redrive.redrive(kafka, writer, filters, False, print)
            return 0
        with open_instance(_dagster_home("redrive")) as instance:
            counts = redrive.redrive(kafka, writer, filters, True, print)
            if counts:
                instance.report_runless_asset_event(redrive_observation(counts, operator()))
        return 0
    finally:
        kafka.close()
        writer.client.close()


def _cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from .incidents.verify import verify

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # its progress lines
    report = verify(settings, args.partition or None)
    print(report.describe())
    return DONE if report.ok else DIFFERENCES


# Exit statuses of replay, redrive and verify (docs/incidents.md).
DONE, DIFFERENCES, BAD_ARGUMENTS, NOT_COMPLETED = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from . import client_logs

    client_logs.install()
    parser = argparse.ArgumentParser(prog="programuser-dagster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    drain_p = sub.add_parser("drain", help="run the job for every partition with lag")
    drain_p.add_argument("--max-messages", type=run_length,
                         help="offsets per run (default: PROGRAMUSER_MAX_MESSAGES, 100000)")
    drain_p.add_argument("--processes", type=positive_int, default=1,
                         help="drain partitions in this many parallel processes (default 1)")
    sub.add_parser("lag", help="low watermark, committed offset, high-water mark, lag")
    replay_p = sub.add_parser(
        "replay", help="rewind partitions so that the sensor re-ingests them (dry run unless "
        "--apply)")
    replay_p.add_argument("--partition", type=int, action="append", default=[],
                          help="a partition to rewind (repeat it; default: all)")
    to = replay_p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-offset", type=int, help="rewind to this offset")
    to.add_argument("--to-time", help="rewind to the first record at or after this ISO-8601 "
                    "time, with its offset or Z")
    to.add_argument("--to-earliest", action="store_true",
                    help="rewind to the oldest retained record")
    replay_p.add_argument("--apply", action="store_true", help="rewind (default: dry run)")
    redrive_p = sub.add_parser(
        "redrive", help="write the dead letters today's rules accept, at their events' write "
        "times (dry run unless --apply)")
    redrive_p.add_argument("--reason", action="append", default=[],
                           help="only letters of this reason (repeat it; default: all)")
    redrive_p.add_argument("--partition", type=int, action="append", default=[],
                           help="only letters of this source partition (repeat it)")
    redrive_p.add_argument("--since", help="only letters whose source_timestamp is at or "
                           "after this ISO-8601 time, with its offset or Z")
    redrive_p.add_argument("--until", help="... and before this one")
    redrive_p.add_argument("--apply", action="store_true", help="write (default: dry run)")
    verify_p = sub.add_parser(
        "verify", help="is every retained record below the committed offsets in Cassandra?")
    verify_p.add_argument("--partition", type=int, action="append", default=[],
                          help="a partition to verify (repeat it; default: all)")
    reset_p = sub.add_parser(
        "reset-clock", help="set partitions' committed write clock back to this host's clock "
        "where it is wrong, far ahead (dry run unless --apply)")
    reset_p.add_argument("--partition", type=int, action="append", default=[],
                         help="a partition to reset (repeat it; default: all)")
    reset_p.add_argument("--apply", action="store_true", help="reset (default: dry run)")
    prune_p = sub.add_parser(
        "prune-history", help="delete Dagster history older than PROGRAMUSER_HISTORY_KEEP_DAYS "
        "that no keep rule holds, as the job prune_history does (dry run unless --apply)")
    prune_p.add_argument("--keep-days", type=days,
                         help="days to keep (default: PROGRAMUSER_HISTORY_KEEP_DAYS, 14)")
    prune_p.add_argument("--apply", action="store_true", help="delete (default: dry run)")
    sub.add_parser("metrics", help="serve the metrics Prometheus scrapes on "
                   "PROGRAMUSER_METRICS_HOST:PROGRAMUSER_METRICS_PORT (until stopped)")
    args = parser.parse_args(argv)
    incident = args.command in ("replay", "redrive", "verify", "reset-clock")
    try:
        settings = Settings.from_env()
        handler: Callable[[argparse.Namespace, Settings], int] = {
            "drain": _cmd_drain, "lag": _cmd_lag,
            "replay": _cmd_replay, "redrive": _cmd_redrive, "verify": _cmd_verify,
            "reset-clock": _cmd_reset_clock, "prune-history": _cmd_prune_history,
            "metrics": _cmd_metrics,
        }[args.command]
        return handler(args, settings)
    except ValueError as exc:  # bad arguments or settings (Refused is one): nothing was done
        _say_error(args.command, exc)
        return BAD_ARGUMENTS if incident else 1
    except (RuntimeError, OSError) as exc:  # a server unreachable, a run in the way
        _say_error(args.command, exc)
        return NOT_COMPLETED if incident else 1


def _say_error(command: str, exc: BaseException) -> None:
    print(f"programuser-dagster {command}: {' '.join(str(exc).split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
