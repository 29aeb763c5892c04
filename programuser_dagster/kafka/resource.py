"""Kafka, and only Kafka: watermarks, committed offsets, exact offset ranges, dead letters, commits.

Follows confluent-kafka's guidance for at-least-once batch consumers: explicit assign() of one
partition at a start offset (no group membership, so no rebalancing mid-run),
enable.auto.commit=false, consume() in batches, and the offset committed once the work is
durable.

The commit is fenced, because Kafka has no compare-and-set on offsets (an assign-only group
commits with generation -1, accepted from anyone): a run reads the partition's committed state
(offset, token) when it starts, and commits in a Kafka transaction of the partition's own
transactional.id, whose init_transactions() aborts and fences any older committer of the
partition; the transaction re-reads the state and commits offset and token + 1 only if the state
is still the one the run started from. The run's dead letters are in the same transaction, so a
read_committed reader sees each range's letters once, with its commit.
"""

from __future__ import annotations

import re
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from ..client_logs import kafka_logger
from ..core.growth import claims
from ..core.offsets import Barrier, CommitState, PartitionOffsets, why_read_stalled
from ..secrets import reveal
from ..settings import DEFAULTS, TRANSACTION_EXTRA_S, local_stack_hint
from .dead_letters import Source, letter, room_warning
from .tls_check import verification_failure

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
# Errors that mean another committer of the partition initialised its transactions after us.
_FENCED_ERRORS = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)
# The commit metadata string carries the fence's token, the partition's write clock, the
# topic's partition count and, on a new partition's claim, its barrier (core/growth.py):
# "programuser-dagster token=N clock=C id=2 partitions=P[ barrier=Q:M,...] host=H"
# (commit_metadata).
_TOKEN = re.compile(r"\btoken=(\d+)\b")
_CLOCK = re.compile(r"\bclock=(\d+)\b")
_PARTITIONS = re.compile(r"\bpartitions=(\d+)\b")
_BARRIER = re.compile(r"\bbarrier=(\d+:\d+(?:,\d+:\d+)*)")
# ... and `id=2`: committed under the escaped transactional id (see transactional_id), and
# `host=H`: the host whose clock the commit's clock came from (core/clock_skew.py names it).
_ID_2 = re.compile(r"\bid=2\b")
_HOST = re.compile(r"\bhost=(\S+)")
_TXN_PREFIX = "programuser-dagster"
# Dead-letter offsets at most this far apart are re-read in one pass rather than two.
_READ_GAP = 1_000
# A produce request is one batch plus its request framing: the producer's request limit.
_REQUEST_FRAMING = 64 * 1024
# What a dead-letter topic whose config cannot be read is assumed to allow: Kafka's default
# (1 MB), not ours, so that a letter never exceeds a topic left at the broker's default.
_UNDESCRIBED_DEAD_LETTER_BYTES = 1_000_000


class KafkaUnavailable(RuntimeError):
    """The broker did not answer or refused an operation; the message says what to check."""


class CommitUnknown(KafkaUnavailable):
    """The broker did not answer a commit, nor the read that would tell whether it landed: the
    commit may have happened or not; the message says how to find out."""


class Superseded(RuntimeError):
    """Another run of the partition committed (or began committing) since this run started;
    this run's commit was refused and nothing of it was committed."""


