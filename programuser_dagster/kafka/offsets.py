"""Partitions, watermarks, committed offsets (parsed from their metadata: metadata.py), the
records' times and the offsets for a time: what the sensor, drain, lag and a run's start read."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import suppress

from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource

from ..core.offsets import PartitionOffsets
from ..settings import local_stack_hint
from .clients import KafkaClients
from .errors import KafkaUnavailable
from .metadata import _PARTITIONS, _at, _barrier, _clock, _host, _number, _token


class KafkaOffsets(KafkaClients):
    """The input topic's partitions and offsets, and the times of its records."""

    def partitions(self) -> list[int]:
        """The input topic's partition ids, from cluster metadata."""
        try:
            md = self.consumer.list_topics(self.input_topic, timeout=self.request_timeout_s)
        except KafkaException as exc:
            hint = local_stack_hint(self.bootstrap_servers)
            raise KafkaUnavailable(
                f"{self._where()} did not return metadata for topic {self.input_topic!r}: {exc}. "
                f"Check KAFKA_BOOTSTRAP_SERVERS and KAFKA_INPUT_TOPIC{hint}."
                + self._login_hint()
            ) from exc
        topic = md.topics.get(self.input_topic)
        if topic is None or topic.error is not None:
            raise KafkaUnavailable(
                f"Topic {self.input_topic!r} does not exist on {self.bootstrap_servers}. "
                "Create it, or set KAFKA_INPUT_TOPIC to the topic to ingest"
                + (" (`python -m devtools stack up` creates the local one)."
                   if local_stack_hint(self.bootstrap_servers) else ".")
            )
        return sorted(topic.partitions)

    def chosen_partitions(self, partitions: Sequence[int] | None) -> list[int]:
        """The partitions an operator chose (None or empty: all of the topic's), each checked
        to exist: a ValueError naming those that do not."""
        known = self.partitions()
        if not partitions:
            return known
        chosen = list(dict.fromkeys(partitions))
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise ValueError(f"Topic {self.input_topic!r} has no partition {unknown} "
                             f"(it has {known[0]}-{known[-1]}).")
        return chosen

    def offsets(
        self, partitions: Sequence[int] | None = None, *, settled: bool = False
    ) -> list[PartitionOffsets]:
        """Low/high watermarks and the group's committed offset (and token) of each partition.

        `settled`: wait for a commit in progress to end (the fence's read); otherwise return
        the last commit that ended, at once.
        """
        parts = list(self.partitions() if partitions is None else partitions)
        tps = [TopicPartition(self.input_topic, p) for p in parts]
        reader = self.consumer if settled else self.observer
        try:
            committed = self._retrying(
                lambda: reader.committed(tps, timeout=self.request_timeout_s)
            )
            result = []
            for tp in committed:
                if tp.error is not None:
                    raise KafkaException(tp.error)
                low, high = reader.get_watermark_offsets(
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
                        token=_token(tp.metadata),
                        clock=_clock(tp.metadata),
                        partitions=_number(_PARTITIONS, tp.metadata),
                        barrier=_barrier(tp.metadata),
                        clock_host=_host(tp.metadata),
                        committed_at=_at(tp.metadata),
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

    def offsets_retention_s(self) -> float | None:
        """The broker's offsets.retention.minutes, in seconds (None: it could not be read, e.g.
        no DescribeConfigs permission on the cluster). Read at most once an hour per process:
        the health sensor asks every minute."""
        cached = _RETENTION.get(self.bootstrap_servers)
        if cached is not None and time.monotonic() - cached[1] < _RETENTION_READ_S:
            return cached[0]
        try:
            admin = AdminClient(self._common_config())
            brokers = admin.list_topics(timeout=self.request_timeout_s).brokers
            [future] = admin.describe_configs(
                [ConfigResource("BROKER", str(min(brokers)))],
                request_timeout=self.request_timeout_s).values()
            retention: float | None = 60.0 * int(
                future.result()["offsets.retention.minutes"].value)
        except (KafkaException, KeyError, ValueError, TypeError):
            retention = None
        _RETENTION[self.bootstrap_servers] = (retention, time.monotonic())
        return retention
    def record_times(
        self, positions: dict[int, int], wait_s: float = 1.0, appended_only: bool = False
    ) -> dict[int, int | None]:
        """Per partition, the timestamp (ms) of the record at (or first after) its offset, all
        read together within about `wait_s`; None where none arrived (or it has none).
        `appended_only`: only a time the broker set (LogAppendTime), else None."""
        if not positions:
            return {}
        consumer = self._new_peeker()
        found: dict[int, int | None] = {}
        try:
            consumer.assign([TopicPartition(self.input_topic, p, o)
                             for p, o in positions.items()])
            deadline = time.monotonic() + wait_s
            while len(found) < len(positions) and time.monotonic() < deadline:
                for m in consumer.consume(num_messages=100, timeout=0.05):
                    if m.error() is None and m.partition() not in found:
                        found[m.partition()] = (append_time_ms(m) if appended_only
                                                else record_time_ms(m))
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"{self._where()} did not return the records at {positions} of "
                f"{self.input_topic!r}: {exc}." + self._login_hint()) from exc
        finally:
            with suppress(KafkaException, RuntimeError):  # what it read is kept either way
                consumer.close()
        return {p: found.get(p) for p in positions}

    def oldest_uncommitted_times(
        self, offsets: Sequence[PartitionOffsets]
    ) -> dict[int, int | None]:
        """The record time of each lagging partition's oldest uncommitted record (its lag in
        seconds is that record's age); None where it did not arrive."""
        return self.record_times({o.partition: o.next_offset for o in offsets if o.lag > 0})

    def offsets_for_time(self, partitions: Sequence[int], time_ms: int) -> dict[int, int]:
        """Per partition, the first offset whose record timestamp is at or after `time_ms`
        (Kafka's offsets-for-times); the high-water mark when every record is older."""
        tps = [TopicPartition(self.input_topic, p, time_ms) for p in partitions]
        try:
            found = self._retrying(
                lambda: self.observer.offsets_for_times(tps, timeout=self.request_timeout_s))
            result = {}
            for tp in found:
                if tp.error is not None:
                    raise KafkaException(tp.error)
                result[tp.partition] = tp.offset
            for p, offset in result.items():
                if offset < 0:  # no record that recent
                    result[p] = self.observer.get_watermark_offsets(
                        TopicPartition(self.input_topic, p), timeout=self.request_timeout_s,
                        cached=False)[1]
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"{self._where()} did not return the offsets at time {time_ms} of "
                f"{self.input_topic!r} partitions {list(partitions)}: {exc}." + self._login_hint()
            ) from exc
        return result


# The broker's offsets.retention.minutes (s, or None: unreadable) per bootstrap servers, with the
# monotonic time it was read.
_RETENTION: dict[str, tuple[float | None, float]] = {}
_RETENTION_READ_S = 3600.0


def record_time_ms(message: Message) -> int | None:
    """The record's timestamp (ms), or None when it has none."""
    ts_type, ts = message.timestamp()
    has_ts = ts_type != 0 and ts is not None and ts >= 0  # 0 = TIMESTAMP_NOT_AVAILABLE
    return ts if has_ts else None


def append_time_ms(message: Message) -> int | None:
    """The record's timestamp (ms) if the broker set it (LogAppendTime), else None."""
    ts_type, ts = message.timestamp()
    return ts if ts_type == TIMESTAMP_LOG_APPEND_TIME and ts is not None and ts >= 0 else None

