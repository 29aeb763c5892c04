"""The job `program_user_info`: one Kafka partition's offset range per run, in two steps.

flatten_events: read the partition's committed state (offset and fence token) and plan the
    range [start, end); hand the range, as RangeRows, to the Cassandra IO manager, which reads
    and flattens it chunk by chunk as it writes (range_rows.py) and stores the range's report.
commit_offsets: load that report through the IO manager (in this process, or in another when
    the step is re-executed) and, in one Kafka transaction fenced against every other committer
    of the partition, deliver the dead letters, check the accounting, and commit `end` only if
    the committed state is still the one flatten_events read; otherwise the run is superseded.

Message content stays in memory inside the RangeRows and the IO manager (it is personal data);
only the report (offsets, counts and reasons) crosses from one step to the next, and the commit
step re-reads from Kafka the few messages it dead-letters.
"""


import socket
import time
from collections.abc import Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetMaterialization,
    DynamicPartitionsDefinition,
    Failure,
    In,
    JobDefinition,
    OpExecutionContext,
    Out,
    ResourceParam,
    in_process_executor,
    job,
    op,
)

from ..cassandra.client import CassandraWriteFailed
from ..cassandra.io_manager import CassandraIOManager
from ..cassandra.kept_commits import keep_commit
from ..core.clock import WriteClock, now_us
from ..core.clock_skew import skew_refusal
from ..core.event_ages import lag_seconds
from ..core.growth import hold, start_clock
from ..core.offsets import PartitionOffsets
from ..core.report import RangeReport
from ..kafka.resource import (
    CommitState,
    CommitUnknown,
    KafkaResource,
    KafkaUnavailable,
    Superseded,
)
from ..names import PARTITIONS_NAME
from ..settings import DEFAULTS, MAX_RANGE_MESSAGES, Settings
from .assets import ACCOUNTING_CHECK, JOB_NAME, PROGRAM_ENROLLMENT
from .commit_plan import (
    Stop,
    committed_clock,
    committed_message,
    dead_letter_summary,
    letter_times,
    plan_commit,
    superseded,
)
from .fault_pauses import (
    PAUSE_BEFORE_COMMIT_ENV,
    PAUSE_BEFORE_FENCE_ENV,
    PAUSE_BEFORE_WRITE_ENV,
    pause,
)
from .interrupts import DeferredSignals, interrupts_deferred
from .offset_retention import refusal
from .range_rows import Chunking, RangeRows
from .run_config import IngestConfig, run_config
from .run_tags import (
    COMMITTED,
    DRAIN,
    END_TAG,
    LAUNCHED_BY_TAG,
    OUTCOME_TAG,
    START_TAG,
    START_TOKEN_TAG,
)

# One dynamic partition per Kafka partition of the input topic ("0", "1", ...).
kafka_partitions = DynamicPartitionsDefinition(name=PARTITIONS_NAME)



def _not_committed(context: OpExecutionContext) -> str:
    """What becomes of a range whose run failed, in the words of whoever launched it."""
    if context.run.tags.get(LAUNCHED_BY_TAG) == DRAIN:
        return (
            "drain does not retry a failed range. Run `programuser-dagster drain` again once "
            "the cause is fixed, or re-execute this run from the UI (the sensor also retries "
            "it, after a back-off, if it is running)."
        )
    return ("The sensor retries this range after a back-off, or re-execute this run from the "
            "UI once the cause is fixed.")


