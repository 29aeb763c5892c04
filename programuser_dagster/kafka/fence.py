"""The fenced commit: a partition's dead letters and offset in one Kafka transaction.

Kafka has no compare-and-set on offsets (an assign-only group commits with generation -1,
accepted from anyone): a run reads the partition's committed state (offset, token) when it
starts, and commits in a Kafka transaction of the partition's own transactional.id, whose
init_transactions() aborts and fences any older committer of the partition; the transaction
re-reads the state and commits offset and token + 1 only if the state is still the one the run
started from. The run's dead letters are in the same transaction, so a read_committed reader
sees each range's letters once, with its commit.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TypeVar

from confluent_kafka import (
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from ..core.growth import claims
from ..core.kept_commit import KeptCommit
from ..core.offsets import Barrier, CommitState, PartitionOffsets
from ..settings import TRANSACTION_EXTRA_S
from .dead_letter_topic import DeadLetterTopic
from .dead_letters import Source, letter
from .errors import CommitUnknown, KafkaUnavailable, Superseded
from .metadata import _ID_2, _TXN_PREFIX, commit_metadata
from .offsets import record_time_ms

T = TypeVar("T")
# Errors that mean another committer of the partition initialised its transactions after us.
_FENCED_ERRORS = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)
# A produce request is one batch plus its request framing: the producer's request limit.
_REQUEST_FRAMING = 64 * 1024


class FencedCommits(DeadLetterTopic):
    """Commits through the fence: one transactional id per partition, the commit itself, and
    the claim of partitions added to the topic (a commit of each)."""

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
            txn.state, txn.before = state, current
            producer.begin_transaction()
            yield txn
        finally:
            if not txn.committed:
                txn.abort()


class FencedCommit:
    """One partition's commit in progress: its dead letters, then its offset, in one
    transaction (see KafkaResource.fenced_commit)."""

    def __init__(self, kafka: FencedCommits, producer: Producer, partition: int,
                 expected: CommitState, limit: int, timeout_s: float) -> None:
        self.kafka, self.producer, self.partition = kafka, producer, partition
        self.expected, self.limit, self.timeout_s = expected, limit, timeout_s
        self.state: CommitState | None = None
        self.before: PartitionOffsets | None = None  # the committed state, as the fence read it
        self.committed = False
        self.kept: KeptCommit | None = None  # what was committed, to keep (core/kept_commit.py)

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
                    "finish (or renewed the partition's commit: core/kept_commit.py), or the "
                    "transaction outlived transaction.timeout.ms "
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

    def commit(self, end: int, clock: int = 0, partitions: int | None = None,
               barrier: Barrier | None = None, lower_clock: bool = False,
               token_floor: int = 0) -> CommitState:
        """Commit `end` with the next token, together with the letters delivered; the write
        clock recorded is `clock`, never below the one committed (it only moves forward) unless
        `lower_clock` (reset-clock: the committed one is wrong). `partitions`: the topic's
        partition count the run saw; `barrier`: a claim's (core/growth.py). Either, when not
        given, is carried forward from the committed state: a commit that is not a run's
        (replay, reset-clock) neither forgets the count nor releases a hold. `token_floor`: the
        next token is above it too (replay resuming a partition whose commit Kafka lost: its
        tokens go on from the kept one's, core/kept_commit.py)."""
        assert self.state is not None and self.before is not None
        recorded = clock if lower_clock else max(clock, self.before.clock)
        partitions = self.before.partitions if partitions is None else partitions
        barrier = self.before.barrier if barrier is None else barrier
        return self._commit(end, max(self.state.token, token_floor) + 1, recorded, partitions,
                            barrier)

    def renew(self) -> CommitState:
        """Commit the committed state again, unchanged but for its time: the same offset, token,
        clock, count and barrier (core/kept_commit.py says why the token stays), so that the
        broker's offset retention counts from now."""
        before = self.before
        assert before is not None and before.committed is not None
        return self._commit(before.committed, before.token, before.clock, before.partitions,
                            before.barrier)

    def _commit(self, end: int, token: int, clock: int, partitions: int,
                barrier: Barrier) -> CommitState:
        new = CommitState(end, token)
        at = time.time()
        host = socket.gethostname()
        offsets = [TopicPartition(
            self.kafka.input_topic, self.partition, end,
            metadata=commit_metadata(token, clock, partitions, barrier, host, at))]
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
                now = self.kafka.offsets([self.partition], settled=True)[0]
            except KafkaUnavailable:
                before = "none" if self.expected.offset is None else self.expected.offset
                raise CommitUnknown(
                    f"{exc} Whether offset {end} of partition {self.partition} was committed is "
                    "unknown (the broker did not answer the check either): check with "
                    f"`programuser-dagster lag`. Committed {end}: it was; {before}: it was not."
                ) from exc
            if now.state != new or now.committed_at != float(int(at)):
                raise
        self.committed = True
        self.kept = KeptCommit(self.partition, end, token, clock, partitions, float(int(at)),
                               "".join(host.split())[:255])
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
