"""Drain every partition's backlog by executing the job in this process, on the UI's instance.

For cron jobs, scripts and tests: the runs show in the UI like the sensor's, a partition whose
run is queued or in progress there is skipped with a message, and the caller learns whether
any run failed. With processes > 1 the partitions are split over that many worker processes,
each executing its partitions' runs one after another (parallel runs, one per partition at a
time, as the daemon's run queue allows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import multiprocessing
from collections.abc import Callable, Collection
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dagster import DagsterInstance
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG  # not exported publicly

from .backlog import DRAIN_PROCESS_TAG, process_token, runs_in_flight, sync_partitions
from .jobs import END_TAG, START_TAG, kafka_partitions, program_user_info
from .resources import build_resources
from .settings import Settings


@dataclass
class DrainResult:
    runs: list[tuple[int, bool, str]] = field(default_factory=list)  # partition, ok, line
    skipped: dict[int, str] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(1 for _, ok, _ in self.runs if not ok)


def drain(
    instance: DagsterInstance,
    settings: Settings,
    say: Callable[[str], None] = print,
    max_messages: int | None = None,
    processes: int = 1,
    only: Collection[int] | None = None,
) -> DrainResult:
    """Run the job for each partition with lag until every partition is caught up.

    A partition whose run fails is not tried again in this drain (the sensor retries it).
    `only` restricts the drain to those partitions; with processes > 1 the runs' lines are
    printed by the worker processes as they finish.
    """
    resources = build_resources(settings)
    kafka = resources["kafka"]
    result = DrainResult()
    try:
        partitions, new = sync_partitions(instance, kafka)
        if new:
            instance.add_dynamic_partitions(kafka_partitions.name or "", new)
        if only is not None:
            partitions = [p for p in partitions if p in only]
        if processes > 1:
            kafka.close()
            return _drain_in_workers(instance, settings, partitions, max_messages, processes)
        done: set[int] = set()
        while True:
            pending = [
                o for o in kafka.offsets(partitions) if o.lag > 0 and o.partition not in done
            ]
            if not pending:
                return result
            for o in pending:
                if runs_in_flight(instance, o.partition):
                    result.skipped[o.partition] = "a run is queued or in progress in the UI"
                    say(f"partition {o.partition}: skipped, a run is queued or in progress")
                    done.add(o.partition)
                    continue
                ok, line = _run_once(instance, resources, o.partition, o.next_offset, o.high,
                                     max_messages or settings.max_messages,
                                     settings.code_location)
                result.runs.append((o.partition, ok, line))
                say(line)
                _release_memory()
                if not ok:
                    done.add(o.partition)
    finally:
        kafka.close()


def _run_once(
    instance: DagsterInstance,
    resources: dict,
    partition: int,
    start: int,
    end: int,
    max_messages: int,
    code_location: str,
) -> tuple[bool, str]:
    run_config = {
        "ops": {"flatten_events": {"config": {"end_offset": end, "max_messages": max_messages}}}
    }
    tags = {
        START_TAG: str(start),
        END_TAG: str(end),
        "programuser/launched_by": "drain",
        # The label of the runs the daemon launches from the code location: the UI lists a
        # job's runs, and the Partitions page its partitions' status, by this tag only (without
        # it a drained partition shows as missing there). "__repository__" is Dagster's name
        # for the repository of a Definitions object.
        REPOSITORY_LABEL_TAG: f"__repository__@{code_location}",
    }
    token = process_token()  # lets the next planner tell if this process was killed
    if token:
        tags[DRAIN_PROCESS_TAG] = token
    result = program_user_info.execute_in_process(
        run_config=run_config,
        instance=instance,
        partition_key=str(partition),
        resources=resources,
        tags=tags,
        raise_on_error=False,
    )
    run_id = result.run_id[:8]
    if not result.success:
        failure = next(
            (e for e in result.all_events if e.is_step_failure or e.is_failure), None
        )
        why = failure.message if failure is not None else "see the run in the UI"
        return False, f"partition {partition}: run {run_id} FAILED: {why}"
    report = result.output_for_node("flatten_events", "report")
    return True, f"partition {partition}: run {run_id} ok: {report.describe()}"


def _drain_in_workers(
    instance: DagsterInstance,
    settings: Settings,
    partitions: list[int],
    max_messages: int | None,
    processes: int,
) -> DrainResult:
    """Split the partitions round-robin over worker processes; each drains its own."""
    if not instance.is_persistent:
        raise ValueError("A drain in several processes needs a persistent instance "
                         "(set DAGSTER_HOME).")
    shares = [partitions[i::processes] for i in range(processes)]
    shares = [share for share in shares if share]
    result = DrainResult()
    if not shares:
        return result
    # spawn: a forked child would inherit the parent's Kafka and gRPC client threads.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(shares), mp_context=context) as pool:
        futures = [
            pool.submit(_worker, instance.get_ref(), settings, share, max_messages)
            for share in shares
        ]
        for future in futures:
            part = future.result()
            result.runs += part.runs
            result.skipped.update(part.skipped)
    return result


def _worker(
    ref: Any,  # dagster's InstanceRef (not exported publicly)
    settings: Settings,
    partitions: list[int],
    max_messages: int | None,
) -> DrainResult:
    with DagsterInstance.from_ref(ref) as instance:
        return drain(instance, settings, say=lambda line: print(line, flush=True),
                     max_messages=max_messages, only=partitions)


def _release_memory() -> None:
    """Give a finished run's memory back to the system before the next run.

    A run's messages, rows and DataFrame are garbage once it ends, but glibc keeps the freed
    heap and Python's arenas fragment: without this a long drain's RSS grows run after run.
    """
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


_LIBC = _glibc()
