"""The job `program_user_info`: one Kafka partition's offset range per run.

flatten_events: re-read the committed offset; read [start, end) and flatten it chunk by chunk,
    each while the Cassandra IO manager's last writes of the previous chunk are in flight; then
    deliver the dead letters.
commit_offsets: check the accounting and only then commit `end`.

Message content stays in memory inside flatten_events and the IO manager (it is personal data);
only the RangeReport (offsets and counts) passes through the default IO manager to the commit
step.
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
from .resources.cassandra import WriteReceipt
from .resources.kafka import DeadLetter, KafkaResource, Message

START_TAG = "programuser/start_offset"
END_TAG = "programuser/end_offset"
# One dynamic partition per Kafka partition of the input topic ("0", "1", ...).
kafka_partitions = DynamicPartitionsDefinition(name="kafka_partitions")

# Test-only fault hook: seconds to sleep after the writes and dead letters, before the commit,
# so a test can kill the run's process at exactly that point. Unset in production.
PAUSE_BEFORE_COMMIT_ENV = "PROGRAMUSER_TEST_PAUSE_BEFORE_COMMIT_S"


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
        description="At most this many offsets per run (a run's memory is bounded by its "
        "chunks, not by this).",
    )


# The rows output: DataFrames produced while the IO manager consumes them (see _RangeStream).
RowChunks = DagsterType(
    name="RowChunks",
    type_check_fn=lambda _context, value: isinstance(value, Iterator),
    description="An iterator of pandas DataFrames of flattened rows, one per chunk of a range.",
)


def _not_committed(report: RangeReport) -> str:
    return (
        f"Offset {report.start} of partition {report.partition} was not committed: the sensor "
        "will retry this range, or re-execute this run from the UI."
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
    """Read one partition's range, flatten it, write the rows, deliver the dead letters."""
    partition = int(context.partition_key)
    # Re-read on every (re-)execution: never process records below the committed offset, so a
    # stale run re-executed after newer ones cannot overwrite newer values.
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
    )
    if offsets.lost_to_retention:
        context.log.warning(
            f"{offsets.lost_to_retention} records of partition {partition} were deleted by "
            f"retention before they were read (committed {offsets.committed}, oldest retained "
            f"{offsets.low})."
        )
    # Tag the run with the range it really reads, however it was launched, for the UI and for
    # the sensor's count of failed attempts at a start offset.
    context.instance.add_run_tags(context.run_id, {START_TAG: str(start), END_TAG: str(end)})
    context.log.info(f"Reading partition {partition} offsets [{start}, {end}).")

    # The range is read, flattened and written in chunks: the next chunk is flattened while the
    # IO manager's last writes of the previous one are in flight, and a run holds a chunk or
    # two, not the range. Only the messages to dead-letter are kept (their bytes are sent).
    stream = _RangeStream(kafka, partition, start, end, config.chunk_messages)
    with _gc_paused():
        yield Output(
            stream.frames(),
            "rows",
            metadata={"batch": f"partition {partition} offsets [{start}, {end})"},
        )
    if not stream.finished:
        raise RuntimeError("The Cassandra IO manager did not write every chunk of the range.")
    report.read = stream.read
    report.skipped = dict(Counter(r.reason for r in stream.rejects if r.outcome == "skipped"))
    receipt = _write_receipt(context)
    report.written = receipt.messages_written
    report.rows_upserted = receipt.rows_upserted

    letters = [
        DeadLetter(stream.kept[r.offset], r.reason)
        for r in stream.rejects
        if r.outcome == "dead_lettered"
    ]
    if receipt.rejected_offsets:  # rare: read those messages again rather than keep them all
        again = {m.offset(): m for o in receipt.rejected_offsets
                 for m in kafka.read_range(partition, o, o + 1)}
        letters += [DeadLetter(again[o], "rejected_by_cassandra")
                    for o in receipt.rejected_offsets]
    try:
        report.dead_lettered = kafka.deliver_dead_letters(letters)
    except Exception as exc:
        raise Failure(
            description=f"Dead letters could not be delivered: {exc} {_not_committed(report)}",
            metadata=report.metadata(),
        ) from exc
    if letters:
        context.log.warning(
            f"Dead-lettered {len(letters)} messages to {kafka.dlq_topic!r}: "
            f"{dict(sorted(report.dead_lettered.items()))}"
        )
    yield Output(report, "report", metadata=report.metadata())