class KafkaResource(ConfigurableResource):
    """The input topic, its consumer group and its dead-letter topic on one Kafka cluster."""

    bootstrap_servers: str = Field(
        default=DEFAULTS.kafka_bootstrap_servers,
        description="Kafka bootstrap servers, host:port[,host:port].",
    )
    input_topic: str = Field(default=DEFAULTS.kafka_input_topic, description="Topic to ingest.")
    group_id: str = Field(
        default=DEFAULTS.kafka_group_id,
        description="Consumer group whose offsets are committed.",
    )
    dlq_topic: str = Field(
        default=DEFAULTS.kafka_dlq_topic, description="Topic receiving dead letters."
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
        default=DEFAULTS.kafka_delivery_timeout_s,
        description="How long dead-letter delivery may take before the run fails.",
    )
    request_timeout_s: float = Field(
        default=DEFAULTS.kafka_request_timeout_s,
        description="Timeout of metadata, watermark, committed and commit calls.",
    )

    _consumer: Consumer | None = PrivateAttr(default=None)
    _observer: Consumer | None = PrivateAttr(default=None)
    _room: tuple[int, list[str]] | None = PrivateAttr(default=None)  # see dead_letter_room
    # The client's latest errors (librdkafka error_cb): they say *why* a broker did not answer.
    _client_errors: deque[str] = PrivateAttr(default_factory=lambda: deque(maxlen=3))
    _tls_checked: bool = PrivateAttr(default=False)

    # -- client configuration ------------------------------------------------------------------

    def _common_config(self) -> dict[str, Any]:
        self._check_tls()
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "error_cb": lambda err: self._client_errors.append(err.str()),
            "logger": kafka_logger(),  # librdkafka's repeated lines summarised, not on stderr
            # Connect to the brokers as soon as they are known. With sparse connections a new
            # client drops its bootstrap connection on the first metadata and, finding no
            # broker up, asks for its coordinator again only on a timer: a fresh consumer's
            # first committed() took ~60 ms, and init_transactions() 0.5 s of every run
            # instead of ~10 ms (docs/performance.md).
            "enable.sparse.connections": False,
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

    def _check_tls(self) -> None:
        """Refuse a broker whose certificate does not verify before any client is made:
        librdkafka would retry the handshake until each request times out, naming no cause."""
        if self._tls_checked or not (self.security_protocol or "").upper().endswith("SSL"):
            return
        for address in filter(None, (a.strip() for a in self.bootstrap_servers.split(","))):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                continue  # no port to try: librdkafka's default applies, its errors tell
            try:
                why = verification_failure(host.strip("[]"), int(port), self.ssl_ca_location)
            except OSError:
                continue  # down or stalled: the next one tells, else the client's error
            if why:
                ca = self.ssl_ca_location or "unset: the system CAs"
                raise KafkaUnavailable(
                    f"TLS verification of the Kafka broker at {address.strip()} failed: {why}. "
                    f"Check KAFKA_SSL_CA_LOCATION (now {ca}: the CA that signed the brokers' "
                    "certificates) and that KAFKA_BOOTSTRAP_SERVERS name the brokers as their "
                    "certificates do.")
            self._tls_checked = True  # one broker verified: they share the CA
            return
        # None could be reached: the clients' own errors say so; the next client checks again.

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
        """Reads records, and the committed state inside a commit: read_committed (librdkafka's
        default), so committed() waits for a pending transaction's offsets to settle."""
        # One consumer per resource instance: it is only ever assigned, never subscribed.
        if self._consumer is None:
            # An offset retention deleted before it was fetched is an error here, not a silent
            # jump to the oldest record: iter_range counts what was skipped (records lost to
            # retention), where a gap in the offsets alone cannot tell them from transaction
            # markers, aborted records or compaction.
            self._consumer = Consumer({**self._consumer_config(), "auto.offset.reset": "error"})
        return self._consumer

    @property
    def observer(self) -> Consumer:
        """Observes committed offsets (sensor, lag, a run's start) without waiting for another
        run's pending transaction: read_uncommitted returns the last settled commit at once,
        where read_committed waits up to the transaction's timeout."""
        if self._observer is None:
            self._observer = Consumer(
                {**self._consumer_config(), "isolation.level": "read_uncommitted"}
            )
        return self._observer

    def _new_peeker(self) -> Consumer:
        """Reads one record per partition (record_times): small fetches, no read-ahead; made
        afresh for every look-up (~5 ms): re-assigned, a kept consumer now and then returned
        nothing for the whole wait (the age then unknown)."""
        return Consumer({
            **self._consumer_config(), "isolation.level": "read_uncommitted",
            "fetch.max.bytes": 1024 * 1024, "max.partition.fetch.bytes": 64 * 1024,
            "queued.max.messages.kbytes": 1024})

    def teardown_after_execution(self, context: Any) -> None:
        self.close()

    def close(self) -> None:
        for consumer in (self._consumer, self._observer):
            if consumer is not None:
                consumer.close()
        self._consumer = self._observer = None

    def forget_client_errors(self) -> None:
        """A new run begins (with this resource kept from the last one): its failures quote
        what the clients report from now on, not an earlier run's trouble."""
        self._client_errors.clear()

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

    def _high_or_none(self, topic: str, partition: int) -> int | None:
        """The partition's high-water mark as a read_uncommitted reader sees it (past any open
        transaction); None when the broker does not answer."""
        try:
            return self.observer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.request_timeout_s, cached=False)[1]
        except KafkaException:
            return None

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

    def claimed_offsets(self) -> list[PartitionOffsets]:
        """Every partition's offsets, after claiming the partitions added to the topic since
        a commit recorded its count (core/growth.py): each through the fence, so that of two
        claimers (the sensor, drain, a run) one claims and the other finds it claimed."""
        topic = self.offsets()
        pending = claims(topic)
        for claim in pending:
            with suppress(Superseded), self.fenced_commit(claim.partition,
                                                          claim.expected) as txn:
                txn.commit(claim.offset, claim.clock, claim.partitions, claim.barrier)
        # Settled: a claim's offset is visible only once its transaction's markers are written.
        return self.offsets([o.partition for o in topic], settled=True) if pending else topic

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
        topic: str | None = None,
        until_end_of_partition: bool = False,
        lost: Callable[[int, int], None] | None = None,
    ) -> Iterator[list[Message]]:
        """Chunks of the records of [start, end) of the input topic (or `topic`), in offset
        order; `until_end_of_partition`: or up to where the partition ends for this reader
        (a read_committed reader stops before a transaction still open).

        Offsets may have holes (compaction, transaction markers, aborted transactions), so
        completion is judged by the consumer's position, not by counting records. Records
        retention deletes before they are fetched are skipped, the reader going on from the
        new oldest record; `lost(first, end)` is told each such run of offsets [first, end).
        """
        topic = topic or self.input_topic
        if end <= start:
            return
        tp = TopicPartition(topic, partition, start)
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
                            if until_end_of_partition:
                                position = end
                            continue
                        if err.code() == KafkaError._AUTO_OFFSET_RESET:
                            # The fetch at `position` found it deleted: nothing after it in
                            # this batch (the fetch stopped there).
                            position = self._past_deleted(consumer, topic, partition, position,
                                                          end, lost)
                            last_progress = time.monotonic()
                            break
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
                    pos = consumer.position([TopicPartition(topic, partition)])[0]
                    if pos.offset >= end:
                        break
                    if time.monotonic() - last_progress > idle_timeout_s:
                        raise KafkaUnavailable(
                            f"{self._where()} returned nothing for {idle_timeout_s:.0f}s while "
                            f"reading {topic!r} partition {partition} at offset "
                            f"{position} (range ends at {end}), "
                            + why_read_stalled(position, end, self._high_or_none(topic,
                                                                                  partition))
                        )
        finally:
            # A reader left suspended by a failed write ends when it is collected, maybe after
            # the resource closed its consumer at the run's end: only a live one is unassigned.
            if self._consumer is consumer:
                consumer.unassign()

    def _past_deleted(
        self, consumer: Consumer, topic: str, partition: int, position: int, end: int,
        lost: Callable[[int, int], None] | None,
    ) -> int:
        """The reader's next position once `position` was found out of range: the partition's
        oldest record (reassigned there), or `end` when none is left below it. The offsets
        skipped are below the new low watermark: deleted by retention, reported to `lost`."""
        low, high = self._watermarks(topic, partition)
        if low <= position:
            # Out of range above the end of the log: the offsets went back.
            raise KafkaUnavailable(
                f"{self._where()} has no offset {position} in {topic!r} partition {partition} "
                f"any more (its records now run from {low} to {high}): the topic was deleted "
                "and recreated, or its log truncated, while it was read. Check the topic; "
                "the range cannot be read past that offset.")
        resume = min(low, end)
        if lost is not None:
            lost(position, resume)
        if resume < end:
            consumer.assign([TopicPartition(topic, partition, resume)])
        return resume

    # -- writing -------------------------------------------------------------------------------

    # -- the fenced commit ---------------------------------------------------------------------

    def transactional_id(self, partition: int) -> str:
        """One per (group, topic, partition): every committer of a partition shares it, so each
        one's init_transactions() fences the ones before it (see transactional_id below)."""
        return transactional_id(self.group_id, self.input_topic, partition)

    def _fence_id(self, partition: int) -> str:
        """The id this commit fences on. Until the partition has a commit made under the
        escaped id (metadata `id=2`), a group whose id changed in issue 24 commits under its
        old id: a run of the code before the upgrade (a zombie) that read the same state uses
        that id, so the two fence each other as before; the commit that writes `id=2` moves
        the partition over, and a zombie that read an earlier state is superseded at its check.
        """
        escaped = self.transactional_id(partition)
        legacy = legacy_transactional_id(self.group_id, self.input_topic, partition)
        if legacy == escaped:
            return escaped
        tp = TopicPartition(self.input_topic, partition)
        try:
            [got] = self._retrying(
                lambda: self.observer.committed([tp], timeout=self.request_timeout_s))
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"{self._where()} did not return the committed offset of {self.input_topic!r} "
                f"partition {partition} for group {self.group_id!r}: {exc}."
                + self._login_hint()) from exc
        return escaped if _ID_2.search(got.metadata or "") else legacy

    def dead_letter_room(self) -> tuple[int, list[str]]:
        """The dead-letter topic's max.message.bytes, and warnings for the operator: the topic
        is smaller than the input topic (large letters lose their value), or its size could not
        be checked (then the size the stack gives it is assumed). Described once per resource.
        """
        if self._room is not None:
            return self._room
        room, described = self._describe_dead_letter_room()
        if described:  # a failed look-up is tried again by the next commit
            self._room = room
        return room

    def _describe_dead_letter_room(self) -> tuple[tuple[int, list[str]], bool]:
        """The room and its warnings, and whether the dead-letter topic's size was read."""
        admin = AdminClient(self._common_config())

        def limit(topic: str) -> int:
            [future] = admin.describe_configs(
                [ConfigResource("TOPIC", topic)], request_timeout=self.request_timeout_s
            ).values()
            return int(future.result()["max.message.bytes"].value)

        try:
            dead_letter = limit(self.dlq_topic)
        except (KafkaException, KeyError, ValueError) as exc:
            return (_UNDESCRIBED_DEAD_LETTER_BYTES, [
                f"Could not read the max.message.bytes of dead-letter topic {self.dlq_topic!r} "
                f"on {self.bootstrap_servers} ({exc}): does it exist, and may this client "
                "DescribeConfigs on it? Assuming Kafka's default of "
                f"{_UNDESCRIBED_DEAD_LETTER_BYTES} bytes: larger letters are sent as "
                "reason=too_large, without their value."
            ]), False
        try:
            source = limit(self.input_topic)
        except (KafkaException, KeyError, ValueError) as exc:
            return (dead_letter, [
                f"Could not read the max.message.bytes of input topic {self.input_topic!r} "
                f"({exc}), so could not check that its records fit the dead-letter topic "
                f"{self.dlq_topic!r} (max.message.bytes={dead_letter})."
            ]), False
        warning = room_warning(self.dlq_topic, dead_letter, self.input_topic, source)
        return (dead_letter, [warning] if warning else []), True

    @contextmanager
    def fenced_commit(self, partition: int, expected: CommitState) -> Iterator[FencedCommit]:
        """A transaction that commits the partition only if its committed state is still
        `expected` (what the run read when it started); raises Superseded otherwise.

        Inside the block: FencedCommit.deliver (dead letters), then FencedCommit.commit. Leaving
        the block without commit(), or with an exception, aborts: nothing of it is visible to a
        read_committed reader, and the offset stays.
        """
        limit, _ = self.dead_letter_room()
        timeout_s = self.delivery_timeout_s + TRANSACTION_EXTRA_S  # below the broker's cap
        producer = Producer(
            {
                **self._common_config(),
                "transactional.id": self._fence_id(partition),
                # Short: a committer that dies mid-transaction blocks read_committed readers of
                # the partition's letters (and committed() waiters) until the next committer's
                # init_transactions() aborts it, or this timeout.
                "transaction.timeout.ms": int(timeout_s * 1000),
                "delivery.timeout.ms": int(self.delivery_timeout_s * 1000),
                # Batches never exceed the topic's limit, so one letter's refusal cannot take
                # the letters batched with it; each letter is sized to fit (dead_letters.py).
                "batch.size": max(1, min(1_000_000, limit - 1024)),
                "message.max.bytes": limit + _REQUEST_FRAMING,
                "queue.buffering.max.kbytes": max(64 * 1024, 2 * limit // 1024),
                "linger.ms": 5,
                # init_transactions() retries CONCURRENT_TRANSACTIONS while the previous
                # committer's markers are written: 100 ms steps made it 0.1-0.5 s a run.
                "retry.backoff.ms": 10,
                "retry.backoff.max.ms": 100,
            }
        )
        txn = FencedCommit(self, producer, partition, expected, limit, timeout_s)
        try:
            txn.call("begin the commit", lambda: producer.init_transactions(
                self.request_timeout_s))
            current = self.offsets([partition], settled=True)[0]
            state = current.state
            if state != expected:
                raise Superseded(
                    f"Partition {partition} was committed by another run since this run "
                    f"started (then: {expected.describe()}; now: {state.describe()}). This "
                    "run's commit was refused; nothing of it was committed."
                )
            txn.state, txn.clock = state, current.clock
            producer.begin_transaction()
            yield txn
        finally:
            if not txn.committed:
                txn.abort()

    # -- re-reading dead letters ---------------------------------------------------------------

    def _watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        try:
            return self.consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.request_timeout_s, cached=False)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"{self._where()} did not return the watermarks of {topic!r} partition "
                f"{partition}: {exc}." + self._login_hint()) from exc

    def dead_letter_partitions(self) -> list[int]:
        """The dead-letter topic's partition ids."""
        try:
            md = self.consumer.list_topics(self.dlq_topic, timeout=self.request_timeout_s)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"{self._where()} did not return metadata for topic {self.dlq_topic!r}: {exc}."
                + self._login_hint()) from exc
        topic = md.topics.get(self.dlq_topic)
        if topic is None or topic.error is not None:
            raise KafkaUnavailable(f"Dead-letter topic {self.dlq_topic!r} does not exist on "
                                   f"{self.bootstrap_servers}: check KAFKA_DLQ_TOPIC.")
        return sorted(topic.partitions)

    def iter_dead_letters(self, partition: int) -> Iterator[list[Message]]:
        """The committed letters of one partition of the dead-letter topic, oldest first, up to
        its end when called (read_committed: letters of aborted commits are never seen)."""
        low, high = self._watermarks(self.dlq_topic, partition)
        yield from self.iter_range(partition, low, high, topic=self.dlq_topic,
                                   until_end_of_partition=True, batch_size=1000)

    def iter_offsets(
        self, partition: int, offsets: Sequence[int], topic: str | None = None
    ) -> Iterator[tuple[int, Message | None]]:
        """The records at these offsets (sorted) of the input topic (or `topic`), one by one;
        None for an offset that no longer holds a record (deleted by retention or compaction
        since it was read, or past the end of a topic recreated since)."""
        topic = topic or self.input_topic
        wanted = sorted(set(offsets))
        # Once: the low watermark only rises, and a record deleted later is simply not found.
        low, high = self._watermarks(topic, partition) if wanted else (0, 0)
        i = 0
        while i < len(wanted):
            j = i
            while j + 1 < len(wanted) and wanted[j + 1] - wanted[j] <= _READ_GAP:
                j += 1
            segment = set(wanted[i:j + 1])
            found: set[int] = set()
            start, stop = max(wanted[i], low), min(wanted[j] + 1, high)
            if start < stop:
                for chunk in self.iter_range(partition, start, stop, batch_size=256,
                                             topic=topic):
                    for m in chunk:
                        if m.offset() in segment:
                            found.add(m.offset())
                            yield m.offset(), m
            for missing in sorted(segment - found):
                yield missing, None
            i = j + 1