@op(
    out={
        "rows": Out(
            RangeRows,
            io_manager_key="cassandra_io_manager",
            description="The range's flattened rows, one DataFrame per chunk and one row per "
            "(program, user) in it, read as the IO manager upserts them; with the range's "
            "report, which the IO manager stores for the commit step.",
        ),
    },
)
def flatten_events(
    context: OpExecutionContext, config: IngestConfig, kafka: KafkaResource,
    cassandra_io_manager: ResourceParam[CassandraIOManager],
) -> RangeRows:
    """Plan one partition's range from its committed state, and hand it to the IO manager; a
    partition added to the topic reads nothing while it is held (core/growth.py), and a
    partition whose commit Kafka lost is refused (core/kept_commit.py)."""
    # A daemon-launched run's process otherwise opens a PostgreSQL connection for every event it
    # stores (docs/performance.md: the cost of a run). Imported here: instance.py imports this.
    from .instance import hold_connections

    hold_connections(context.instance)
    partition = int(context.partition_key)
    # Re-read on every (re-)execution: never process records below the committed offset, so a
    # stale run re-executed after newer ones cannot overwrite newer values. The state read
    # here is what the commit is fenced on.
    try:
        offsets, refused = refusal(kafka, cassandra_io_manager.cassandra, partition,
                                   lambda: kafka.partition_offsets(partition))
    except CassandraWriteFailed as exc:
        raise Failure(description=f"{exc} {_not_committed(context)}") from exc
    if refused:
        raise Failure(description=refused)
    count = len(kafka.partitions())
    held, committed_clock = None, offsets.clock
    if offsets.partitions != count or offsets.barrier:
        # The topic grew since this partition's commit, or this is its first run, or it is a
        # new partition's: claim what was added (so the count this run records is safe) and
        # check the hold, whoever launched the run (core/growth.py).
        topic = kafka.claimed_offsets()
        offsets = topic[[o.partition for o in topic].index(partition)]
        held, committed_clock = hold(offsets, topic), start_clock(offsets, topic)
        count = len(topic)
    start = offsets.next_offset
    end = offsets.high if config.end_offset is None else min(config.end_offset, offsets.high)
    end = max(start, min(end, start + config.max_messages))
    now = now_us()
    report = RangeReport(
        partition=partition,
        start=start,
        end=end,
        high_watermark=offsets.high,
        committed_before=offsets.committed,
        token_before=offsets.token,
        clock_before=offsets.clock,
        # From the same read that fixed the start: see core/clock.py.
        write_base=WriteClock.starting(start, committed_clock, now).base,
        held=held,
        partitions=count,
    )
    # Tag the run with the range it really reads, however it was launched, for the UI and for
    # the sensor's count of failed attempts at a start offset.
    context.instance.add_run_tags(
        context.run_id,
        {START_TAG: str(start), START_TOKEN_TAG: str(offsets.token), END_TAG: str(end)},
    )
    on_failure = _not_committed(context)
    if held:
        return RangeRows.nothing(report, on_failure)
    if (config.end_offset is not None and offsets.committed is not None
            and offsets.committed >= config.end_offset):
        # Requested for a range another run committed since (a late launch, a second trigger).
        report.superseded = (
            f"Partition {partition} is already committed at {offsets.committed}, at or past "
            f"the end {config.end_offset} this run was launched for: another run committed "
            "its range first. Nothing to do."
        )
        return RangeRows.nothing(report, on_failure)
    if offsets.lost_to_retention:
        assert offsets.committed is not None  # lost only past a committed offset
        report.lose(offsets.committed, offsets.low)
        context.log.warning(
            f"{offsets.lost_to_retention} records of partition {partition} were deleted by "
            f"retention before they were read (committed {offsets.committed}, oldest retained "
            f"{offsets.low})."
        )
    if end > start:
        skewed = _clock_skew(kafka, offsets, now, config.clock_skew_max_s)
        if skewed:
            raise Failure(description=f"{skewed} {on_failure}")
    context.log.info(f"Reading partition {partition} offsets [{start}, {end}).")
    chunking = Chunking(config.chunk_messages, config.chunk_bytes, config.dead_letter_bytes)
    pause(context, PAUSE_BEFORE_WRITE_ENV, "before the writes")
    return RangeRows(kafka, report, chunking, on_failure)


@op(
    ins={"report": In(RangeReport, description="What flatten_events' range read and wrote, "
                      "as the Cassandra IO manager recorded it.")},
    out={},
)
def commit_offsets(
    context: OpExecutionContext, report: RangeReport, kafka: KafkaResource,
    cassandra_io_manager: ResourceParam[CassandraIOManager],
) -> Iterator[AssetCheckEvaluation | AssetMaterialization]:
    """Deliver the dead letters, check that every message is accounted for, then commit `end`:
    one transaction, fenced against every other committer of the partition. The decisions are
    commit_plan.py's; this is their wiring to Kafka, the run's tags and its log."""
    plan = plan_commit(report, _not_committed(context))
    if plan.failure:
        raise Failure(description=plan.failure)
    if plan.end_tag is not None:
        context.instance.add_run_tags(context.run_id, {END_TAG: str(plan.end_tag)})
    for warning in plan.warnings:
        context.log.warning(warning)
    if plan.stop:
        _stop(context, plan.stop)
        return
    _, warnings = kafka.dead_letter_room()
    for warning in warnings:
        context.log.warning(warning)
    pause(context, PAUSE_BEFORE_FENCE_ENV, "before the fence")
    expected = CommitState(report.committed_before, report.token_before)
    committed: CommitState | None = None
    held = DeferredSignals()
    try:
        # A SIGTERM or SIGINT from here on is held to the end: the writes are acknowledged, so
        # the run commits (or is refused) rather than leaving the transaction half done.
        # Nothing is yielded inside: Dagster re-installs its raising handler on every resume.
        with interrupts_deferred(held), kafka.fenced_commit(report.partition, expected) as txn:
            clock, write_time = letter_times(report)
            report.dead_lettered = txn.deliver(report.dead_letters, write_time=write_time)
            if report.balanced:
                pause(context, PAUSE_BEFORE_COMMIT_ENV, "before the commit")
                committed = txn.commit(report.end, clock=committed_clock(clock, report, now_us()),
                                       partitions=report.partitions, barrier=())
            # Unbalanced: the block is left without commit(), so the transaction aborts.
    except Superseded as exc:
        _stop(context, superseded(str(exc)))
        return
    except CommitUnknown as exc:  # not "not committed": it may have been (the message says)
        raise Failure(description=f"{exc} If it was not: {_not_committed(context)}",
                      metadata=report.metadata()) from exc
    except KafkaUnavailable as exc:
        raise Failure(description=f"{exc} {_uncommitted(context, report)}",
                      metadata=report.metadata()) from exc
    finally:
        if held.received:
            context.log.warning(f"{held.names()} arrived during the commit and was held until "
                                "its transaction ended.")
    # Yielded (not logged) so that the check's result is recorded before a failure below.
    yield AssetCheckEvaluation(
        asset_key=PROGRAM_ENROLLMENT,
        check_name=ACCOUNTING_CHECK,
        passed=report.balanced,
        severity=AssetCheckSeverity.ERROR,
        metadata=report.metadata(),
        description=None if report.balanced else report.imbalance(),
    )
    if committed is None:
        raise Failure(
            description=f"Accounting does not balance: {report.imbalance()}. "
            + _uncommitted(context, report),
            metadata=report.metadata(),
        )
    context.instance.add_run_tags(context.run_id, {OUTCOME_TAG: COMMITTED})
    keep_commit(cassandra_io_manager.cassandra, kafka.group_id, kafka.input_topic, txn.kept,
                context.log.warning)
    summary = dead_letter_summary(report, kafka.dlq_topic)
    if summary:
        context.log.warning(summary)
    # Best effort: the range is committed whatever the broker answers now.
    try:
        lag = lag_left(kafka, report.partition, report.end)
    except KafkaUnavailable as exc:
        lag = {}
        context.log.warning(f"Committed, but the lag left is unknown: {exc}")
    context.log.info(committed_message(report, lag, committed.token))
    yield AssetMaterialization(
        PROGRAM_ENROLLMENT,
        description=report.describe(),
        metadata={**report.metadata(), "committed_offset": report.end, **lag},
    )


