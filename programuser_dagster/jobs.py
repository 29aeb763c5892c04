"""The job `program_user_info`: one Kafka partition's offset range per run.

flatten_events: read the committed state (offset and fence token); read [start, end) and
    flatten it chunk by chunk, each while the Cassandra IO manager's last writes of the previous
    chunk are in flight.
commit_offsets: in one Kafka transaction fenced against every other committer of the partition,
    deliver the dead letters, check the accounting, and commit `end` only if the partition's
    committed state is still the one flatten_events read; otherwise the run is superseded.

Message content stays in memory inside flatten_events and the IO manager (it is personal data);
only the RangeReport (offsets, counts and reasons) passes through the default IO manager to the
commit step, which re-reads the few messages it dead-letters from Kafka.
"""


import gc
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetMaterialization,
    Config,
    DagsterEventType,
    DagsterType,
    DynamicPartitionsDefinition,
    Failure,
    In,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from .accounting import RangeReport
from .assets import ACCOUNTING_CHECK, JOB_NAME, PROGRAM_ENROLLMENT
from .events import Reject, flatten
from .interrupts import DeferredSignals, interrupts_deferred
from .resources.cassandra import WriteReceipt
from .resources.kafka import CommitState, KafkaResource, KafkaUnavailable, Message, Superseded

START_TAG = "programuser/start_offset"
END_TAG = "programuser/end_offset"
# The fence token of the committed state the run started from: with START_TAG, which attempts
# at one committed state a run is (backlog.py counts the failed ones for its back-off).
START_TOKEN_TAG = "programuser/start_token"
# How a run that succeeded ended: "committed"; "superseded" when another run of the partition
# committed first and this run's commit was refused (it committed nothing); "no_progress" when
# its range was empty though the partition has records (a bug or a bad setting: the sensor
# counts it as a failed attempt, drain stops on the partition).
OUTCOME_TAG = "programuser/outcome"
COMMITTED = "committed"
SUPERSEDED = "superseded"
NO_PROGRESS = "no_progress"
# Who launched a run ("drain"; unset for the daemon's and the UI's runs).
LAUNCHED_BY_TAG = "programuser/launched_by"
# One dynamic partition per Kafka partition of the input topic ("0", "1", ...).
kafka_partitions = DynamicPartitionsDefinition(name="kafka_partitions")

# Test-only fault hooks, unset in production: seconds to sleep after the writes and dead
# letters, before the commit (a test kills the run's process at exactly that point), and
# before the fence (between the start read and the commit: two committers interleave there).
PAUSE_BEFORE_COMMIT_ENV = "PROGRAMUSER_TEST_PAUSE_BEFORE_COMMIT_S"
PAUSE_BEFORE_FENCE_ENV = "PROGRAMUSER_TEST_PAUSE_BEFORE_FENCE_S"


class IngestConfig(Config):
    chunk_messages: int = Field(
        default=10_000,
        description="Messages flattened and written together: a run holds a few chunks. Big "
        "enough that a chunk's rows of one program fill the per-program batches.",
    )
    end_offset: int | None = Field(
        default=None,
        description="Exclusive end of the range (the sensor sets the high-water mark it saw). "
        "Unset: the partition's current high-water mark.",
    )
    # 100,000: a run holds a chunk or two of chunk_messages, whatever its range, so this bounds
    # a run's length (~15 s here), not its memory; large enough that Dagster's fixed cost per
    # run (~1 s of sqlite event-log work here) stays a small share, and a retry repeats at most
    # this much work.
    max_messages: int = Field(
        default=100_000,
        gt=0,
        description="At most this many offsets per run (a run's memory is bounded by its "
        "chunks, not by this).",
    )
    # A chunk is also cut at this many bytes of message values, so a backlog of records near
    # the 5 MiB limit holds ~64 MiB, not chunk_messages x 5 MiB.
    chunk_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="At most about this many bytes of message values per chunk.",
    )
    # The commit step sends a run's dead letters in one transaction, which must end within
    # transaction.timeout.ms (KAFKA_DELIVERY_TIMEOUT_S + 30 s): a run stops reading at the
    # chunk where its letters reach this many bytes, and the next run goes on from there.
    dead_letter_bytes: int = Field(
        default=256 * 1024 * 1024,
        gt=0,
        description="A run ends its range early once its dead letters reach about this many "
        "bytes (the rest is the next run's).",
    )


