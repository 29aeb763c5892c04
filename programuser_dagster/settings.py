"""Environment variables -> one typed settings object.

Every command, the local stack and the Dagster resources read configuration from here, so the
names and defaults live in exactly one place (the README lists them). Secrets (passwords) are
not read here: the resources take them through dagster.EnvVar so that they are never shown.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")

# The two record-size limits, each defined here only. Input records may be ~4 MB of payload
# plus key and headers: the broker, the input topic and our producer of it allow this much.
INPUT_MAX_MESSAGE_BYTES = 5 * 1024 * 1024
# A dead letter is an input record plus the headers we add (reason, source topic, partition,
# offset, timestamp, ...: ~125 bytes; 64 KiB is room for any of them), so the dead-letter topic
# and its producer allow more than the input topic: a letter of the largest input record fits.
DEAD_LETTER_HEADROOM_BYTES = 64 * 1024
DEAD_LETTER_MAX_MESSAGE_BYTES = INPUT_MAX_MESSAGE_BYTES + DEAD_LETTER_HEADROOM_BYTES


def check_identifier(name: str, what: str) -> str:
    """CQL identifiers cannot be bound as parameters, so only plain ones are allowed."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} is not a plain identifier: use letters, digits and '_' "
            "(starting with a letter, at most 48 characters)."
        )
    return name


@dataclass(frozen=True)
class Settings:
    env: str = "dev"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_input_topic: str = ""
    kafka_group_id: str = ""
    kafka_dlq_topic: str = ""
    kafka_partitions: int = 4
    kafka_security_protocol: str | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_ssl_ca_location: str | None = None
    kafka_delivery_timeout_s: float = 30.0
    cassandra_hosts: tuple[str, ...] = ("127.0.0.1",)
    cassandra_port: int = 9042
    cassandra_keyspace: str = "sunbird_programs"
    cassandra_table: str = "program_enrollment"
    cassandra_replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    cassandra_consistency: str = "LOCAL_QUORUM"
    cassandra_local_dc: str | None = None
    cassandra_username: str | None = None
    cassandra_ssl_ca: str | None = None
    cassandra_create_schema: bool = True
    max_messages: int = 100_000  # why this size: jobs.IngestConfig.max_messages
    sensor_interval_s: int = 30
    freshness_fail_s: int = 3600
    dead_letter_share_warn: float = 0.05
    stall_warn_s: int = 900
    # The code location's name in the workspace (workspace.yaml): drain labels its runs with it
    # so the UI's job pages and Partitions page count them like the daemon's runs.
    code_location: str = "programuser_dagster"

    def __post_init__(self) -> None:
        # Topic and group names default from the environment name, as the Flink job's did.
        if not self.kafka_input_topic:
            object.__setattr__(self, "kafka_input_topic", f"{self.env}.programuser.info")
        if not self.kafka_group_id:
            object.__setattr__(self, "kafka_group_id", f"{self.env}-programuser-group")
        if not self.kafka_dlq_topic:
            object.__setattr__(self, "kafka_dlq_topic", f"{self.kafka_input_topic}.failed")
        check_identifier(self.cassandra_keyspace, "CASSANDRA_KEYSPACE")
        check_identifier(self.cassandra_table, "CASSANDRA_TABLE")

    def for_env(self, env: str, keyspace: str, partitions: int | None = None) -> Settings:
        """These settings for another environment name: its default topics and group (derived
        as for any environment), the given keyspace and, if given, partition count."""
        return replace(
            self, env=env, kafka_input_topic="", kafka_group_id="", kafka_dlq_topic="",
            cassandra_keyspace=keyspace, kafka_partitions=partitions or self.kafka_partitions,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str, default: str = "") -> str:
            return env.get(name, "").strip() or default

        def opt(name: str) -> str | None:
            return get(name) or None

        def number(name: str, default: str, kind: type = int) -> int | float:
            raw = get(name, default)
            try:
                return kind(raw)
            except ValueError:
                whole = " whole" if kind is int else ""
                raise ValueError(f"{name}={raw!r} is not a{whole} number.") from None

        def positive(name: str, default: str, kind: type = int, at_most: float | None = None,
                     allowed: str = "") -> int | float:
            # A zero or negative count, interval or timeout makes loops that never end (a run
            # of 0 messages succeeds and is retried at once): refused here, naming the variable.
            value = number(name, default, kind)
            if not math.isfinite(value) or value <= 0 or (at_most is not None and value > at_most):
                what = allowed or ("a whole number of at least 1" if kind is int
                                   else "a number above 0")
                raise ValueError(f"{name}={get(name, default)!r} is not allowed: use {what}.")
            return value

        return cls(
            env=get("PROGRAMUSER_ENV", "dev"),
            kafka_bootstrap_servers=get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            kafka_input_topic=get("KAFKA_INPUT_TOPIC"),
            kafka_group_id=get("KAFKA_GROUP_ID"),
            kafka_dlq_topic=get("KAFKA_DLQ_TOPIC"),
            kafka_partitions=int(positive("KAFKA_INPUT_PARTITIONS", "4")),
            kafka_security_protocol=opt("KAFKA_SECURITY_PROTOCOL"),
            kafka_sasl_mechanism=opt("KAFKA_SASL_MECHANISM"),
            kafka_sasl_username=opt("KAFKA_SASL_USERNAME"),
            kafka_ssl_ca_location=opt("KAFKA_SSL_CA_LOCATION"),
            kafka_delivery_timeout_s=float(
                # A commit's transaction may last this + 30 s: below the broker's default
                # transaction.max.timeout.ms (900 s), or no commit could begin.
                positive("KAFKA_DELIVERY_TIMEOUT_S", "30", float, at_most=600,
                         allowed="seconds above 0, at most 600")
            ),
            cassandra_hosts=tuple(
                h.strip() for h in get("CASSANDRA_HOSTS", "127.0.0.1").split(",") if h.strip()
            ),
            cassandra_port=int(
                positive("CASSANDRA_PORT", "9042", at_most=65535, allowed="a port, 1 to 65535")
            ),
            cassandra_keyspace=get("CASSANDRA_KEYSPACE", "sunbird_programs"),
            cassandra_table=get("CASSANDRA_TABLE", "program_enrollment"),
            cassandra_replication=get(
                "CASSANDRA_REPLICATION", "{'class': 'SimpleStrategy', 'replication_factor': 1}"
            ),
            cassandra_consistency=get("CASSANDRA_CONSISTENCY", "LOCAL_QUORUM").upper(),
            cassandra_local_dc=opt("CASSANDRA_LOCAL_DC"),
            cassandra_username=opt("CASSANDRA_USERNAME"),
            cassandra_ssl_ca=opt("CASSANDRA_SSL_CA"),
            cassandra_create_schema=get("CASSANDRA_CREATE_SCHEMA", "true").lower()
            not in ("false", "0", "no"),
            max_messages=int(positive("PROGRAMUSER_MAX_MESSAGES", "100000")),
            sensor_interval_s=int(positive("PROGRAMUSER_SENSOR_INTERVAL_S", "30")),
            freshness_fail_s=int(positive("PROGRAMUSER_FRESHNESS_FAIL_S", "3600")),
            dead_letter_share_warn=float(
                positive("PROGRAMUSER_DLQ_SHARE_WARN", "0.05", float, at_most=1.0,
                         allowed="a share above 0 and at most 1, e.g. 0.05")
            ),
            stall_warn_s=int(positive("PROGRAMUSER_STALL_WARN_S", "900")),
            code_location=get("PROGRAMUSER_CODE_LOCATION", "programuser_dagster"),
        )