class FencedCommit:
    """One partition's commit in progress: its dead letters, then its offset, in one
    transaction (see KafkaResource.fenced_commit)."""

    def __init__(self, kafka: KafkaResource, producer: Producer, partition: int,
                 expected: CommitState, limit: int, timeout_s: float) -> None:
        self.kafka, self.producer, self.partition = kafka, producer, partition
        self.expected, self.limit, self.timeout_s = expected, limit, timeout_s
        self.state: CommitState | None = None
        self.clock = 0  # the write clock of the committed state
        self.committed = False

    def call(self, what: str, fn: Callable[[], T], patience_s: float | None = None) -> T:
        """A transactional call; retriable errors are retried for `patience_s` (default: the
        request timeout), a fenced producer is judged by _fenced, others raised."""
        deadline = time.monotonic() + (patience_s or self.kafka.request_timeout_s)
        while True:
            try:
                return fn()
            except (KafkaException, SystemError) as raised:
                exc = _kafka_exception(raised)
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() in _FENCED_ERRORS:
                    raise self._fenced(what) from exc
                if (isinstance(err, KafkaError) and err.retriable()
                        and not err.txn_requires_abort() and time.monotonic() < deadline):
                    time.sleep(0.2)
                    continue
                raise KafkaUnavailable(
                    f"{self.kafka._where()} failed to {what} for {self.kafka.input_topic!r} "
                    f"partition {self.partition}: {exc}." + self.kafka._login_hint()
                ) from exc

    def _fenced(self, what: str) -> Exception:
        """This transaction was fenced: by another committer of the partition (its
        init_transactions()), or by the broker because it outlived transaction.timeout.ms.
        Superseded only when the committed state moves on (the other committer's commit lands
        within a few seconds); otherwise a failure, so that the range is retried."""
        deadline = time.monotonic() + 10
        while True:
            with suppress(KafkaUnavailable):
                now = self.kafka.offsets([self.partition], settled=True)[0].state
                if now != self.expected:
                    return Superseded(
                        f"Another run of partition {self.partition} committed it while this "
                        f"run tried to {what} ({now.describe()}; this run's transaction was "
                        "fenced). Nothing of this run was committed."
                    )
            if time.monotonic() > deadline:
                return KafkaUnavailable(
                    f"This run's transaction on {self.kafka.input_topic!r} partition "
                    f"{self.partition} was fenced while it tried to {what}, and no other run "
                    "has committed the partition since: another committer began and did not "
                    "finish, or the transaction outlived transaction.timeout.ms "
                    f"({self.timeout_s:.0f}s; KAFKA_DELIVERY_TIMEOUT_S + 30 s). Nothing of this "
                    "run was committed."
                )
            time.sleep(0.5)

    def deliver(
        self, letters: Sequence[tuple[int, str]], write_time: Callable[[int], int] | None = None
    ) -> dict[str, int]:
        """Send the dead letter of each (offset, reason), re-read from the input topic, and wait
        for the broker's acknowledgements; returns the letters acknowledged, by reason.
        `write_time`: each offset's write time (core/clock.py), carried by its letter."""
        if not letters:
            return {}
        reasons = dict(letters)
        delivered: dict[str, int] = {}
        errors: list[KafkaError] = []

        def report(err: KafkaError | None, _msg: Message, reason: str) -> None:
            if err is None:
                delivered[reason] = delivered.get(reason, 0) + 1
            else:
                errors.append(err)

        for offset, message in self.kafka.iter_offsets(self.partition, list(reasons)):
            source = _source(self.kafka.input_topic, self.partition, offset, message,
                             None if write_time is None else write_time(offset))
            one = letter(source, reasons[offset], self.limit)
            while True:
                try:
                    self.call("deliver dead letters", lambda one=one: self.producer.produce(
                        self.kafka.dlq_topic, value=one.value, key=one.key, headers=one.headers,
                        on_delivery=lambda err, msg, r=one.reason: report(err, msg, r),
                    ))
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self.call("deliver dead letters", lambda: self.producer.poll(0.1))
            self.call("deliver dead letters", lambda: self.producer.poll(0))
        remaining = self.call("deliver dead letters",
                              lambda: self.producer.flush(self.kafka.delivery_timeout_s + 5))
        total = sum(delivered.values())
        if any(err.code() in _FENCED_ERRORS for err in errors):
            # A newer committer's init_transactions() bumped the epoch while letters were sent.
            raise self._fenced("deliver dead letters")
        if remaining or errors or total != len(reasons):
            first = errors[0].str() if errors else f"{remaining} still queued"
            raise KafkaUnavailable(
                f"Dead letters could not be delivered: only {total} of {len(reasons)} reached "
                f"topic {self.kafka.dlq_topic!r} on {self.kafka.bootstrap_servers} within "
                f"{self.kafka.delivery_timeout_s:.0f}s ({first}). Check that the topic exists "
                "and accepts writes."
            )
        return delivered

    def commit(self, end: int, clock: int = 0, partitions: int = 0,
               barrier: Barrier = (), lower_clock: bool = False) -> CommitState:
        """Commit `end` with the next token, together with the letters delivered; the write
        clock recorded is `clock`, never below the one committed (it only moves forward) unless
        `lower_clock` (reset-clock: the committed one is wrong). `partitions`: the topic's
        partition count the run saw; `barrier`: a claim's (core/growth.py)."""
        assert self.state is not None
        new = CommitState(end, self.state.token + 1)
        recorded = clock if lower_clock else max(clock, self.clock)
        offsets = [TopicPartition(
            self.kafka.input_topic, self.partition, end,
            metadata=commit_metadata(new.token, recorded, partitions, barrier,
                                     socket.gethostname()))]
        group = self.kafka.consumer.consumer_group_metadata()
        timeout = self.kafka.request_timeout_s
        self.call("commit the offset", lambda: self.producer.send_offsets_to_transaction(
            offsets, group, timeout))
        try:
            # librdkafka: a commit that timed out is called again, until the transaction's own
            # timeout; it never commits twice.
            self.call("commit the transaction",
                      lambda: self.producer.commit_transaction(timeout), patience_s=self.timeout_s)
        except KafkaUnavailable as exc:
            # Did it land all the same? Then the run committed, and must say so.
            try:
                now = self.kafka.offsets([self.partition], settled=True)[0].state
            except KafkaUnavailable:
                before = "none" if self.expected.offset is None else self.expected.offset
                raise CommitUnknown(
                    f"{exc} Whether offset {end} of partition {self.partition} was committed is "
                    "unknown (the broker did not answer the check either): check with "
                    f"`programuser-dagster lag`. Committed {end}: it was; {before}: it was not."
                ) from exc
            if now == new:
                self.committed = True
                return new
            raise
        self.committed = True
        return new

    def abort(self) -> None:
        """Best effort: an abort that fails is completed by the next committer's
        init_transactions(), or by the transaction's timeout."""
        with suppress(KafkaException):
            self.producer.abort_transaction(self.kafka.request_timeout_s)


