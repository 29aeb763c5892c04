"""Kafka, and only Kafka: watermarks, committed offsets, exact offset ranges, dead letters, commits.

Follows confluent-kafka's guidance for at-least-once batch consumers: explicit assign() of one
partition at a start offset (no group membership, so no rebalancing mid-run),
enable.auto.commit=false, consume() in batches, and a synchronous commit of an explicit offset
once the work is durable.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from .secrets import reveal

T = TypeVar("T")
# Group-coordinator errors librdkafka does not always flag retriable; each clears in seconds.
_COORDINATOR_ERRORS = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._WAIT_COORD,
    }
)

# Room for a 4 MB event plus the dead-letter headers; the local broker allows 5 MB.
MAX_MESSAGE_BYTES = 5 * 1024 * 1024


class KafkaUnavailable(RuntimeError):
    """The broker did not answer or refused an operation; the message says what to check."""


@dataclass(frozen=True)
class PartitionOffsets:
    partition: int
    low: int
    high: int
    committed: int | None  # None: the group never committed on this partition

    @property
    def next_offset(self) -> int:
        """Where the next run starts: the committed offset, but never below the oldest record."""
        return self.low if self.committed is None else max(self.committed, self.low)

    @property
    def lost_to_retention(self) -> int:
        """Records deleted by retention between the committed offset and the low watermark."""
        return 0 if self.committed is None else max(0, self.low - self.committed)

    @property
    def lag(self) -> int:
        return max(0, self.high - self.next_offset)


@dataclass(frozen=True)
class DeadLetter:
    message: Message
    reason: str


class KafkaResource(ConfigurableResource):
    """The input topic, its consumer group and its dead-letter topic on one Kafka cluster."""

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]."
    )
    input_topic: str = Field(default="dev.programuser.info", description="Topic to ingest.")
    group_id: str = Field(
        default="dev-programuser-group", description="Consumer group whose offsets are committed."
    )
    dlq_topic: str = Field(
        default="dev.programuser.info.failed", description="Topic receiving dead letters."
    )
    security_protocol: str | None = Field(
        default=None, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (librdkafka)."
    )
    sasl_mechanism: str | None = Field(default=None, description="e.g. PLAIN or SCRAM-SHA-512.")
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: str | None = Field(
        default=None, description="SASL password; set it with EnvVar so it is never shown."
    )
    ssl_ca_location: str | None = Field(default=None, description="CA bundle for TLS.")
    delivery_timeout_s: float = Field(
        default=30.0, description="How long dead-letter delivery may take before the run fails."
    )
    request_timeout_s: float = Field(
        default=15.0, description="Timeout of metadata, watermark, committed and commit calls."
    )

    _consumer: Consumer | None = PrivateAttr(default=None)
    # The client's latest errors (librdkafka error_cb): they say *why* a broker did not answer.
    _client_errors: deque[str] = PrivateAttr(default_factory=lambda: deque(maxlen=3))

    # -- client configuration ------------------------------------------------------------------

    def _common_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "error_cb": lambda err: self._client_errors.append(err.str()),
        }
        optional = {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": reveal(self.sasl_password),
            "ssl.ca.location": self.ssl_ca_location,
        }
        conf.update({k: v for k, v in optional.items() if v})
        return conf

    def _consumer_config(self) -> dict[str, Any]:
        return {
            **self._common_config(),
            "group.id": self.group_id,
            # Offsets move only through commit() below, after the rows are durable.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            # Large batches per fetch: a run reads up to max_messages records of one partition.
            # The prefetch queue is bounded at 32 MB: librdkafka reads ahead past the range's
            # end up to this much (it was 256 MB, all of it resident while a run works);
            # reading stays far faster than writing (make bench: kafka_read_events_per_s).
            "fetch.max.bytes": 16 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            "queued.max.messages.kbytes": 32 * 1024,
            # A fetch that finds no new data waits this long on the broker, and the offset
            # requests that follow a read queue behind it on the same connection (the 500 ms
            # default cost every run ~0.25 s in its commit step).
            "fetch.wait.max.ms": 10,
        }

    @property
    def consumer(self) -> Consumer:
        # One consumer per resource instance: it is only ever assigned, never subscribed.
        if self._consumer is None:
            self._consumer = Consumer(self._consumer_config())
        return self._consumer

    def teardown_after_execution(self, context: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _where(self) -> str:
        return f"Kafka at {self.bootstrap_servers}"

    def _login_hint(self) -> str:
        """What the client last heard, and what to check when it is a login problem."""
        heard = f" The client reported: {self._client_errors[-1]}." if self._client_errors else ""
        if self.sasl_mechanism:
            return heard + " If the broker refused the login, check KAFKA_SASL_USERNAME and " \
                "KAFKA_SASL_PASSWORD."
        return heard + " If the broker requires a login, set KAFKA_SECURITY_PROTOCOL, " \
            "KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD."

    def _retrying(self, call: Callable[[], T]) -> T:
        """Retry errors Kafka marks retriable (a group coordinator loading or moving, as on a
        fresh or restarting broker) until request_timeout_s has passed."""
        deadline = time.monotonic() + self.request_timeout_s
        while True:
            try:
                return call()
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                retriable = isinstance(err, KafkaError) and (
                    err.retriable() or err.code() in _COORDINATOR_ERRORS
                )
                if not retriable or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # -- offsets -------------------------------------------------------------------------------

    def partitions(self) -> list[int]:
        """The input topic's partition ids, from cluster metadata."""
        try:
            md = self.consumer.list_topics(self.input_topic, timeout=self.request_timeout_s)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"{self._where()} did not return metadata for topic {self.input_topic!r}: {exc}. "
                "Check that the broker runs (programuser-dagster stack status)."
                + self._login_hint()
            ) from exc
        topic = md.topics.get(self.input_topic)
        if topic is None or topic.error is not None:
            raise KafkaUnavailable(
                f"Topic {self.input_topic!r} does not exist on {self.bootstrap_servers}. "
                "Create it (programuser-dagster stack up creates the local one) or set "
                "KAFKA_INPUT_TOPIC."
            )
        return sorted(topic.partitions)

    def offsets(self, partitions: Sequence[int] | None = None) -> list[PartitionOffsets]:
        """Low/high watermarks and the group's committed offset of each partition."""
        parts = list(self.partitions() if partitions is None else partitions)
        tps = [TopicPartition(self.input_topic, p) for p in parts]
        try:
            committed = self._retrying(
                lambda: self.consumer.committed(tps, timeout=self.request_timeout_s)
            )
            result = []
            for tp in committed:
                if tp.error is not None:
                    raise KafkaException(tp.error)
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.input_topic, tp.partition),
                    timeout=self.request_timeout_s,
                    cached=False,
                )
                result.append(
                    PartitionOffsets(
                        partition=tp.partition,
                        low=low,
                        high=high,
                        committed=None if tp.offset == OFFSET_INVALID or tp.offset < 0
                        else tp.offset,
                    )
                )
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"{self._where()} did not return the offsets of {self.input_topic!r} partitions "
                f"{parts} for group {self.group_id!r}: {exc}." + self._login_hint()
            ) from exc
        return result

    def partition_offsets(self, partition: int) -> PartitionOffsets:
        return self.offsets([partition])[0]

    # -- reading -------------------------------------------------------------------------------

    def read_range(
        self, partition: int, start: int, end: int, idle_timeout_s: float = 30.0
    ) -> list[Message]:
        """Every record of [start, end) of one partition, in offset order."""
        chunks = self.iter_range(partition, start, end, idle_timeout_s)
        return [m for chunk in chunks for m in chunk]

    def iter_range(
        self,
        partition: int,
        start: int,
        end: int,
        idle_timeout_s: float = 30.0,
        batch_size: int = 10_000,
    ) -> Iterator[list[Message]]:
        """Chunks of the records of [start, end), in offset order.

        Offsets may have holes (compaction, transaction markers), so completion is judged by
        the consumer's position, not by counting records.
        """
        if end <= start:
            return
        tp = TopicPartition(self.input_topic, partition, start)
        consumer = self.consumer
        consumer.assign([tp])
        try:
            position = start
            last_progress = time.monotonic()
            while position < end:
                # consume() returns when it has num_messages or the timeout passed: never ask
                # for more than the range still holds, or the last batch of every run would
                # wait out the whole timeout (1 s per run). Holes (compaction, transaction
                # markers) only make it wait for the partition-EOF event instead.
                want = max(1, min(batch_size, end - position))
                msgs = consumer.consume(num_messages=want, timeout=1.0)
                chunk: list[Message] = []
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            position = max(position, m.offset())
                            continue
                        raise KafkaUnavailable(
                            f"{self._where()} failed while reading partition {partition} at "
                            f"offset {position}: {err.str()}"
                        )
                    off = m.offset()
                    if off >= end:
                        position = end
                        break
                    chunk.append(m)
                    position = off + 1
                if chunk:
                    last_progress = time.monotonic()
                    yield chunk
                elif position < end:
                    pos = consumer.position([TopicPartition(self.input_topic, partition)])[0]
                    if pos.offset >= end:
                        break
                    if time.monotonic() - last_progress > idle_timeout_s:
                        raise KafkaUnavailable(
                            f"{self._where()} returned nothing for {idle_timeout_s:.0f}s while "
                            f"reading {self.input_topic!r} partition {partition} at offset "
                            f"{position} (range ends at {end}). Is the broker up?"
                        )
        finally:
            consumer.unassign()

    # -- writing -------------------------------------------------------------------------------

    def deliver_dead_letters(self, letters: Sequence[DeadLetter]) -> dict[str, int]:
        """Produce each dead letter and wait for the broker's delivery reports.

        Returns the count of delivered letters by reason, taken from the delivery reports.
        Raises KafkaUnavailable if any letter is not acknowledged within delivery_timeout_s.
        """
        if not letters:
            return {}
        producer = self._producer()
        delivered: dict[str, int] = {}
        errors: list[str] = []

        def report(err: KafkaError | None, msg: Message, reason: str) -> None:
            if err is None:
                delivered[reason] = delivered.get(reason, 0) + 1
            else:
                errors.append(err.str())

        for letter in letters:
            m = letter.message
            headers = list(m.headers() or [])
            headers += [
                ("reason", letter.reason.encode()),
                ("source_topic", m.topic().encode()),
                ("source_partition", str(m.partition()).encode()),
                ("source_offset", str(m.offset()).encode()),
            ]
            ts_type, ts = m.timestamp()
            if ts_type != 0 and ts is not None and ts >= 0:  # 0 = TIMESTAMP_NOT_AVAILABLE
                headers.append(("source_timestamp", str(ts).encode()))
            while True:
                try:
                    producer.produce(
                        self.dlq_topic,
                        value=m.value(),
                        key=m.key(),
                        headers=headers,
                        on_delivery=lambda err, msg, r=letter.reason: report(err, msg, r),
                    )
                    break
                except BufferError:
                    producer.poll(0.1)  # local queue full: let deliveries drain
        remaining = producer.flush(self.delivery_timeout_s + 5)
        total = sum(delivered.values())
        if remaining or errors or total != len(letters):
            first = errors[0] if errors else f"{remaining} still queued"
            raise KafkaUnavailable(
                f"Only {total} of {len(letters)} dead letters reached topic "
                f"{self.dlq_topic!r} on {self.bootstrap_servers} within "
                f"{self.delivery_timeout_s:.0f}s ({first}). Check that the topic exists and "
                "accepts writes."
            )
        return delivered

    def produce(
        self,
        records: Iterable[tuple[bytes | None, bytes | None]],
        partition: int | None = None,
    ) -> int:
        """Produce (key, value) records to the input topic; returns how many were acknowledged.

        Without `partition`, the key picks the partition, so one user's events stay in order.
        """
        producer = self._producer()
        acked = 0
        errors: list[str] = []

        def report(err: KafkaError | None, _msg: Message) -> None:
            nonlocal acked
            if err is None:
                acked += 1
            else:
                errors.append(err.str())

        extra = {} if partition is None else {"partition": partition}
        sent = 0
        for key, value in records:
            while True:
                try:
                    producer.produce(
                        self.input_topic, value=value, key=key, on_delivery=report, **extra
                    )
                    break
                except BufferError:
                    producer.poll(0.1)  # local queue full: let deliveries drain
            sent += 1
            if sent % 10_000 == 0:
                producer.poll(0)
        producer.flush(self.delivery_timeout_s + 5)
        if errors or acked != sent:
            raise KafkaUnavailable(
                f"Only {acked} of {sent} records reached {self.input_topic!r} on "
                f"{self.bootstrap_servers}: {errors[0] if errors else 'delivery timed out'}"
            )
        return acked

    def _producer(self) -> Producer:
        return Producer(
            {
                **self._common_config(),
                "enable.idempotence": True,
                "acks": "all",
                "message.max.bytes": MAX_MESSAGE_BYTES,
                "delivery.timeout.ms": int(self.delivery_timeout_s * 1000),
                "linger.ms": 5,
            }
        )

    def commit(self, partition: int, offset: int) -> int:
        """Commit `offset` for the partition synchronously, never moving it backwards.

        Returns the committed offset afterwards (which is above `offset` if another run
        already committed further).
        """
        current = self.partition_offsets(partition).committed
        if current is not None and current >= offset:
            return current
        try:
            self._retrying(
                lambda: self.consumer.commit(
                    offsets=[TopicPartition(self.input_topic, partition, offset)],
                    asynchronous=False,
                )
            )
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"{self._where()} refused to commit offset {offset} of {self.input_topic!r} "
                f"partition {partition} for group {self.group_id!r}: {exc}"
            ) from exc
        return offset
