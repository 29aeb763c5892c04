"""The Cassandra IO manager: a run's flattened rows in, the range's report out.

It writes through the client (client.py) with the write engine (writes.py), as Dagster's
database IO managers pair a resource with a type handler. Its record of what it wrote (the
range's report: offsets, counts and reasons) is kept in a small table beside the data,
write_receipts, and is what load_input gives the committing step: a re-execution of that step in
another process or container reads it there.
"""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableIOManager, Failure, InputContext, MetadataValue, OutputContext
from pydantic import Field, PrivateAttr

from ..core.report import RangeReport
from ..memory import collect_between_chunks, gc_paused
from ..settings import DEFAULTS, RECEIPT_DAYS, RECEIPTS_TABLE
from .client import CassandraResource, CassandraWriteFailed, receipt_statement
from .writes import CassandraWriter, RowSource


class CassandraIOManager(ConfigurableIOManager):
    """Upserts each DataFrame of flattened events into the program_enrollment table, and gives
    the next step the range's report of what it wrote."""

    cassandra: CassandraResource = Field(
        default_factory=CassandraResource, description="The connection (client.py)."
    )
    concurrency: int = Field(
        default=DEFAULTS.cassandra_concurrency, gt=0,
        description="Write requests (batches) in flight at once.",
    )
    batch_rows: int = Field(
        default=DEFAULTS.cassandra_batch_rows, gt=0,
        description="Rows of one partition (program_id) per UNLOGGED batch; 1 sends one "
        "INSERT per row.",
    )
    batch_bytes: int = Field(
        default=DEFAULTS.cassandra_batch_bytes, gt=0,
        description="Estimated bytes per batch, below Cassandra's batch_size_fail_threshold.",
    )

    _writer: CassandraWriter | None = PrivateAttr(default=None)

    def writer(self) -> CassandraWriter:
        """The write engine on this manager's client (redrive writes its letters with it)."""
        if self._writer is None:
            self._writer = CassandraWriter(
                self.cassandra, self.concurrency, self.batch_rows, self.batch_bytes)
        return self._writer

    def teardown_after_execution(self, context: Any) -> None:
        self.cassandra.close()

    def handle_output(self, context: OutputContext, obj: RowSource) -> None:
        report = obj.report
        try:
            with gc_paused():
                receipt = self.writer().upsert(obj, between_chunks=collect_between_chunks)
            report.written = receipt.messages_written
            report.rows_upserted = receipt.rows_upserted
            report.ages = receipt.ages.to_dict()
            report.dead_letters += [(o, "rejected_by_cassandra") for o in receipt.rejected_offsets]
            self._store_receipt(context, report)
        except CassandraWriteFailed as exc:
            self.cassandra.disconnect()
            raise Failure(description=obj.failed(str(exc))) from exc
        first_read = {} if report.first_read_at is None else {
            "first_read_at": MetadataValue.timestamp(report.first_read_at)}
        context.add_output_metadata(
            {**report.metadata(), "rejected_by_cassandra": len(receipt.rejected_offsets),
             "table": f"{self.cassandra.keyspace}.{self.cassandra.table}", **first_read}
        )

    def load_input(self, context: InputContext) -> RangeReport:
        """The report the upstream step's handle_output stored: what it read and wrote."""
        upstream = context.upstream_output
        if upstream is None or upstream.run_id is None:
            raise Failure(description=(
                "No run produced flatten_events' rows for this run to commit (the Cassandra IO "
                "manager loads only what a step of this job wrote): launch a new run of the "
                "partition instead; it starts from the committed offset."
            ))
        key = (upstream.run_id, upstream.step_key, upstream.name)
        receipts = f"{self.cassandra.keyspace}.{RECEIPTS_TABLE}"
        try:
            row = self.cassandra.session().execute(receipt_statement(
                f"SELECT report FROM {receipts} "
                "WHERE run_id = %s AND step_key = %s AND output = %s"), key).one()
        except Exception as exc:
            raise Failure(description=(
                f"{self.cassandra.where()} did not return the record of what run {key[0]} wrote "
                f"({type(exc).__name__}: {exc}): re-execute this step once Cassandra answers."
            )) from exc
        if row is None:
            raise Failure(description=(
                f"No record of what run {key[0]} wrote ({receipts}, kept "
                f"{RECEIPT_DAYS} days): it never finished its writes, or it is older. Launch a "
                "new run of the partition instead: it starts from the committed offset."
            ))
        return RangeReport.from_bytes(row.report)

    def _store_receipt(self, context: OutputContext, report: RangeReport) -> None:
        with self.writer().ours():
            self.cassandra.session().execute(receipt_statement(
                f"INSERT INTO {self.cassandra.keyspace}.{RECEIPTS_TABLE} "
                "(run_id, step_key, output, report) "
                f"VALUES (%s, %s, %s, %s) USING TTL {RECEIPT_DAYS * 24 * 3600}"),
                (context.run_id, context.step_key, context.name, report.to_bytes()),
            )