# The rows output: DataFrames produced while the IO manager consumes them (see _RangeStream).
RowChunks = DagsterType(
    name="RowChunks",
    type_check_fn=lambda _context, value: isinstance(value, Iterator),
    description="An iterator of pandas DataFrames of flattened rows, one per chunk of a range.",
)


def _not_committed(context: OpExecutionContext, report: RangeReport) -> str:
    """What happens to a range whose run failed, in the words of whoever launched it."""
    head = f"Offset {report.start} of partition {report.partition} was not committed"
    if context.run.tags.get(LAUNCHED_BY_TAG) == "drain":
        return (
            f"{head}: drain does not retry a failed range. Run `programuser-dagster drain` "
            "again once the cause is fixed, or re-execute this run from the UI (the sensor "
            "also retries it, after a back-off, if it is running)."
        )
    return (
        f"{head}: the sensor retries this range after a back-off, or re-execute this run "
        "from the UI once the cause is fixed."
    )


@op(
    out={
        "rows": Out(
            RowChunks,
            io_manager_key="cassandra_io_manager",
            description="Flattened rows, one DataFrame per chunk of the range and one row per "
            "(program, user) in it; upserted by the IO manager as they are produced.",
        ),
        "report": Out(RangeReport, description="Offsets and counts of the range."),
    },
)
def flatten_events(
    context: OpExecutionContext, config: IngestConfig, kafka: KafkaResource
) -> Iterator[Output]:
    """Read one partition's range, flatten it and write the rows; report what to dead-letter."""
    partition = int(context.partition_key)
    # Re-read on every (re-)execution: never process records below the committed offset, so a
    # stale run re-executed after newer ones cannot overwrite newer values. The state read
    # here is what the commit is fenced on.
    offsets = kafka.partition_offsets(partition)
    start = offsets.next_offset
    end = offsets.high if config.end_offset is None else min(config.end_offset, offsets.high)
    end = max(start, min(end, start + config.max_messages))
    report = RangeReport(
        partition=partition,
        start=start,
        end=end,
        high_watermark=offsets.high,
        lost_to_retention=offsets.lost_to_retention,
        committed_before=offsets.committed,
        token_before=offsets.token,
    )
    # Tag the run with the range it really reads, however it was launched, for the UI and for
    # the sensor's count of failed attempts at a start offset.
    context.instance.add_run_tags(
        context.run_id,
        {START_TAG: str(start), START_TOKEN_TAG: str(offsets.token), END_TAG: str(end)},
    )
    if (config.end_offset is not None and offsets.committed is not None
            and offsets.committed >= config.end_offset):
        # Requested for a range another run committed since (a late launch, a second trigger).
        report.superseded = (
            f"Partition {partition} is already committed at {offsets.committed}, at or past "
            f"the end {config.end_offset} this run was launched for: another run committed "
            "its range first. Nothing to do."
        )
        yield Output(iter(()), "rows", metadata=_batch_metadata(context, report))
        yield Output(report, "report", metadata=report.metadata())
        return
    if offsets.lost_to_retention:
        context.log.warning(
            f"{offsets.lost_to_retention} records of partition {partition} were deleted by "
            f"retention before they were read (committed {offsets.committed}, oldest retained "
            f"{offsets.low})."
        )
    context.log.info(f"Reading partition {partition} offsets [{start}, {end}).")

    # The range is read, flattened and written in chunks: the next chunk is flattened while the
    # IO manager's last writes of the previous one are in flight, and a run holds a chunk or
    # two, not the range. Of the rejects only offsets and reasons are kept.
    stream = _RangeStream(kafka, partition, start, end, config.chunk_messages, config.chunk_bytes,
                          config.dead_letter_bytes)
    with _gc_paused():
        yield Output(stream.frames(), "rows", metadata=_batch_metadata(context, report))
    if not stream.finished:
        raise RuntimeError("The Cassandra IO manager did not write every chunk of the range.")
    if stream.end < end:
        report.end = stream.end
        context.instance.add_run_tags(context.run_id, {END_TAG: str(stream.end)})
        context.log.warning(
            f"Partition {partition}: the range ends at {stream.end}, not {end}: its dead letters "
            f"reached {stream.letter_bytes} bytes, as many as one commit sends; the next run "
            "goes on from there."
        )
    report.read = stream.read
    report.skipped = dict(Counter(r.reason for r in stream.rejects if r.outcome == "skipped"))
    receipt = _write_receipt(context)
    report.written = receipt.messages_written
    report.rows_upserted = receipt.rows_upserted
    report.dead_letters = [(r.offset, r.reason) for r in stream.rejects
                           if r.outcome == "dead_lettered"]
    report.dead_letters += [(o, "rejected_by_cassandra") for o in receipt.rejected_offsets]
    yield Output(report, "report", metadata=report.metadata())