class _RangeStream:
    """One partition's [start, end) as DataFrames of flattened rows, one per chunk, produced as
    the IO manager asks for them (it asks for the next while the last writes of this one are in
    flight); counts what it read and keeps the rejects and their messages."""

    def __init__(
        self, kafka: KafkaResource, partition: int, start: int, end: int, chunk: int
    ) -> None:
        self.kafka, self.partition, self.start, self.end = kafka, partition, start, end
        self.chunk = max(1, chunk)
        self.read = 0
        self.rejects: list[Reject] = []
        self.kept: dict[int, Message] = {}  # offset -> message, of the dead-lettered rejects
        self.finished = False

    def frames(self) -> Iterator[pd.DataFrame]:
        # Not in a thread: flattening is pure Python, and a thread holding the GIL delays the
        # driver's I/O thread so much that a run took ~25% longer (make bench).
        pending: list[Message] = []
        # Nothing is written before the first chunk is flattened: a small first chunk starts
        # Cassandra's work sooner (~0.25 s a run here), the rest come in full chunks, whatever
        # each fetch returned.
        size = max(1, self.chunk // 5)
        for messages in self.kafka.iter_range(self.partition, self.start, self.end,
                                              batch_size=self.chunk):
            self.read += len(messages)
            pending += messages
            while len(pending) >= size:
                yield self._flatten(pending[:size])
                del pending[:size]
                size = self.chunk
        if pending:
            yield self._flatten(pending)
        self.finished = True

    def _flatten(self, messages: list[Message]) -> pd.DataFrame:
        # The cyclic garbage the driver left for the chunks already written (requests and
        # their futures; ~0.5 KB a row) is collected here, chunk by chunk: the run pauses the
        # automatic collector (see _gc_paused), which otherwise keeps it to the end of the run.
        gc.collect()
        batch = flatten((m.offset(), m.value()) for m in messages)
        if batch.rejects:
            by_offset = {m.offset(): m for m in messages}
            self.rejects += batch.rejects
            self.kept.update((r.offset, by_offset[r.offset]) for r in batch.rejects
                             if r.outcome == "dead_lettered")
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
    """Check that every message is accounted for, then commit `end` for the consumer group."""
    balanced = report.balanced
    # Yielded (not logged) so that the check's result is recorded before a failure below.
    yield AssetCheckEvaluation(
        asset_key=PROGRAM_ENROLLMENT,
        check_name=ACCOUNTING_CHECK,
        passed=balanced,
        severity=AssetCheckSeverity.ERROR,
        metadata=report.metadata(),
        description=None if balanced else report.imbalance(),
    )
    if not balanced:
        raise Failure(
            description=f"Accounting does not balance: {report.imbalance()}. "
            + _not_committed(report),
            metadata=report.metadata(),
        )

    pause = float(os.environ.get(PAUSE_BEFORE_COMMIT_ENV) or 0)
    if pause > 0:
        context.log.warning(f"Test fault hook: pausing {pause}s before the commit.")
        time.sleep(pause)

    committed = kafka.commit(report.partition, report.end)
    if committed > report.end:
        context.log.warning(
            f"Partition {report.partition} was already committed at {committed}, past this "
            f"run's end {report.end} (a newer run finished first); the offset was left there."
        )
    lag_left = max(0, kafka.partition_offsets(report.partition).high - committed)
    context.log.info(f"Committed {committed}: {report.describe()}; lag left {lag_left}.")
    yield AssetMaterialization(
        PROGRAM_ENROLLMENT,
        description=report.describe(),
        metadata={**report.metadata(), "committed_offset": committed, "lag_left": lag_left},
    )


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
