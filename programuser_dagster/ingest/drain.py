"""Drain every partition's backlog by executing the job in this process, on the UI's instance.

For cron jobs, scripts and tests: the runs show in the UI like the sensor's, a partition whose
run is queued or in progress there is skipped with a message, and the caller learns whether
any run failed. With processes > 1 the partitions are split over that many worker processes,
each executing its partitions' runs one after another (parallel runs, one per partition at a
time, as the daemon's run queue allows).

A drain stops on the first SIGTERM or SIGINT: it starts no other run, the run in progress ends
as its commit step decides (it commits if its writes were acknowledged, see interrupts.py),
and the result says what was finished and what was not.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import FrameType, TracebackType
from typing import Any

import dagster
from dagster import (
    DagsterInstance,
    ExecuteInProcessResult,
    IOManagerDefinition,
    ResourceDefinition,
)
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG  # not exported publicly

from .. import client_logs
from ..cassandra.client import CassandraWriteFailed, keep_connections
from ..core.growth import hold
from ..core.offsets import PartitionOffsets
from ..core.planning import Launch
from ..kafka.resource import KafkaUnavailable
from ..memory import release_memory
from ..resources import build_resources, cassandra_resource
from ..settings import Settings
from .backlog import launch_request, process_token, runs_in_flight, sync_partitions
from .instance import add_partitions, hold_connections
from .interrupts import STOP_SIGNALS
from .job import program_user_info
from .offset_retention import lost_partitions
from .run_tags import DRAIN, DRAIN_PROCESS_TAG, HELD, LAUNCHED_BY_TAG, OUTCOME_TAG, SUPERSEDED

# What a finished run did to its partition (judge()).
PROGRESS = "progress"  # the committed offset moved, or nothing is left to read
STALLED = "stalled"  # succeeded, yet the offset stayed with records past it: stop there
SUPERSEDED_RUN = "superseded"  # another run committed this range first: not a failure
FAILED = "failed"


def judge(
    before: PartitionOffsets, after: PartitionOffsets, succeeded: bool, outcome: str | None
) -> str:
    """What a run did, from its partition's offsets before and after it and how it ended.

    The guard against loops of any cause (a bad setting, a bug, an empty range): a run that
    succeeded without moving the offset while records are left would be followed by the same
    run again, forever. A range of only holes (transaction markers) moves the offset too.
    """
    if not succeeded:
        return FAILED
    if outcome in (SUPERSEDED, HELD):  # nothing committed, nothing wrong: see it next pass
        return SUPERSEDED_RUN
    if after.next_offset > before.next_offset or after.lag == 0:
        return PROGRESS
    return STALLED


@dataclass
class DrainResult:
    runs: list[tuple[int, bool, str]] = field(default_factory=list)  # partition, ok, line
    skipped: dict[int, str] = field(default_factory=dict)
    # Partitions whose run succeeded without moving the offset: counted as failures.
    stalled: dict[int, str] = field(default_factory=dict)
    # Partitions whose commit Kafka lost (core/kept_commit.py): not run, counted as failures.
    lost: dict[int, str] = field(default_factory=dict)
    # Set when a SIGTERM or SIGINT stopped the drain (its number), and what was left.
    signal: int | None = None
    caught_up: set[int] = field(default_factory=set)
    # Partition -> (the run succeeded, what became of it), of the run in progress at the signal.
    in_progress: dict[int, tuple[bool, str]] = field(default_factory=dict)
    not_started: set[int] = field(default_factory=set)  # lag, and no run in this drain
    lag_left: dict[int, int] = field(default_factory=dict)  # ran, lag left, not failed

    @property
    def failed(self) -> int:
        return sum(1 for _, ok, _ in self.runs if not ok) + len(self.stalled) + len(self.lost)

    def merge(self, other: DrainResult) -> None:
        self.runs += other.runs
        self.skipped.update(other.skipped)
        self.stalled.update(other.stalled)
        self.lost.update(other.lost)
        self.signal = self.signal or other.signal
        self.caught_up |= other.caught_up
        self.in_progress.update(other.in_progress)
        self.not_started |= other.not_started
        self.lag_left.update(other.lag_left)

    def stop_summary(self) -> str:
        """One line: what a stopped drain finished and what it did not."""
        name = signal.Signals(self.signal).name if self.signal else "a stop request"
        finished = len(self.runs) - len(self.in_progress)
        failed = self.failed - sum(1 for ok, _ in self.in_progress.values() if not ok)
        detail = [f"{failed} failed"] if failed else []
        detail.append(f"{_count(len(self.caught_up), 'partition')} caught up")
        parts = [f"{_count(finished, 'run')} finished ({', '.join(detail)})"]
        parts += [f"partition {p}'s run in progress {what}"
                  for p, (_, what) in sorted(self.in_progress.items())]
        if not self.in_progress:
            parts.append("no run was in progress")
        if self.lag_left:
            parts.append("lag left on " + ", ".join(
                f"partition {p} ({n})" for p, n in sorted(self.lag_left.items())))
        if self.not_started:
            parts.append(f"{_partitions(self.not_started)} not started")
        return f"drain: stopped by {name}: " + ", ".join(parts)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _partitions(ps: Collection[int]) -> str:
    ps = sorted(ps)
    return f"partition{'' if len(ps) == 1 else 's'} " + ", ".join(str(p) for p in ps)


class _StopSignals:
    """Learns of SIGINT and SIGTERM whichever Python handler is installed when they arrive.

    During a run Dagster installs its own handlers (a signal raises inside a step's code, or is
    swallowed by the commit step's interrupts_deferred()): the signal number reaches us through
    the wakeup fd, which CPython's C-level handler writes to for any Python-handled signal.
    Between runs our own handlers only record it. Everything is restored on exit. Main thread
    only (signal handlers and the wakeup fd are the main thread's); elsewhere it never fires.
    """

    def __init__(self, watch_parent: bool = False) -> None:
        self.signal: int | None = None
        self.watch_parent = watch_parent
        self._read: int | None = None
        self._write: int | None = None
        self._previous_fd = -1
        self._handlers: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            self._handlers[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._read is None or self._write is None:
            return
        for signum, handler in self._handlers.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read)
        os.close(self._write)
        self._read = self._write = None

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum

    def fileno(self) -> int | None:
        """Readable when a signal arrived (for multiprocessing.connection.wait)."""
        return self._read

    def check(self) -> int | None:
        """The first stop signal received so far, or None."""
        if self._read is not None:
            try:
                data = os.read(self._read, 512)
            except BlockingIOError:
                data = b""
            for signum in data:  # other Python-handled signals write their numbers too
                if signum in STOP_SIGNALS and self.signal is None:
                    self.signal = signum
        if self.signal is None and self.watch_parent:
            parent = multiprocessing.parent_process()
            if parent is not None and not parent.is_alive():
                self.signal = signal.SIGTERM  # orphaned worker: stop as if told to
        return self.signal


def drain(
    instance: DagsterInstance,
    settings: Settings,
    say: Callable[[str], None] = print,
    max_messages: int | None = None,
    processes: int = 1,
    only: Collection[int] | None = None,
) -> DrainResult:
    """Run the job for each partition with lag until every partition is caught up.

    A partition whose run fails, or succeeds without moving its offset, is not tried again in
    this drain (the sensor retries it). `max_messages` None: the settings' value. `only`
    restricts the drain to those partitions; with processes > 1 the runs' lines are printed by
    the worker processes as they finish. On SIGTERM or SIGINT the drain stops (see the module
    docstring), says what it finished and returns with `signal` set.
    """
    limit = settings.max_messages if max_messages is None else max_messages
    if limit < 1:
        raise ValueError(f"max_messages must be at least 1, not {limit}: a run of no offsets "
                         "would be followed by the same run forever.")
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes}.")
    settings = replace(settings, max_messages=limit)  # every run's config: backlog.launch_request
    # One Cassandra connection for all the runs of this process, shut down when it ends.
    with _StopSignals() as stop, keep_connections():
        result = _drain(instance, settings, say, processes, only, stop)
    if result.signal:
        say(result.stop_summary())
    return result


@contextmanager
def _run_resources(settings: Settings) -> Iterator[tuple[dict[str, Any], Any]]:
    """The runs' resources, initialized once for all the runs of this process (and torn down
    after them), and the Kafka resource among them. Given as they are, Dagster would validate
    and copy each configurable resource again for every run, and each run would make its Kafka
    clients and look up the dead-letter topic's size afresh (docs/performance.md)."""
    with dagster.build_resources(build_resources(settings)) as ready:
        yield ({"kafka": ResourceDefinition.hardcoded_resource(ready.kafka),
                "cassandra_io_manager": IOManagerDefinition.hardcoded_io_manager(
                    ready.cassandra_io_manager)},
               ready.kafka)


def _drain(
    instance: DagsterInstance,
    settings: Settings,
    say: Callable[[str], None],
    processes: int,
    only: Collection[int] | None,
    stop: _StopSignals,
) -> DrainResult:
    with _run_resources(settings) as (resources, kafka):
        # The resources' teardown closes the Kafka clients.
        result = DrainResult()
        partitions, new = sync_partitions(instance, kafka)
        if new:
            add_partitions(instance, new)
        if only is not None:
            partitions = [p for p in partitions if p in only]
        if processes > 1:
            kafka.close()
            return _drain_in_workers(instance, settings, partitions, processes, stop)
        done: set[int] = set()  # failed, stalled or skipped: not tried again in this drain
        lag: dict[int, int] = {}  # each partition's latest known lag
        while True:
            if stop.check():
                return _stopped(result, stop, lag, done)
            # Every partition, even when draining some: a new one's hold is on the old ones.
            topic = kafka.claimed_offsets()
            offsets = [o for o in topic if o.partition in partitions]
            lag.update((o.partition, o.lag) for o in offsets)
            pending = [o for o in offsets if o.lag > 0 and o.partition not in done]
            for p, why in _lost(kafka, settings, pending).items():
                result.lost[p] = why
                say(f"partition {p}: not drained: {why}")
                done.add(p)
            pending = [o for o in pending if o.partition not in done]
            if not pending:
                return result
            held = {o.partition: why for o in pending if (why := hold(o, topic))}
            if len(held) == len(pending):
                # Only new partitions whose old partitions' backlog is not in: it failed here,
                # or it is not this drain's (`only`, another worker's share).
                for p, why in sorted(held.items()):
                    result.skipped[p] = why
                    say(f"partition {p}: skipped, {why}")
                return result
            for before in pending:
                p = before.partition
                if p in held:  # its old partitions run first in this pass; the next sees it
                    continue
                if stop.check():
                    return _stopped(result, stop, lag, done)
                if runs_in_flight(instance, p):
                    result.skipped[p] = "a run is queued or in progress in the UI"
                    say(f"partition {p}: skipped, a run is queued or in progress")
                    done.add(p)
                    continue
                kafka.forget_client_errors()
                run = _run_once(instance, resources, before, settings)
                interrupted = stop.check() is not None
                result.runs.append((p, run.ok, run.line))
                say(run.line)
                release_memory()
                after = _offsets_after(kafka, p)
                if after is None:  # the broker went away: what the run did is unknown
                    verdict = FAILED if not run.ok else PROGRESS
                else:
                    lag[p] = after.lag
                    verdict = judge(before, after, run.ok, run.outcome)
                    if after.lag == 0:
                        result.caught_up.add(p)
                if interrupted:
                    result.in_progress[p] = (run.ok, _what_became(run, before, after))
                if verdict == STALLED:
                    assert after is not None
                    why = (f"partition {p}: run {run.run_id} succeeded but the committed offset "
                           f"stayed at {_committed(after)} (lag {after.lag}): stopping on this "
                           "partition; see the run in the UI")
                    result.stalled[p] = why
                    say(why)
                if verdict in (STALLED, FAILED):
                    done.add(p)
                if interrupted:
                    return _stopped(result, stop, lag, done)


def _lost(kafka: Any, settings: Settings, pending: list[PartitionOffsets]) -> dict[int, str]:
    """The pending partitions whose commit Kafka lost, each with its line; none when Cassandra
    does not answer: each run then checks it before reading (and fails, saying why)."""
    try:  # the runs' own connection: keep_connections() shares it
        return lost_partitions(kafka, cassandra_resource(settings), pending)
    except CassandraWriteFailed:
        return {}


def _stopped(
    result: DrainResult, stop: _StopSignals, lag: dict[int, int], done: set[int]
) -> DrainResult:
    result.signal = stop.signal
    ran = {p for p, _, _ in result.runs}
    failed = done | set(result.stalled) | {p for p, ok, _ in result.runs if not ok}
    for p, n in lag.items():
        if n <= 0 or p in failed or p in result.skipped:
            continue
        if p in ran:
            result.lag_left[p] = n
        else:
            result.not_started.add(p)
    return result


def _committed(o: PartitionOffsets) -> str:
    return "none (never committed)" if o.committed is None else str(o.committed)


def _offsets_after(kafka: Any, partition: int) -> PartitionOffsets | None:
    try:
        return kafka.partition_offsets(partition)
    except KafkaUnavailable:
        return None


@dataclass(frozen=True)
class _Run:
    ok: bool
    run_id: str  # short
    outcome: str | None  # the run's OUTCOME_TAG
    line: str


def _what_became(run: _Run, before: PartitionOffsets, after: PartitionOffsets | None) -> str:
    """What the run that was in progress when the signal came did, in a few words."""
    if run.ok and run.outcome == SUPERSEDED:
        return "was superseded (another run committed its range)"
    if after is None:
        return "succeeded" if run.ok else "failed (whether it committed is unknown)"
    moved = after.next_offset > before.next_offset
    if run.ok:
        return f"committed up to {after.committed}" if moved else "committed nothing"
    if moved:
        return f"failed after its commit landed (committed {after.committed})"
    return "failed without committing"


def _run_once(
    instance: DagsterInstance,
    resources: dict,
    offsets: PartitionOffsets,
    settings: Settings,
) -> _Run:
    partition = offsets.partition
    # The sensor's run request for this backlog (its config and range tags), executed here.
    request = launch_request(Launch.of(offsets), settings)
    tags = {
        **request.tags,
        LAUNCHED_BY_TAG: DRAIN,
        # The label of the runs the daemon launches from the code location: the UI lists a
        # job's runs, and the Partitions page its partitions' status, by this tag only (without
        # it a drained partition shows as missing there). "__repository__" is Dagster's name
        # for the repository of a Definitions object.
        REPOSITORY_LABEL_TAG: f"__repository__@{settings.code_location}",
    }
    token = process_token()  # lets the next planner tell if this process was killed
    if token:
        tags[DRAIN_PROCESS_TAG] = token
    result = program_user_info.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        partition_key=request.partition_key,
        resources=resources,
        tags=tags,
        raise_on_error=False,
    )
    run_id = result.run_id[:8]
    stored = instance.get_run_by_id(result.run_id)  # the tags the run added while it ran
    outcome = stored.tags.get(OUTCOME_TAG) if stored is not None else None
    if not result.success:
        return _Run(False, run_id, outcome,
                    f"partition {partition}: run {run_id} FAILED: {failure_description(result)}")
    if outcome == SUPERSEDED:
        return _Run(True, run_id, outcome, f"partition {partition}: run {run_id} superseded: "
                    "another run committed this range first")
    # What it committed, as its materialization says (a run with no commit has none).
    committed = result.asset_materializations_for_node("commit_offsets")
    what = committed[0].description if committed else f"nothing committed (outcome {outcome})"
    return _Run(True, run_id, outcome, f"partition {partition}: run {run_id} ok: {what}")