def _source(topic: str, partition: int, offset: int, message: Message | None,
            write_time_us: int | None = None) -> Source:
    if message is None:  # gone since it was read: the letter says where it was
        return Source(topic, partition, offset, None, None,
                      [("original_deleted", b"true")], None, write_time_us)
    return Source(topic, partition, offset, message.key(), message.value(),
                  list(message.headers() or []), record_time_ms(message), write_time_us)


def record_time_ms(message: Message) -> int | None:
    """The record's timestamp (ms), or None when it has none."""
    ts_type, ts = message.timestamp()
    has_ts = ts_type != 0 and ts is not None and ts >= 0  # 0 = TIMESTAMP_NOT_AVAILABLE
    return ts if has_ts else None


def append_time_ms(message: Message) -> int | None:
    """The record's timestamp (ms) if the broker set it (LogAppendTime), else None."""
    ts_type, ts = message.timestamp()
    return ts if ts_type == TIMESTAMP_LOG_APPEND_TIME and ts is not None and ts >= 0 else None


def _kafka_exception(raised: BaseException) -> KafkaException:
    """The KafkaException behind `raised`. A fatal error (a fenced producer) raised by flush()
    while it still serves delivery callbacks surfaces as a SystemError from the callback, with
    the KafkaException as its context."""
    if isinstance(raised, KafkaException):
        return raised
    context = raised.__context__
    if isinstance(context, KafkaException):
        return context
    raise raised