def _batch_metadata(context: OpExecutionContext, report: RangeReport) -> dict[str, str]:
    # The IO manager echoes these in its failure message.
    return {
        "batch": f"partition {report.partition} offsets [{report.start}, {report.end})",
        "if_not_written": _not_committed(context, report),
    }


class _RangeStream:
    """One partition's [start, end) as DataFrames of flattened rows, one per chunk, produced as
    the IO manager asks for them (it asks for the next while the last writes of this one are in
    flight); counts what it read and keeps the rejects (offsets and reasons)."""

    def __init__(
        self, kafka: KafkaResource, partition: int, start: int, end: int, chunk: int,
        chunk_bytes: int, dead_letter_bytes: int,
    ) -> None:
        self.kafka, self.partition, self.start, self.end = kafka, partition, start, end
        self.chunk = max(1, chunk)
        self.chunk_bytes = max(1, chunk_bytes)
        self.max_letter_bytes = dead_letter_bytes
        self.read = 0
        self.letter_bytes = 0  # of the values to dead-letter so far
        self.rejects: list[Reject] = []
        self.finished = False

    def frames(self) -> Iterator[pd.DataFrame]:
        # Not in a thread: flattening is pure Python, and a thread holding the GIL delays the
        # driver's I/O thread so much that a run took ~25% longer (make bench).
        pending: list[Message] = []
        pending_bytes = 0
        # Nothing is written before the first chunk is flattened: a small first chunk starts
        # Cassandra's work sooner (~0.25 s a run here), the rest come in full chunks, whatever
        # each fetch returned.
        size, limit = max(1, self.chunk // 5), max(1, self.chunk_bytes // 5)
        for messages in self.kafka.iter_range(self.partition, self.start, self.end,
                                              batch_size=self.chunk):
            for m in messages:
                pending.append(m)
                pending_bytes += len(m.value() or b"")
                if len(pending) >= size or pending_bytes >= limit:
                    yield self._flatten(pending)
                    if self.letter_bytes >= self.max_letter_bytes:
                        # Ends here: the chunk's last offset, not the rest of this fetch.
                        self.end = pending[-1].offset() + 1
                        self.finished = True
                        return
                    pending, pending_bytes = [], 0
                    size, limit = self.chunk, self.chunk_bytes
        if pending:
            yield self._flatten(pending)
        self.finished = True

    def _flatten(self, messages: list[Message]) -> pd.DataFrame:
        # The cyclic garbage the driver left for the chunks already written (requests and
        # their futures; ~0.5 KB a row) is collected here, chunk by chunk: the run pauses the
        # automatic collector (see _gc_paused), which otherwise keeps it to the end of the run.
        gc.collect()
        self.read += len(messages)
        batch = flatten((m.offset(), m.value()) for m in messages)
        if batch.rejects:
            sizes = {m.offset(): len(m.value() or b"") for m in messages}
            self.letter_bytes += sum(sizes[r.offset] for r in batch.rejects
                                     if r.outcome == "dead_lettered")
            self.rejects += batch.rejects
        return batch.rows


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No automatic cyclic garbage collection while a range is read, flattened and written.

    A chunk creates ~10 containers per event (parsed JSON, rows) that live until it is written,
    in no reference cycle: the automatic passes, triggered by the allocations, only re-scanned
    them, which cost ~25-40% of flattening (make bench: flatten vs json_parse, both with gc
    on). The driver's requests do leave cycles: they are collected once per chunk instead.
    """
    enabled = gc.isenabled()
    gc.disable()
    # Objects older than the run (Dagster's, the modules') are left out of every collection
    # until the run ends, so the collections per chunk only scan the run's own objects.
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


def _write_receipt(context: OpExecutionContext) -> WriteReceipt:
    """What the Cassandra IO manager recorded for this step's `rows` output."""
    step_key = context.get_step_execution_context().step.key
    records = context.instance.get_records_for_run(
        context.run_id, of_type=DagsterEventType.HANDLED_OUTPUT, ascending=False
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or event.step_key != step_key:
            continue
        data = event.event_specific_data
        if getattr(data, "output_name", None) != "rows":
            continue
        md = {k: v.value for k, v in data.metadata.items()}  # type: ignore[union-attr]
        return WriteReceipt(
            rows_upserted=int(md["rows_upserted"]),
            messages_written=int(md["messages_written"]),
            rejected_offsets=[int(o) for o in md["rejected_offsets"]],
        )
    raise RuntimeError("The Cassandra IO manager recorded no write receipt for this step.")


@op(ins={"report": In(RangeReport), "rows": In(Nothing)}, out={})
def commit_offsets(
    context: OpExecutionContext, report: RangeReport, kafka: KafkaResource
) -> Iterator[AssetCheckEvaluation | AssetMaterialization]:
    """Deliver the dead letters, check that every message is accounted for, then commit `end`:
    one transaction, fenced against every other committer of the partition."""
    if report.superseded:
        _superseded(context, report.superseded)
        return
    if report.end <= report.start:
        # Nothing read, nothing to commit: committing would only bump the token. Records left
        # past the start make it no progress (a failed attempt for the sensor's back-off).
        if report.high_watermark > report.start:
            context.instance.add_run_tags(context.run_id, {OUTCOME_TAG: NO_PROGRESS})
            context.log.warning(
                f"Partition {report.partition}: the range [{report.start}, {report.end}) is "
                f"empty though records reach {report.high_watermark}; nothing was committed."
            )
        else:
            context.log.info(f"Partition {report.partition} has nothing past {report.start}.")
        return
    _, warnings = kafka.dead_letter_room()
    for warning in warnings:
        context.log.warning(warning)
    _pause(context, PAUSE_BEFORE_FENCE_ENV, "before the fence")
    expected = CommitState(report.committed_before, report.token_before)
    committed: CommitState | None = None
    held = DeferredSignals()
    try:
        # A SIGTERM or SIGINT from here on is held to the end: the writes are acknowledged, so
        # the run commits (or is refused) rather than leaving the transaction half done.
        # Nothing is yielded inside: Dagster re-installs its raising handler on every resume.
        with interrupts_deferred(held), kafka.fenced_commit(report.partition, expected) as txn:
            report.dead_lettered = txn.deliver(report.dead_letters)
            if report.balanced:
                _pause(context, PAUSE_BEFORE_COMMIT_ENV, "before the commit")
                committed = txn.commit(report.end)
            # Unbalanced: the block is left without commit(), so the transaction aborts.
    except Superseded as exc:
        _superseded(context, str(exc))
        return
    except KafkaUnavailable as exc:
        raise Failure(
            description=f"{exc} {_not_committed(context, report)}", metadata=report.metadata()
        ) from exc
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
            + _not_committed(context, report),
            metadata=report.metadata(),
        )
    context.instance.add_run_tags(context.run_id, {OUTCOME_TAG: COMMITTED})
    if report.dead_letters:
        context.log.warning(
            f"Dead-lettered {report.dead_lettered_total} messages to {kafka.dlq_topic!r}: "
            f"{dict(sorted(report.dead_lettered.items()))}"
        )
    # Best effort: the range is committed whatever the broker answers now.
    try:
        lag: dict[str, int] = {
            "lag_left": max(0, kafka.partition_offsets(report.partition).high - report.end)
        }
    except KafkaUnavailable as exc:
        lag = {}
        context.log.warning(f"Committed, but the lag left is unknown: {exc}")
    context.log.info(
        f"Committed {report.end}: {report.describe()}; lag left "
        f"{lag.get('lag_left', 'unknown')}; fence token {committed.token}."
    )
    yield AssetMaterialization(
        PROGRAM_ENROLLMENT,
        description=report.describe(),
        metadata={**report.metadata(), "committed_offset": report.end, **lag},
    )


def _superseded(context: OpExecutionContext, why: str) -> None:
    """The run ends without committing: not a failure (its range is another run's), and not a
    range in the accounting (no materialization)."""
    context.instance.add_run_tags(context.run_id, {OUTCOME_TAG: SUPERSEDED})
    context.log.warning(f"Superseded: {why}")


def _pause(context: OpExecutionContext, variable: str, where: str) -> None:
    pause = float(os.environ.get(variable) or 0)
    if pause > 0:
        context.log.warning(f"Test fault hook {variable}: pausing {pause}s {where}.")
        time.sleep(pause)


@job(
    name=JOB_NAME,
    partitions_def=kafka_partitions,
    # Short runs: every step in the run's one process, no process per step.
    executor_def=in_process_executor,
    description="Drain one Kafka partition's offset range into Cassandra, then commit it.",
)
def program_user_info() -> None:
    rows, report = flatten_events()
    commit_offsets(report=report, rows=rows)