def _clock_skew(kafka: KafkaResource, offsets: PartitionOffsets, now: int,
                bound_s: float) -> str | None:
    """Why this host's clock must not write the range (core/clock_skew.py), before any write: it is
    compared with the committed clock and with the broker's append time of the range's first
    record (only a topic with LogAppendTime has one)."""
    partition = offsets.partition
    appended = kafka.record_times({partition: offsets.next_offset}, appended_only=True)
    return skew_refusal(
        partition=partition, host=socket.gethostname(), now_us=now,
        bound_us=round(bound_s * 1_000_000), committed_clock_us=offsets.clock,
        committed_by=offsets.clock_host, lead_allowed_us=MAX_RANGE_MESSAGES,
        append_times_ms=[t for t in (appended.get(partition),) if t is not None])


def lag_left(kafka: KafkaResource, partition: int, committed: int) -> dict[str, int | float]:
    """The partition's lag past `committed`: records, and the age of the oldest of them (s)."""
    high = kafka.partition_offsets(partition).high
    lag: dict[str, int | float] = {"lag_left": max(0, high - committed)}
    oldest = kafka.record_times({partition: committed}).get(partition) if high > committed \
        else None
    if high > committed and oldest is None:
        return lag  # its record's time did not arrive: unknown, not 0 s
    seconds, clamped = lag_seconds(oldest, time.time_ns() // 1_000_000)
    lag["lag_left_s"] = round(seconds, 3)
    if clamped:
        lag["lag_left_s_clamped"] = 1
    return lag


def _uncommitted(context: OpExecutionContext, report: RangeReport) -> str:
    return (f"Offset {report.start} of partition {report.partition} was not committed. "
            + _not_committed(context))


def _stop(context: OpExecutionContext, stop: Stop) -> None:
    """End the run before (or at) the fence, as commit_plan decided: its outcome tag, its word."""
    if stop.outcome:
        context.instance.add_run_tags(context.run_id, {OUTCOME_TAG: stop.outcome})
    if stop.warn:
        context.log.warning(stop.message)
    else:
        context.log.info(stop.message)


def build_job(settings: Settings) -> JobDefinition:
    """The job, with the settings' limits as its default config (what the Launchpad and a
    backfill from the UI start from; the sensor, schedule and drain pass the same)."""

    @job(
        name=JOB_NAME,
        partitions_def=kafka_partitions,
        # Short runs: every step in the run's one process, no process per step.
        executor_def=in_process_executor,
        config=run_config(settings),
        description="Drain one Kafka partition's offset range into Cassandra, then commit it.",
    )
    def program_user_info() -> None:
        commit_offsets(report=flatten_events())

    return program_user_info


# With the code's defaults, for callers that pass every run its config (drain: from its
# settings, with backlog.launch_request) and for tests; the code location builds its own.
program_user_info = build_job(DEFAULTS)