def failure_description(result: ExecuteInProcessResult) -> str:
    """Why a run failed, on one line: the step's Failure description, or the error it raised
    (past Dagster's wrapper) with its causes."""
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        data = event.step_failure_data
        user = data.user_failure_data
        if user is not None and user.description:
            return _one_line(user.description)
        if data.error is not None:
            return _one_line(_error_text(data.error))
        return _one_line(event.message or "see the run in the UI")
    for event in result.all_events:
        if event.is_run_failure:
            error = getattr(event.event_specific_data, "error", None)
            return _one_line(_error_text(error) if error is not None else event.message or "")
    return "see the run in the UI"


_INTERRUPTED = "DagsterExecutionInterruptedError"
_QUALIFIED = re.compile(r"^(?:[A-Za-z_][\w]*\.)+(?=[A-Za-z_]\w*(?::|$))")


def _error_text(error: Any) -> str:  # dagster's SerializableErrorInfo
    # Dagster wraps a step's exception ("Error occurred while executing op ..."): the cause is
    # what failed.
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    if error.cls_name == _INTERRUPTED:
        return "interrupted by SIGINT or SIGTERM before it committed"
    text = _QUALIFIED.sub("", error.message.strip())
    cause, depth = error.cause or error.context, 0
    while cause is not None and depth < 3:
        more = _QUALIFIED.sub("", cause.message.strip())
        if more and more not in text:
            text += f" (caused by {more})"
        cause, depth = cause.cause, depth + 1
    return text


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _drain_in_workers(
    instance: DagsterInstance,
    settings: Settings,
    partitions: list[int],
    processes: int,
    stop: _StopSignals,
) -> DrainResult:
    """Split the partitions round-robin over worker processes; each drains its own.

    A stop signal is forwarded to the workers (each stops as a drain does) and they are waited
    for; their results are merged.
    """
    if not instance.is_persistent:
        raise ValueError("A drain in several processes needs a persistent instance "
                         "(set DAGSTER_HOME).")
    shares = [partitions[i::processes] for i in range(processes)]
    shares = [share for share in shares if share]
    result = DrainResult()
    if not shares or stop.check():
        result.signal = stop.signal
        return result
    # spawn: a forked child would inherit the parent's Kafka and gRPC client threads.
    context = multiprocessing.get_context("spawn")
    workers: dict[Any, tuple[Any, list[int]]] = {}  # result connection -> (process, share)
    for share in shares:
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker, args=(instance.get_ref(), settings, share, send),
            name=f"drain-worker-{'-'.join(map(str, share))}",
        )
        process.start()
        send.close()
        workers[receive] = (process, share)
    forwarded = False
    errors: list[BaseException] = []
    waiting = dict(workers)
    while waiting:
        if not forwarded and stop.check():
            for process, _ in waiting.values():
                if process.is_alive() and process.pid is not None:
                    os.kill(process.pid, stop.signal or signal.SIGTERM)
            forwarded = True
        watched: list[Any] = list(waiting)
        fd = stop.fileno()
        if fd is not None and not forwarded:
            watched.append(fd)
        for ready in multiprocessing.connection.wait(watched):
            if ready == fd:
                continue
            process, share = waiting.pop(ready)
            try:
                kind, payload = ready.recv()
            except EOFError:
                process.join()
                if forwarded:  # stopped before it ran anything (still starting up)
                    result.not_started.update(share)
                    continue
                errors.append(RuntimeError(
                    f"drain worker {process.pid} (partitions {share}) died with exit code "
                    f"{process.exitcode} before reporting"
                ))
                continue
            if kind == "error":
                errors.append(payload)
            else:
                result.merge(payload)
    for process, _ in workers.values():
        process.join()
    result.signal = result.signal or stop.check()
    if errors:
        raise errors[0]
    return result


def _worker(
    ref: Any,  # dagster's InstanceRef (not exported publicly)
    settings: Settings,
    partitions: list[int],
    report: Any,  # the sending end of a multiprocessing Pipe
) -> None:
    # A process group of its own: the parent forwards stop signals, so a terminal's Ctrl-C
    # (sent to the whole foreground group) does not reach the worker twice.
    os.setpgrp()
    client_logs.install()
    try:
        with DagsterInstance.from_ref(ref) as instance, \
                _StopSignals(watch_parent=True) as stop, keep_connections():
            hold_connections(instance)
            result = _drain(instance, settings, lambda line: print(line, flush=True), 1,
                            partitions, stop)
        report.send(("ok", result))
    except BaseException as exc:  # reported to the parent, which raises it
        try:
            report.send(("error", exc))
        except Exception:  # not picklable
            report.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        report.close()
