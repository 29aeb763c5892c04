"""Environment variables -> one typed, checked settings object.

Every command, the local stack and the Dagster resources read configuration from here, so the names,
defaults and checks live in exactly one place (docs/configuration.md lists them). A default is the
`Settings` field's (`DEFAULTS` holds them for other modules); `VARIABLES` says which variable
sets which field; each variable has one rule, used both by `Settings.from_env` and whenever a
`Settings` is built, so that a refused value stops the Definitions or a command at once, in one
line naming the variable. Secrets (passwords) are not read here: the resources take them
through dagster.EnvVar so that they are never shown.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")

# The two record-size limits, each defined here only. Input records may be ~4 MB of payload
# plus key and headers: the broker, the input topic and our producer of it allow this much.
INPUT_MAX_MESSAGE_BYTES = 5 * 1024 * 1024
# A dead letter is an input record plus the headers we add (reason, source topic, partition,
# offset, timestamp, ...: ~125 bytes; 64 KiB is room for any of them), so the dead-letter topic
# and its producer allow more than the input topic: a letter of the largest input record fits.
DEAD_LETTER_HEADROOM_BYTES = 64 * 1024
DEAD_LETTER_MAX_MESSAGE_BYTES = INPUT_MAX_MESSAGE_BYTES + DEAD_LETTER_HEADROOM_BYTES


# The Cassandra IO manager's record of what each run wrote, beside the table (schema.cql),
# kept this long: a run's commit step can be re-executed from the UI for as long.
RECEIPTS_TABLE = "write_receipts"
RECEIPT_DAYS = 30
# What `redrive` wrote, by (source partition, source offset, write time): a letter is written
# once however often redrive runs, with whatever filters (schema.cql).
REDRIVEN_TABLE = "redriven_letters"
# Each partition's last commit, kept without TTL where Kafka's offset retention cannot remove it
# (core/kept_commit.py, schema.cql).
KEPT_COMMITS_TABLE = "kept_commits"
# A run also ends its range once it has this many dead letters: its receipt, which lists each
# one's offset and reason, stays ~3 MB compressed, far below Cassandra's largest mutation.
DEAD_LETTERS_PER_RUN = 1_000_000
# A run's writes go in up to its range's length, in microseconds, ahead of the wall clock
# (core/clock.py), and the clock-skew check allows a committed clock that far ahead of a host's:
# at most this many offsets per run keeps that lead, and the allowance, within 1 s.
MAX_RANGE_MESSAGES = 1_000_000
# A commit's transaction may last KAFKA_DELIVERY_TIMEOUT_S + this (transaction.timeout.ms).
TRANSACTION_EXTRA_S = 30
# A run's dead letters are sent within that transaction: at this rate, which a healthy cluster
# beats several times, the most a run may collect (PROGRAMUSER_DEAD_LETTER_BYTES) must fit.
DEAD_LETTER_SEND_BYTES_PER_S = 10 * 1024 * 1024
# Dagster abandons a sensor tick after 60 s (its default DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS),
# and an abandoned tick reports nothing. A tick's Kafka calls run one after another (metadata;
# committed offsets, retried for up to one more timeout; watermarks): a quarter of the tick
# per call leaves a tick whose broker stalls room to fail with the broker's error instead.
SENSOR_TICK_S = 60
SENSOR_TICK_KAFKA_CALLS = 4


def check_identifier(name: str, what: str) -> str:
    """CQL identifiers cannot be bound as parameters, so only plain ones are allowed."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} is not a plain identifier: use letters, digits and '_' "
            "(starting with a letter, at most 48 characters)."
        )
    return name


# -- the rules: parse (from_env only) and check (every Settings) -------------------------------


class _Refused(ValueError):
    """Why a value is refused; the caller puts the variable and the value in front."""


def _use(allowed: str) -> _Refused:
    return _Refused(f"is not allowed: use {allowed}.")


Parse = Callable[[str], Any]
Check = Callable[[Any], Any]