def _number(pattern: re.Pattern[str], metadata: str | None) -> int:
    match = pattern.search(metadata or "")
    return int(match.group(1)) if match else 0


def _token(metadata: str | None) -> int:
    return _number(_TOKEN, metadata)


def _clock(metadata: str | None) -> int:
    return _number(_CLOCK, metadata)


def _barrier(metadata: str | None) -> Barrier:
    match = _BARRIER.search(metadata or "")
    if not match:
        return ()
    return tuple((int(q), int(mark)) for q, mark in
                 (pair.split(":") for pair in match.group(1).split(",")))


def _host(metadata: str | None) -> str:
    match = _HOST.search(metadata or "")
    return match.group(1) if match else ""


def commit_metadata(token: int, clock: int, partitions: int = 0, barrier: Barrier = (),
                    host: str = "") -> str:
    """The metadata committed with an offset (parsed back by KafkaResource.offsets): the
    fence's token, the write clock (core/clock.py), the mark of a commit under the escaped
    transactional id, the topic's partition count and a claim's barrier (core/growth.py), and the
    committing host (core/clock_skew.py)."""
    text = f"{_TXN_PREFIX} token={token} clock={clock} id=2"
    if partitions:
        text += f" partitions={partitions}"
    if barrier:
        text += " barrier=" + ",".join(f"{q}:{mark}" for q, mark in barrier)
    name = "".join(host.split())[:255]
    return text + (f" host={name}" if name else "")


def transactional_id(group: str, topic: str, partition: int) -> str:
    """`programuser-dagster.<group>.<topic>.<partition>`, with '%' and '.' of the group written
    %25 and %2E: the group then holds no '.', so no two (group, topic, partition) share an id
    (before issue 24, group 'a.b' + topic 'c' and group 'a' + topic 'b.c' did, and fenced each
    other's commits). A group with neither character keeps the id it had, and its fence."""
    escaped = group.replace("%", "%25").replace(".", "%2E")
    return f"{_TXN_PREFIX}.{escaped}.{topic}.{partition}"


def legacy_transactional_id(group: str, topic: str, partition: int) -> str:
    """The id before issue 24 (ambiguous): committers of the code before the upgrade use it."""
    return f"{_TXN_PREFIX}.{group}.{topic}.{partition}"
