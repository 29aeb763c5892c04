"""The Kafka connection: the resource's settings (its fields, secrets by EnvVar), the TLS check
and the clients every other part uses (consumer, observer, peeker), with their configuration.

Follows confluent-kafka's guidance for at-least-once batch consumers: explicit assign() of one
partition at a start offset (no group membership, so no rebalancing mid-run),
enable.auto.commit=false, consume() in batches, and the offset committed once the work is
durable (fence.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from ..client_logs import kafka_logger
from ..secrets import reveal
from ..settings import DEFAULTS
from .errors import KafkaUnavailable
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


class KafkaClients(ConfigurableResource):
    """The input topic, its consumer group and its dead-letter topic on one Kafka cluster: the
    settings and the clients (KafkaResource adds what it does with them)."""

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

    def _watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        try:
            return self.consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.request_timeout_s, cached=False)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"{self._where()} did not return the watermarks of {topic!r} partition "
                f"{partition}: {exc}." + self._login_hint()) from exc