def _text(raw: str) -> str:
    return raw


def _whole(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise _Refused("is not a whole number.") from None


def _number(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise _Refused("is not a number.") from None


_FLAG_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _flag(raw: str) -> bool:
    try:
        return _FLAG_WORDS[raw.lower()]
    except KeyError:
        raise _use("true or false (or 1/0, yes/no)") from None


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# A zero or negative count, size, interval or timeout makes loops that never end (a run of 0
# messages succeeds and is retried at once), hence "positive" everywhere.
def _count(at_most: int | None = None, allowed: str = "a whole number of at least 1") -> Check:
    def check(value: Any) -> int:
        if (isinstance(value, bool) or not isinstance(value, int) or value < 1
                or (at_most is not None and value > at_most)):
            raise _use(allowed)
        return value
    return check


def _seconds(at_most: float | None = None, allowed: str = "seconds above 0") -> Check:
    def check(value: Any) -> float:
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value <= 0
                or (at_most is not None and value > at_most)):
            raise _use(allowed)
        return float(value)
    return check


def _one_of(*choices: str) -> Check:
    """Case-insensitive; kept upper-case, as the clients spell them."""
    def check(value: Any) -> str:
        word = value.strip().upper() if isinstance(value, str) else None
        if word not in choices:
            raise _use("one of " + ", ".join(choices))
        return word
    return check


def _optional(check: Check) -> Check:
    """None (unset) or a value the check allows; a blank string means unset."""
    def maybe(value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return check(value)
    return maybe


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _use("a non-empty name")
    return value.strip()


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _use("true or false (or 1/0, yes/no)")
    return value


# Kafka's legal topic names. The default topics are "{env}.programuser.info" and that plus
# ".failed", so an environment name leaves room for the longer of them.
_TOPIC_MAX = 249
_ENV_MAX = _TOPIC_MAX - len(".programuser.info.failed")


def _kafka_name(longest: int, allowed: str) -> Check:
    legal = re.compile(rf"[A-Za-z0-9._-]{{1,{longest}}}")

    def check(value: Any) -> str:
        if not isinstance(value, str) or not legal.fullmatch(value) or value in (".", ".."):
            raise _use(allowed)
        return value
    return check


_ADDRESS = re.compile(r"\S+:[0-9]{1,5}")


def _brokers(value: Any) -> str:
    entries = [e.strip() for e in value.split(",")] if isinstance(value, str) else []
    if not entries or not all(
        _ADDRESS.fullmatch(e) and 1 <= int(e.rpartition(":")[2]) <= 65535 for e in entries
    ):
        raise _use("comma-separated host:port, each port 1 to 65535")
    return ",".join(entries)


def _hosts(value: Any) -> tuple[str, ...]:
    if (not isinstance(value, tuple | list) or not value or not all(
        isinstance(h, str) and h and not any(c.isspace() or c == "," for c in h) for h in value
    )):
        raise _use("at least one host, comma-separated")
    return tuple(value)


def _listen_host(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(
            c.isspace() or c in ",/" for c in value.strip()):
        raise _use("one host name or address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
    return value.strip()


def _replication(value: Any) -> str:
    # It is written into CREATE KEYSPACE as is (a map cannot be bound as a parameter).
    text = value.strip() if isinstance(value, str) else ""
    if not (text.startswith("{") and text.endswith("}") and "class" in text):
        raise _use("a CQL replication map with a class, "
                   "e.g. {'class': 'NetworkTopologyStrategy', 'dc1': 3}")
    return text


def _identifier(what: str) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _use("a plain identifier")
        return check_identifier(value, what)
    return check


def _table(value: Any) -> str:
    if value in (RECEIPTS_TABLE, REDRIVEN_TABLE, KEPT_COMMITS_TABLE):
        raise _use(f"another name: {value} is one of the pipeline's own tables")
    return _identifier("CASSANDRA_TABLE")(value)


def _ca_file(directory_ok: bool = False) -> Check:
    """A CA file that exists and is readable, now rather than at the first TLS handshake."""
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _use("the path of the CA certificate file (PEM)")
        if directory_ok and value == "probe":  # librdkafka: look for the system's CA store
            return value
        if not os.path.exists(value):
            raise _Refused("does not exist: set it to the CA certificate file (PEM).")
        if not (os.path.isfile(value) or (directory_ok and os.path.isdir(value))):
            raise _Refused("is not a file: set it to the CA certificate file (PEM).")
        if not os.access(value, os.R_OK):
            raise _Refused("is not readable: set it to the CA certificate file (PEM).")
        return value
    return check


_CRON_FIELD = re.compile(r"[0-9*/,A-Za-z-]+")


def _http_url(value: Any) -> str:
    if not isinstance(value, str) or not _is_http_url(value):
        raise _Refused("is not an http(s) URL with a host, e.g. https://dagster.example.org")
    return value.rstrip("/")


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (
            parts.port is None or parts.port > 0)
    except ValueError:  # a bad port or bracketed host
        return False


def check_webhook_url(raw: str) -> str:
    """The alert webhook's URL, checked without ever showing it: its path may hold a token."""
    url = raw.strip()
    if not _is_http_url(url):
        raise ValueError(f"{ALERT_WEBHOOK_URL} is not an http(s) URL with a host (the value is "
                         "not shown: it may hold a token); unset it to send no notices.")
    return url


def _cron(value: Any) -> str:
    """Five cron fields (Dagster checks the values when the definitions load)."""
    fields = value.split() if isinstance(value, str) else []
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise _use("a cron schedule of five fields, e.g. '17 3 * * *' (03:17 every day)")
    return " ".join(fields)


@dataclass(frozen=True)
class _Variable:
    """One environment variable: the field it sets, how its text is read, what is allowed."""

    name: str
    field: str
    parse: Parse
    check: Check

    def read(self, raw: str) -> Any:
        """A set (non-blank) variable's text -> its checked value."""
        try:
            return self.check(self.parse(raw))
        except _Refused as why:
            raise ValueError(f"{self.name}={raw!r} {why}") from None

    def checked(self, value: Any) -> Any:
        try:
            return self.check(value)
        except _Refused as why:
            raise ValueError(f"{self.name}={value!r} {why}") from None


_WRITE_CONSISTENCY = ("ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM",
                      "EACH_QUORUM", "LOCAL_ONE")


def _write_consistency(value: Any) -> str:
    if isinstance(value, str) and value.strip().upper() == "ANY":
        raise _Refused(
            "is not allowed: ANY acknowledges a write kept only as a hint for a replica that is "
            "down, which is not a durable write, and verify cannot read at ANY. Use one of "
            + ", ".join(_WRITE_CONSISTENCY) + ".")
    return _one_of(*_WRITE_CONSISTENCY)(value)


_TOPIC_NAME = _kafka_name(_TOPIC_MAX, f"a Kafka topic name: 1 to {_TOPIC_MAX} of A-Z a-z 0-9 . _ -")

# One row per variable. PROGRAMUSER_ENV comes first: the default topic names are made from it,
# so a bad environment name is reported as itself rather than as a bad topic.
_TABLE: tuple[_Variable, ...] = (
    _Variable("PROGRAMUSER_ENV", "env", _text, _kafka_name(
        _ENV_MAX, f"1 to {_ENV_MAX} of A-Z a-z 0-9 . _ - (it names the default topics)")),
    _Variable("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers", _text, _brokers),
    _Variable("KAFKA_INPUT_TOPIC", "kafka_input_topic", _text, _TOPIC_NAME),
    _Variable("KAFKA_GROUP_ID", "kafka_group_id", _text, _name),
    _Variable("KAFKA_DLQ_TOPIC", "kafka_dlq_topic", _text, _TOPIC_NAME),
    _Variable("KAFKA_INPUT_PARTITIONS", "kafka_partitions", _whole, _count()),
    _Variable("KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol", _text,
              _optional(_one_of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))),
    _Variable("KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism", _text, _optional(_one_of(
        "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"))),
    _Variable("KAFKA_SASL_USERNAME", "kafka_sasl_username", _text, _optional(_name)),
    # librdkafka takes a CA file, a directory of them, or "probe".
    _Variable("KAFKA_SSL_CA_LOCATION", "kafka_ssl_ca_location", _text,
              _optional(_ca_file(directory_ok=True))),
    # A commit's transaction may last this + 30 s: below the broker's default
    # transaction.max.timeout.ms (900 s), or no commit could begin.
    _Variable("KAFKA_DELIVERY_TIMEOUT_S", "kafka_delivery_timeout_s", _number,
              _seconds(at_most=600, allowed="seconds above 0, at most 600")),
    _Variable("KAFKA_REQUEST_TIMEOUT_S", "kafka_request_timeout_s", _number, _seconds(
        at_most=SENSOR_TICK_S / SENSOR_TICK_KAFKA_CALLS,
        allowed=f"seconds above 0, at most {SENSOR_TICK_S / SENSOR_TICK_KAFKA_CALLS:g} (a "
        f"sensor tick, which Dagster ends after {SENSOR_TICK_S} s, makes "
        f"{SENSOR_TICK_KAFKA_CALLS} Kafka calls in a row)")),
    _Variable("CASSANDRA_HOSTS", "cassandra_hosts", _list, _hosts),
    _Variable("CASSANDRA_PORT", "cassandra_port", _whole,
              _count(at_most=65535, allowed="a port, 1 to 65535")),
    _Variable("CASSANDRA_KEYSPACE", "cassandra_keyspace", _text,
              _identifier("CASSANDRA_KEYSPACE")),
    _Variable("CASSANDRA_TABLE", "cassandra_table", _text, _table),
    _Variable("CASSANDRA_REPLICATION", "cassandra_replication", _text, _replication),
    _Variable("CASSANDRA_CONSISTENCY", "cassandra_consistency", _text,
              _write_consistency),
    _Variable("CASSANDRA_LOCAL_DC", "cassandra_local_dc", _text, _optional(_name)),
    _Variable("CASSANDRA_USERNAME", "cassandra_username", _text, _optional(_name)),
    _Variable("CASSANDRA_SSL_CA", "cassandra_ssl_ca", _text, _optional(_ca_file())),
    _Variable("CASSANDRA_CREATE_SCHEMA", "cassandra_create_schema", _flag, _boolean),
    _Variable("CASSANDRA_CONCURRENCY", "cassandra_concurrency", _whole, _count()),
    _Variable("CASSANDRA_BATCH_ROWS", "cassandra_batch_rows", _whole, _count()),
    _Variable("CASSANDRA_BATCH_BYTES", "cassandra_batch_bytes", _whole, _count(
        at_most=50 * 1024, allowed="a whole number of at least 1, at most 51200 (50 KiB)")),
    _Variable("CASSANDRA_REQUEST_TIMEOUT_S", "cassandra_request_timeout_s", _number, _seconds()),
    _Variable("PROGRAMUSER_MAX_MESSAGES", "max_messages", _whole, _count(
        at_most=MAX_RANGE_MESSAGES, allowed=f"a whole number of at least 1, at most "
        f"{MAX_RANGE_MESSAGES} (a run writes up to its length in microseconds ahead of the "
        "wall clock)")),
    _Variable("PROGRAMUSER_CHUNK_MESSAGES", "chunk_messages", _whole, _count()),
    _Variable("PROGRAMUSER_CHUNK_BYTES", "chunk_bytes", _whole, _count()),
    _Variable("PROGRAMUSER_DEAD_LETTER_BYTES", "dead_letter_bytes", _whole, _count()),
    _Variable("PROGRAMUSER_SENSOR_INTERVAL_S", "sensor_interval_s", _whole, _count()),
    _Variable("PROGRAMUSER_FRESHNESS_FAIL_S", "freshness_fail_s", _whole, _count()),
    _Variable("PROGRAMUSER_DLQ_SHARE_WARN", "dead_letter_share_warn", _number, _seconds(
        at_most=1.0, allowed="a share above 0 and at most 1, e.g. 0.05")),
    _Variable("PROGRAMUSER_STALL_WARN_S", "stall_warn_s", _whole, _count()),
    _Variable("PROGRAMUSER_CODE_LOCATION", "code_location", _text, _name),
    # Above it a run refuses to write (core/clock_skew.py); a few seconds is what NTP keeps easily.
    _Variable("PROGRAMUSER_CLOCK_SKEW_MAX_S", "clock_skew_max_s", _number, _seconds(
        at_most=3600, allowed="seconds above 0, at most 3600")),
    # -- the trigger policy (core/trigger.py): when the sensor starts a partition's run --
    _Variable("PROGRAMUSER_TRIGGER_LAG_RECORDS", "trigger_lag_records", _whole, _count(
        allowed="a whole number of at least 1 (1: a run as soon as there is a record)")),
    _Variable("PROGRAMUSER_TRIGGER_AGE_S", "trigger_age_s", _number, _seconds()),
    # Unset: half of the broker's offsets.retention.minutes (core/kept_commit.py).
    _Variable("PROGRAMUSER_OFFSET_RENEW_S", "offset_renew_s", _whole, _optional(_count(
        allowed="a whole number of seconds of at least 1 (or blank: half of the broker's "
        "offsets.retention.minutes)"))),
    # -- history pruning (housekeeping/history.py) --
    _Variable("PROGRAMUSER_HISTORY_KEEP_DAYS", "history_keep_days", _number, _seconds(
        at_most=3650, allowed="days above 0, at most 3650 (fractions allowed, e.g. 0.5)")),
    _Variable("PROGRAMUSER_HISTORY_PRUNE_CRON", "history_prune_cron", _text, _cron),
    # -- the metrics exporter (observe/exporter.py) --
    _Variable("PROGRAMUSER_METRICS_HOST", "metrics_host", _text, _listen_host),
    _Variable("PROGRAMUSER_METRICS_PORT", "metrics_port", _whole,
              _count(at_most=65535, allowed="a port, 1 to 65535")),
    # -- failure notices (observe/notices.py): the UI's address, for links to runs --
    _Variable("PROGRAMUSER_UI_URL", "ui_url", _text, _optional(_http_url)),
)

# Every variable Settings reads -> the field it sets (e.g. to check that a deployment passes
# each of them to its runs).
VARIABLES: Mapping[str, str] = MappingProxyType({v.name: v.field for v in _TABLE})
# The secrets' variables: read by the resources through dagster.EnvVar, never by Settings.
KAFKA_SASL_PASSWORD = "KAFKA_SASL_PASSWORD"
CASSANDRA_PASSWORD = "CASSANDRA_PASSWORD"
SECRET_VARIABLES = (KAFKA_SASL_PASSWORD, CASSANDRA_PASSWORD)
# Where failure notices are posted (observe/notices.py; unset: none). Its path may hold a token,
# so it is a secret too, read by the notice sensors only (runs do not need it).
ALERT_WEBHOOK_URL = "PROGRAMUSER_ALERT_WEBHOOK_URL"


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
    # Timeout of metadata, watermark, committed and commit calls.
    kafka_request_timeout_s: float = 15.0
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
    # Write requests (batches) in flight at once.
    cassandra_concurrency: int = 64
    # Rows of one partition (program_id) per UNLOGGED batch; 1 sends one INSERT per row.
    cassandra_batch_rows: int = 32
    # Estimated bytes per batch, kept under Cassandra's default batch_size_fail_threshold
    # (50 KiB, so more is refused here): a batch above it fails.
    cassandra_batch_bytes: int = 24 * 1024
    cassandra_request_timeout_s: float = 30.0  # per request
    # 100,000: a run holds a chunk or two of chunk_messages, whatever its range, so this bounds a
    # run's length (~15 s here), not its memory; large enough that Dagster's fixed cost per run
    # stays a small share, and a retry repeats at most this much work.
    max_messages: int = 100_000
    # Messages read, flattened and written together: a run holds a chunk or two; big enough
    # that a chunk's rows of one program fill the per-program batches.
    chunk_messages: int = 10_000
    # A chunk is also cut at this many bytes of message values, so a backlog of records near
    # the 5 MiB limit holds ~64 MiB, not chunk_messages x 5 MiB.
    chunk_bytes: int = 64 * 1024 * 1024
    # The commit step sends a run's dead letters in one Kafka transaction, which must end within
    # transaction.timeout.ms (KAFKA_DELIVERY_TIMEOUT_S + 30 s): a run stops reading at the chunk
    # where its letters reach this many bytes, and the next run goes on from there.
    dead_letter_bytes: int = 256 * 1024 * 1024
    sensor_interval_s: int = 30
    freshness_fail_s: int = 3600
    dead_letter_share_warn: float = 0.05
    stall_warn_s: int = 900
    # The code location's name in the workspace (workspace.yaml): drain labels its runs with it
    # so the UI's job pages and Partitions page count them like the daemon's runs.
    code_location: str = "programuser_dagster"
    # How far a run's host clock may be from the partition's clock or the broker's before the
    # run refuses to write (docs/contract.md: Write times).
    clock_skew_max_s: float = 2.0
    # -- the trigger policy (core/trigger.py) --
    # The sensor starts a partition's run at this many records (a backlog starts at once: at
    # most ~1/100 of a full run, a few seconds of work behind) ...
    trigger_lag_records: int = 1_000
    # ... or once its oldest uncommitted record is this old: at a trickle a partition's run
    # every ~5 min (1 event/s over 4 partitions: ~1,150 runs a day instead of 11,520), each event
    # in Cassandra within this, a sensor interval and one run (docs/configuration.md).
    trigger_age_s: float = 300.0
    # A commit older than this is renewed, so that Kafka's offset retention never removes it
    # (None: half of the broker's offsets.retention.minutes; core/kept_commit.py).
    offset_renew_s: int | None = None
    # -- history pruning (housekeeping/history.py) --
    # Days of Dagster history (runs, their events and logs, observations, check evaluations)
    # the daily prune keeps; what it keeps whatever their age: docs/operating.md.
    history_keep_days: float = 14.0
    # When the prune runs (the instance's time zone, UTC unless set): at night, off the hour.
    history_prune_cron: str = "17 3 * * *"
    # -- the metrics exporter (observe/exporter.py) --
    # Where `programuser-dagster metrics` serves /metrics: loopback unless told (a container
    # sets 0.0.0.0); 9464 is the port OpenTelemetry's Prometheus exporters use.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # -- failure notices (observe/notices.py) --
    # The Dagster UI's address (e.g. https://dagster.example.org): a notice links to the run.
    ui_url: str | None = None

    def __post_init__(self) -> None:
        # Topic and group names default from the environment name, as the Flink job's did.
        if not self.kafka_input_topic:
            object.__setattr__(self, "kafka_input_topic", f"{self.env}.programuser.info")
        if not self.kafka_group_id:
            object.__setattr__(self, "kafka_group_id", f"{self.env}-programuser-group")
        if not self.kafka_dlq_topic:
            object.__setattr__(self, "kafka_dlq_topic", f"{self.kafka_input_topic}.failed")
        # Every field, however this object was built (from_env, directly, replace, for_env);
        # a check may normalise its value (e.g. upper-case).
        for variable in _TABLE:
            value = variable.checked(getattr(self, variable.field))
            object.__setattr__(self, variable.field, value)
        self._check_together()

    def _check_together(self) -> None:
        """Rules between variables, each refusal naming the variable to change."""
        if self.kafka_dlq_topic == self.kafka_input_topic:
            raise ValueError(
                f"KAFKA_DLQ_TOPIC={self.kafka_dlq_topic!r} is the input topic: every dead letter "
                "would be read again as input, and dead-lettered again, forever. Set "
                "KAFKA_DLQ_TOPIC to another topic (unset: the input topic + '.failed').")
        transaction_s = self.kafka_delivery_timeout_s + TRANSACTION_EXTRA_S
        most = int(transaction_s * DEAD_LETTER_SEND_BYTES_PER_S)
        if self.dead_letter_bytes > most:
            raise ValueError(
                f"PROGRAMUSER_DEAD_LETTER_BYTES={self.dead_letter_bytes!r} is more than a run "
                f"can send as dead letters within its transaction ({transaction_s:g} s: "
                f"KAFKA_DELIVERY_TIMEOUT_S + {TRANSACTION_EXTRA_S} s, at "
                f"{DEAD_LETTER_SEND_BYTES_PER_S // (1024 * 1024)} MiB/s): use at most {most}, "
                "or raise KAFKA_DELIVERY_TIMEOUT_S.")
        if self.trigger_age_s + self.sensor_interval_s >= self.freshness_fail_s:
            raise ValueError(
                f"PROGRAMUSER_TRIGGER_AGE_S={self.trigger_age_s:g} plus the sensor's interval "
                f"(PROGRAMUSER_SENSOR_INTERVAL_S={self.sensor_interval_s}) reaches "
                f"PROGRAMUSER_FRESHNESS_FAIL_S={self.freshness_fail_s}: at a trickle the table "
                "would be reported stale by design. Lower PROGRAMUSER_TRIGGER_AGE_S or raise "
                "PROGRAMUSER_FRESHNESS_FAIL_S.")

    def for_env(self, env: str, keyspace: str, partitions: int | None = None) -> Settings:
        """These settings for another environment name: its default topics and group (derived
        as for any environment), the given keyspace and, if given, partition count."""
        return replace(
            self, env=env, kafka_input_topic="", kafka_group_id="", kafka_dlq_topic="",
            cassandra_keyspace=keyspace, kafka_partitions=partitions or self.kafka_partitions,
        )

    def environment(self) -> dict[str, str]:
        """Every variable, set to this object's value as from_env reads it back (an unset
        optional field: blank, which means unset): for a process or container that must run
        with exactly these settings. Secrets are not settings and are not included."""
        def text(value: Any) -> str:
            if value is None:
                return ""
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, tuple):
                return ",".join(value)
            return str(value)  # str of an int or a float reads back as the same number

        return {v.name: text(getattr(self, v.field)) for v in _TABLE}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment gives: an unset or blank variable means the field's
        default; a refused value raises ValueError naming the variable, in one line."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable in _TABLE:
            raw = env.get(variable.name, "").strip()
            if raw:
                values[variable.field] = variable.read(raw)
        if env.get(ALERT_WEBHOOK_URL, "").strip():
            check_webhook_url(env[ALERT_WEBHOOK_URL])
        return cls(**values)


DEFAULTS: Settings = Settings()


def local_stack_hint(hosts: str) -> str:
    """A pointer to the local stack's status, for an error about servers that are all on this
    machine's loopback (hosts or host:port, comma-separated); nothing for any other address:
    production errors name the setting only."""
    def name(address: str) -> str:  # host, host:port, [v6]:port or a bare v6 address
        if address.startswith("["):
            return address[1:].split("]", 1)[0]
        return address.rsplit(":", 1)[0] if address.count(":") == 1 else address

    names = [name(h.strip()) for h in hosts.split(",") if h.strip()]
    loopback = all(n == "localhost" or n.startswith("127.") or n == "::1"
                   for n in names)
    return " (the local stack: `python -m devtools stack status`)" if names and loopback else ""


@contextmanager
def temporary_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore what was there (the bench reads
    an instance whose dagster.yaml takes its variables from the environment; the tests)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
