"""Settings: one default and one check per variable; a refused value is one line naming the
variable, whether it came from the environment or from code (pure, no server)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from programuser_dagster.settings import DEFAULTS, VARIABLES, Settings

# (variable, a refused value, words of what is allowed)
REFUSED = [
    ("PROGRAMUSER_MAX_MESSAGES", "0", "at least 1"),
    ("PROGRAMUSER_MAX_MESSAGES", "-5", "at least 1"),
    ("KAFKA_INPUT_PARTITIONS", "0", "at least 1"),
    ("KAFKA_INPUT_PARTITIONS", "-1", "at least 1"),
    ("KAFKA_DELIVERY_TIMEOUT_S", "0", "seconds above 0"),
    ("KAFKA_DELIVERY_TIMEOUT_S", "-1.5", "seconds above 0"),
    ("KAFKA_DELIVERY_TIMEOUT_S", "nan", "seconds above 0"),
    ("KAFKA_DELIVERY_TIMEOUT_S", "inf", "seconds above 0"),
    ("KAFKA_DELIVERY_TIMEOUT_S", "600.5", "at most 600"),
    ("CASSANDRA_PORT", "0", "1 to 65535"),
    ("CASSANDRA_PORT", "65536", "1 to 65535"),
    ("PROGRAMUSER_SENSOR_INTERVAL_S", "0", "at least 1"),
    ("PROGRAMUSER_FRESHNESS_FAIL_S", "-60", "at least 1"),
    ("PROGRAMUSER_STALL_WARN_S", "0", "at least 1"),
    ("PROGRAMUSER_DLQ_SHARE_WARN", "0", "above 0 and at most 1"),
    ("PROGRAMUSER_DLQ_SHARE_WARN", "1.5", "above 0 and at most 1"),
    # the new counts, sizes and timeouts
    ("PROGRAMUSER_CHUNK_MESSAGES", "0", "at least 1"),
    ("PROGRAMUSER_CHUNK_BYTES", "-1", "at least 1"),
    ("PROGRAMUSER_DEAD_LETTER_BYTES", "0", "at least 1"),
    ("KAFKA_REQUEST_TIMEOUT_S", "0", "seconds above 0"),
    ("KAFKA_REQUEST_TIMEOUT_S", "nan", "seconds above 0"),
    ("CASSANDRA_CONCURRENCY", "0", "at least 1"),
    ("CASSANDRA_BATCH_ROWS", "-3", "at least 1"),
    ("CASSANDRA_BATCH_BYTES", "0", "at least 1"),
    ("CASSANDRA_BATCH_BYTES", "51201", "at most 51200"),
    ("CASSANDRA_REQUEST_TIMEOUT_S", "-1", "seconds above 0"),
    ("CASSANDRA_REQUEST_TIMEOUT_S", "inf", "seconds above 0"),
    # words, names and addresses
    ("CASSANDRA_CONSISTENCY", "FOO", "one of ONE, TWO, THREE, QUORUM, ALL"),
    # issue 24: a hint is not a durable write, and verify cannot read at ANY
    ("CASSANDRA_CONSISTENCY", "ANY", "not a durable write"),
    ("CASSANDRA_CONSISTENCY", "any", "verify cannot read at ANY"),
    # issue 24: caps (a run's lead over the wall clock; a sensor tick's time)
    ("PROGRAMUSER_MAX_MESSAGES", "1000001", "at most 1000000"),
    ("KAFKA_REQUEST_TIMEOUT_S", "15.5", "at most 15 (a sensor tick"),
    ("PROGRAMUSER_CLOCK_SKEW_MAX_S", "0", "seconds above 0"),
    ("PROGRAMUSER_CLOCK_SKEW_MAX_S", "3601", "at most 3600"),
    ("PROGRAMUSER_OFFSET_RENEW_S", "0", "half of the broker's offsets.retention.minutes"),
    # issue 26: history pruning
    ("PROGRAMUSER_HISTORY_KEEP_DAYS", "0", "days above 0"),
    ("PROGRAMUSER_HISTORY_KEEP_DAYS", "3651", "at most 3650"),
    ("PROGRAMUSER_HISTORY_KEEP_DAYS", "two weeks", "not a number"),
    ("PROGRAMUSER_HISTORY_PRUNE_CRON", "daily", "a cron schedule of five fields"),
    ("PROGRAMUSER_HISTORY_PRUNE_CRON", "17 3 * *", "a cron schedule of five fields"),
    # issue 27: the metrics exporter
    ("PROGRAMUSER_METRICS_PORT", "65536", "a port, 1 to 65535"),
    ("PROGRAMUSER_METRICS_PORT", "http", "not a whole number"),
    ("PROGRAMUSER_METRICS_HOST", "0.0.0.0:9464/metrics", "one host name or address"),
    ("PROGRAMUSER_METRICS_HOST", "a b", "one host name or address"),
    # issue 27: failure notices
    ("PROGRAMUSER_UI_URL", "dagster.example.org", "an http(s) URL with a host"),
    ("PROGRAMUSER_UI_URL", "ftp://dagster.example.org", "an http(s) URL with a host"),
    ("CASSANDRA_CONSISTENCY", "SERIAL", "LOCAL_QUORUM"),  # a read level, not a write level
    ("KAFKA_SECURITY_PROTOCOL", "TLS", "PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ("KAFKA_SASL_MECHANISM", "SCRAM", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER, GSSAPI"),
    ("CASSANDRA_CREATE_SCHEMA", "maybe", "true or false"),
    ("CASSANDRA_TABLE", "write_receipts", "one of the pipeline's own tables"),
    ("CASSANDRA_TABLE", "redriven_letters", "one of the pipeline's own tables"),
    ("CASSANDRA_CREATE_SCHEMA", "off", "1/0, yes/no"),
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "host:port"),
    ("KAFKA_BOOTSTRAP_SERVERS", "a:9092,b:70000", "each port 1 to 65535"),
    ("KAFKA_BOOTSTRAP_SERVERS", "a:0", "each port 1 to 65535"),
    ("KAFKA_BOOTSTRAP_SERVERS", "a:9092,", "host:port"),
    ("KAFKA_BOOTSTRAP_SERVERS", "a b:9092", "host:port"),
    ("CASSANDRA_HOSTS", ",", "at least one host"),
    ("CASSANDRA_REPLICATION", "SimpleStrategy", "CQL replication map with a class"),
    ("CASSANDRA_REPLICATION", "{'replication_factor': 1}", "CQL replication map with a class"),
    ("KAFKA_INPUT_TOPIC", "my topic", "1 to 249 of A-Z a-z 0-9 . _ -"),
    ("KAFKA_INPUT_TOPIC", "t" * 250, "1 to 249"),
    ("KAFKA_INPUT_TOPIC", "..", "Kafka topic name"),
    ("KAFKA_DLQ_TOPIC", "a/b", "1 to 249 of A-Z a-z 0-9 . _ -"),
    ("PROGRAMUSER_ENV", "dev env", "it names the default topics"),
    ("PROGRAMUSER_ENV", "e" * 226, "1 to 225"),
]


@pytest.mark.parametrize(("name", "value", "allowed"), REFUSED)
def test_from_env_refuses_a_value_out_of_range_naming_the_variable(
    name: str, value: str, allowed: str
) -> None:
    with pytest.raises(ValueError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert f"{name}={value!r}" in message
    assert allowed in message
    assert "\n" not in message  # the CLI prints it as its one line


def test_a_refused_consistency_lists_every_write_level() -> None:
    with pytest.raises(ValueError) as caught:
        Settings.from_env({"CASSANDRA_CONSISTENCY": "FOO"})
    message = str(caught.value)
    assert message.startswith("CASSANDRA_CONSISTENCY='FOO' is not allowed: use one of ")
    assert "ANY" not in message.split(": use ", 1)[1]
    for level in ("ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM",
                  "LOCAL_ONE"):
        assert level in message


@pytest.mark.parametrize("name", ["CASSANDRA_KEYSPACE", "CASSANDRA_TABLE"])
@pytest.mark.parametrize("value", ["bad-name", "1starts_with_digit", "ks; DROP TABLE x"])
def test_from_env_refuses_a_keyspace_or_table_that_is_not_a_plain_identifier(
    name: str, value: str
) -> None:
    with pytest.raises(ValueError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value).startswith(f"{name} {value!r} is not a plain identifier")


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("PROGRAMUSER_MAX_MESSAGES", "1.5", "is not a whole number"),
        ("CASSANDRA_PORT", "abc", "is not a whole number"),
        ("PROGRAMUSER_CHUNK_BYTES", "64MiB", "is not a whole number"),
        ("KAFKA_REQUEST_TIMEOUT_S", "soon", "is not a number"),
        ("CASSANDRA_REQUEST_TIMEOUT_S", "30s", "is not a number"),
    ],
)
def test_from_env_says_a_value_must_be_a_number(name: str, value: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value) == f"{name}={value!r} {words}."


def test_from_env_says_a_count_must_be_a_whole_number() -> None:
    with pytest.raises(ValueError, match=r"PROGRAMUSER_MAX_MESSAGES='1.5' is not a whole number"):
        Settings.from_env({"PROGRAMUSER_MAX_MESSAGES": "1.5"})


@pytest.mark.parametrize("name", ["KAFKA_SSL_CA_LOCATION", "CASSANDRA_SSL_CA"])
def test_from_env_refuses_a_ca_file_that_does_not_exist(name: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing-ca.pem")
    with pytest.raises(ValueError) as caught:
        Settings.from_env({name: missing})
    assert str(caught.value) == (
        f"{name}={missing!r} does not exist: set it to the CA certificate file (PEM)."
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
@pytest.mark.parametrize("name", ["KAFKA_SSL_CA_LOCATION", "CASSANDRA_SSL_CA"])
def test_from_env_refuses_a_ca_file_it_cannot_read(name: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    ca.chmod(0)
    with pytest.raises(ValueError, match=rf"^{name}='.*ca.pem' is not readable: set it to"):
        Settings.from_env({name: str(ca)})


@pytest.mark.parametrize(("name", "field"), [("KAFKA_SSL_CA_LOCATION", "kafka_ssl_ca_location"),
                                             ("CASSANDRA_SSL_CA", "cassandra_ssl_ca")])
def test_from_env_takes_a_ca_file_that_exists(name: str, field: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert getattr(Settings.from_env({name: str(ca)}), field) == str(ca)


def test_kafka_takes_a_ca_directory_or_probe_and_cassandra_a_file_only(tmp_path: Path) -> None:
    # librdkafka's ssl.ca.location may be a directory of CAs or "probe"; Python's ssl cafile not.
    assert Settings.from_env({"KAFKA_SSL_CA_LOCATION": str(tmp_path)}).kafka_ssl_ca_location \
        == str(tmp_path)
    assert Settings.from_env({"KAFKA_SSL_CA_LOCATION": "probe"}).kafka_ssl_ca_location == "probe"
    with pytest.raises(ValueError, match=r"^CASSANDRA_SSL_CA='.*' is not a file: set it to"):
        Settings.from_env({"CASSANDRA_SSL_CA": str(tmp_path)})
    with pytest.raises(ValueError, match=r"^CASSANDRA_SSL_CA='probe' does not exist"):
        Settings.from_env({"CASSANDRA_SSL_CA": "probe"})


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("PROGRAMUSER_MAX_MESSAGES", "1", "max_messages", 1),
        ("PROGRAMUSER_MAX_MESSAGES", "1000000", "max_messages", 1_000_000),
        ("KAFKA_REQUEST_TIMEOUT_S", "15", "kafka_request_timeout_s", 15.0),
        ("PROGRAMUSER_CLOCK_SKEW_MAX_S", "0.001", "clock_skew_max_s", 0.001),
        ("PROGRAMUSER_OFFSET_RENEW_S", "60", "offset_renew_s", 60),
        ("PROGRAMUSER_HISTORY_KEEP_DAYS", "0.0035", "history_keep_days", 0.0035),
        ("PROGRAMUSER_HISTORY_PRUNE_CRON", " * *  * * * ", "history_prune_cron", "* * * * *"),
        ("PROGRAMUSER_METRICS_HOST", " 0.0.0.0 ", "metrics_host", "0.0.0.0"),
        ("PROGRAMUSER_METRICS_PORT", "9100", "metrics_port", 9100),
        ("CASSANDRA_PORT", "65535", "cassandra_port", 65535),
        ("CASSANDRA_PORT", "1", "cassandra_port", 1),
        ("PROGRAMUSER_DLQ_SHARE_WARN", "1", "dead_letter_share_warn", 1.0),
        ("KAFKA_DELIVERY_TIMEOUT_S", "0.5", "kafka_delivery_timeout_s", 0.5),
        ("KAFKA_DELIVERY_TIMEOUT_S", "600", "kafka_delivery_timeout_s", 600.0),
        ("KAFKA_INPUT_PARTITIONS", "1", "kafka_partitions", 1),
        ("PROGRAMUSER_CHUNK_MESSAGES", "1", "chunk_messages", 1),
        ("PROGRAMUSER_CHUNK_BYTES", "1", "chunk_bytes", 1),
        ("PROGRAMUSER_DEAD_LETTER_BYTES", "1", "dead_letter_bytes", 1),
        ("KAFKA_REQUEST_TIMEOUT_S", "0.001", "kafka_request_timeout_s", 0.001),
        ("CASSANDRA_CONCURRENCY", "1", "cassandra_concurrency", 1),
        ("CASSANDRA_BATCH_ROWS", "1", "cassandra_batch_rows", 1),
        ("CASSANDRA_BATCH_BYTES", "1", "cassandra_batch_bytes", 1),
        ("CASSANDRA_BATCH_BYTES", "51200", "cassandra_batch_bytes", 51200),
        ("CASSANDRA_REQUEST_TIMEOUT_S", "0.5", "cassandra_request_timeout_s", 0.5),
        ("KAFKA_INPUT_TOPIC", "t" * 242, "kafka_input_topic", "t" * 242),
        ("KAFKA_DLQ_TOPIC", "A-z_0.9" * 35 + "abcd", "kafka_dlq_topic", "A-z_0.9" * 35 + "abcd"),
        ("PROGRAMUSER_ENV", "e" * 225, "env", "e" * 225),
        ("KAFKA_BOOTSTRAP_SERVERS", " a:1 , [::1]:65535 ", "kafka_bootstrap_servers",
         "a:1,[::1]:65535"),
        ("CASSANDRA_HOSTS", "a, b ,,c", "cassandra_hosts", ("a", "b", "c")),
        ("CASSANDRA_REPLICATION", "{'class': 'NetworkTopologyStrategy', 'dc1': 3}",
         "cassandra_replication", "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"),
    ],
)
def test_from_env_accepts_the_bounds(name: str, value: str, field: str, expected: Any) -> None:
    got = getattr(Settings.from_env({name: value}), field)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("CASSANDRA_CONSISTENCY", "local_one", "cassandra_consistency", "LOCAL_ONE"),
        ("CASSANDRA_CONSISTENCY", "Each_Quorum", "cassandra_consistency", "EACH_QUORUM"),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl", "kafka_security_protocol", "SASL_SSL"),
        ("KAFKA_SASL_MECHANISM", "scram-sha-256", "kafka_sasl_mechanism", "SCRAM-SHA-256"),
        ("CASSANDRA_CREATE_SCHEMA", "FALSE", "cassandra_create_schema", False),
        ("CASSANDRA_CREATE_SCHEMA", "No", "cassandra_create_schema", False),
        ("CASSANDRA_CREATE_SCHEMA", "0", "cassandra_create_schema", False),
        ("CASSANDRA_CREATE_SCHEMA", "True", "cassandra_create_schema", True),
        ("CASSANDRA_CREATE_SCHEMA", "YES", "cassandra_create_schema", True),
        ("CASSANDRA_CREATE_SCHEMA", "1", "cassandra_create_schema", True),
    ],
)
def test_from_env_takes_words_in_any_case_and_keeps_them_as_the_clients_spell_them(
    name: str, value: str, field: str, expected: Any
) -> None:
    assert getattr(Settings.from_env({name: value}), field) == expected


def test_direct_construction_normalises_the_case_too() -> None:
    s = Settings(cassandra_consistency=" quorum", kafka_security_protocol="ssl",
                 kafka_sasl_mechanism="oauthbearer")
    assert (s.cassandra_consistency, s.kafka_security_protocol, s.kafka_sasl_mechanism) == (
        "QUORUM", "SSL", "OAUTHBEARER"
    )


def test_the_defaults_are_all_allowed() -> None:
    s = Settings.from_env({})
    assert (s.max_messages, s.cassandra_port, s.dead_letter_share_warn) == (100_000, 9042, 0.05)


def test_the_new_defaults_are_the_documented_ones() -> None:
    assert (DEFAULTS.chunk_messages, DEFAULTS.chunk_bytes, DEFAULTS.dead_letter_bytes) == (
        10_000, 64 * 1024 * 1024, 256 * 1024 * 1024
    )
    assert (DEFAULTS.kafka_request_timeout_s, DEFAULTS.cassandra_request_timeout_s) == (15.0, 30.0)
    assert (DEFAULTS.cassandra_concurrency, DEFAULTS.cassandra_batch_rows,
            DEFAULTS.cassandra_batch_bytes) == (64, 32, 24 * 1024)


def test_defaults_is_settings_built_with_no_arguments() -> None:
    assert Settings() == DEFAULTS
    assert Settings.from_env({}) == DEFAULTS


@pytest.mark.parametrize("blank", [None, "", "   "])
@pytest.mark.parametrize(("name", "field"), sorted(VARIABLES.items()))
def test_an_unset_or_blank_variable_gives_the_fields_default(
    name: str, field: str, blank: str | None
) -> None:
    environ = {} if blank is None else {name: blank}
    assert getattr(Settings.from_env(environ), field) == getattr(DEFAULTS, field)


@pytest.mark.parametrize(("name", "field"), sorted(VARIABLES.items()))
def test_every_variable_sets_its_field(name: str, field: str, tmp_path: Path) -> None:
    """A value other than the default reaches the field named in VARIABLES."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    # (text, value) of a setting other than the default, by the field's type
    by_kind: dict[type, tuple[str, Any]] = {
        str: ("dc1", "dc1"), bool: ("false", False), int: ("7", 7), float: ("7.5", 7.5),
        tuple: ("h1,h2", ("h1", "h2")),
    }
    special = {
        "PROGRAMUSER_ENV": "prod", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9093",
        "KAFKA_INPUT_TOPIC": "in.topic", "KAFKA_DLQ_TOPIC": "in.topic.dlq",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SSL_CA_LOCATION": str(ca), "CASSANDRA_SSL_CA": str(ca),
        "CASSANDRA_KEYSPACE": "ks2", "CASSANDRA_TABLE": "t2", "CASSANDRA_CONSISTENCY": "ONE",
        "PROGRAMUSER_UI_URL": "https://dagster.example.org",
        "CASSANDRA_REPLICATION": "{'class': 'SimpleStrategy', 'replication_factor': 3}",
        "PROGRAMUSER_DLQ_SHARE_WARN": "0.5", "PROGRAMUSER_HISTORY_PRUNE_CRON": "* * * * *",
    }
    # Numbers the rules between variables allow beside the defaults: above the trigger's age
    # plus the sensor's interval.
    numbers: dict[str, tuple[str, Any]] = {"PROGRAMUSER_FRESHNESS_FAIL_S": ("7000", 7000)}
    default = getattr(DEFAULTS, field)
    if name == "PROGRAMUSER_OFFSET_RENEW_S":  # a number whose default is unset
        assert Settings.from_env({name: "7"}).offset_renew_s == 7 and default is None
        return
    raw, expected = (special[name], special[name]) if name in special else numbers.get(
        name, by_kind[str if default is None else type(default)])
    got = getattr(Settings.from_env({name: raw}), field)
    assert got != default
    assert got == (float(expected) if isinstance(default, float) else expected)


EXPECTED_VARIABLES = {
    "PROGRAMUSER_ENV", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_INPUT_TOPIC", "KAFKA_GROUP_ID",
    "KAFKA_DLQ_TOPIC", "KAFKA_INPUT_PARTITIONS", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME", "KAFKA_SSL_CA_LOCATION", "KAFKA_DELIVERY_TIMEOUT_S", "CASSANDRA_HOSTS",
    "CASSANDRA_PORT", "CASSANDRA_KEYSPACE", "CASSANDRA_TABLE", "CASSANDRA_REPLICATION",
    "CASSANDRA_CONSISTENCY", "CASSANDRA_LOCAL_DC", "CASSANDRA_USERNAME", "CASSANDRA_SSL_CA",
    "CASSANDRA_CREATE_SCHEMA", "PROGRAMUSER_MAX_MESSAGES", "PROGRAMUSER_SENSOR_INTERVAL_S",
    "PROGRAMUSER_FRESHNESS_FAIL_S", "PROGRAMUSER_DLQ_SHARE_WARN", "PROGRAMUSER_STALL_WARN_S",
    "PROGRAMUSER_CODE_LOCATION",
    # new
    "PROGRAMUSER_CHUNK_MESSAGES", "PROGRAMUSER_CHUNK_BYTES", "PROGRAMUSER_DEAD_LETTER_BYTES",
    "KAFKA_REQUEST_TIMEOUT_S", "CASSANDRA_CONCURRENCY", "CASSANDRA_BATCH_ROWS",
    "CASSANDRA_BATCH_BYTES", "CASSANDRA_REQUEST_TIMEOUT_S",
    "PROGRAMUSER_CLOCK_SKEW_MAX_S",  # issue 24
    "PROGRAMUSER_TRIGGER_LAG_RECORDS", "PROGRAMUSER_TRIGGER_AGE_S",  # issue 26: the trigger
    "PROGRAMUSER_OFFSET_RENEW_S",  # issue 26: offsets outlive the broker's retention
    "PROGRAMUSER_HISTORY_KEEP_DAYS", "PROGRAMUSER_HISTORY_PRUNE_CRON",  # issue 26: pruning
    "PROGRAMUSER_METRICS_HOST", "PROGRAMUSER_METRICS_PORT",  # issue 27: the exporter
    "PROGRAMUSER_UI_URL",  # issue 27: links in failure notices
}


def test_variables_names_each_variable_once_and_covers_every_field() -> None:
    assert set(VARIABLES) == EXPECTED_VARIABLES
    fields = [f.name for f in dataclasses.fields(Settings)]
    assert sorted(VARIABLES.values()) == sorted(fields)  # one variable per field, no field left


def test_passwords_are_not_read_here() -> None:
    assert not any("PASSWORD" in name for name in VARIABLES)
    s = Settings.from_env({"KAFKA_SASL_PASSWORD": "secret", "CASSANDRA_PASSWORD": "secret"})
    assert "secret" not in repr(s)


def test_from_env_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROGRAMUSER_CHUNK_MESSAGES", "7")
    assert Settings.from_env().chunk_messages == 7


def test_topics_and_group_default_from_the_environment_name() -> None:
    s = Settings.from_env({"PROGRAMUSER_ENV": "prod"})
    assert (s.kafka_input_topic, s.kafka_group_id, s.kafka_dlq_topic) == (
        "prod.programuser.info", "prod-programuser-group", "prod.programuser.info.failed"
    )
    t = Settings.from_env({"KAFKA_INPUT_TOPIC": "in"})
    assert t.kafka_dlq_topic == "in.failed"
    other = s.for_env("stage", "stage_ks", 2)
    assert (other.kafka_input_topic, other.kafka_group_id, other.kafka_dlq_topic,
            other.cassandra_keyspace, other.kafka_partitions) == (
        "stage.programuser.info", "stage-programuser-group", "stage.programuser.info.failed",
        "stage_ks", 2,
    )


def test_a_derived_dead_letter_topic_too_long_is_refused_naming_its_variable() -> None:
    with pytest.raises(ValueError, match=r"^KAFKA_DLQ_TOPIC='t{249}\.failed' is not allowed"):
        Settings.from_env({"KAFKA_INPUT_TOPIC": "t" * 249})


# (keyword arguments of Settings, the variable named, words of what is allowed)
DIRECT_REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"cassandra_consistency": "FOO"}, "CASSANDRA_CONSISTENCY='FOO'", "LOCAL_QUORUM"),
    ({"cassandra_port": 0}, "CASSANDRA_PORT=0", "1 to 65535"),
    ({"cassandra_port": "9042"}, "CASSANDRA_PORT='9042'", "1 to 65535"),  # parsing is from_env's
    ({"max_messages": True}, "PROGRAMUSER_MAX_MESSAGES=True", "at least 1"),
    ({"chunk_messages": 0}, "PROGRAMUSER_CHUNK_MESSAGES=0", "at least 1"),
    ({"cassandra_batch_bytes": 51201}, "CASSANDRA_BATCH_BYTES=51201", "at most 51200"),
    ({"kafka_request_timeout_s": float("nan")}, "KAFKA_REQUEST_TIMEOUT_S=nan", "above 0"),
    ({"dead_letter_share_warn": 2}, "PROGRAMUSER_DLQ_SHARE_WARN=2", "at most 1"),
    ({"cassandra_create_schema": "no"}, "CASSANDRA_CREATE_SCHEMA='no'", "true or false"),
    ({"cassandra_hosts": ()}, "CASSANDRA_HOSTS=()", "at least one host"),
    ({"cassandra_hosts": "a,b"}, "CASSANDRA_HOSTS='a,b'", "at least one host"),
    ({"kafka_bootstrap_servers": "kafka"}, "KAFKA_BOOTSTRAP_SERVERS='kafka'", "host:port"),
    ({"kafka_security_protocol": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS'", "SASL_SSL"),
    ({"kafka_group_id": "  "}, "KAFKA_GROUP_ID='  '", "non-empty"),
    ({"kafka_input_topic": "a topic"}, "KAFKA_INPUT_TOPIC='a topic'", "1 to 249"),
    ({"env": "a b"}, "PROGRAMUSER_ENV='a b'", "default topics"),
    ({"cassandra_replication": "{}"}, "CASSANDRA_REPLICATION='{}'", "with a class"),
    ({"code_location": ""}, "PROGRAMUSER_CODE_LOCATION=''", "non-empty"),
    ({"cassandra_ssl_ca": "/nonexistent/ca.pem"}, "CASSANDRA_SSL_CA='/nonexistent/ca.pem'",
     "does not exist"),
]


@pytest.mark.parametrize(("kwargs", "named", "allowed"), DIRECT_REFUSED)
def test_building_settings_in_code_is_checked_naming_the_variable(
    kwargs: dict[str, Any], named: str, allowed: str
) -> None:
    for build in (lambda: Settings(**kwargs), lambda: dataclasses.replace(DEFAULTS, **kwargs)):
        with pytest.raises(ValueError) as caught:
            build()
        message = str(caught.value)
        assert message.startswith(f"{named} ")
        assert allowed in message
        assert "\n" not in message


def test_for_env_is_checked_too() -> None:
    with pytest.raises(ValueError, match=r"^PROGRAMUSER_ENV='bad env' is not allowed"):
        DEFAULTS.for_env("bad env", "ks")
    with pytest.raises(ValueError, match=r"^CASSANDRA_KEYSPACE 'bad-ks' is not a plain identifier"):
        DEFAULTS.for_env("dev", "bad-ks")


@pytest.mark.parametrize("name", ["bad-name", "1starts_with_digit", "ks; DROP TABLE x", ""])
def test_a_keyspace_or_table_in_code_that_is_not_a_plain_identifier_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"^CASSANDRA_KEYSPACE .* is not a plain identifier"):
        Settings(cassandra_keyspace=name)
    with pytest.raises(ValueError, match=r"^CASSANDRA_TABLE .* is not a plain identifier"):
        Settings(cassandra_table=name)


def test_code_may_still_unset_an_optional_setting() -> None:
    secure = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                      kafka_sasl_username="programuser")
    anonymous = dataclasses.replace(secure, kafka_security_protocol=None,
                                    kafka_sasl_mechanism=None, kafka_sasl_username="")
    assert (anonymous.kafka_security_protocol, anonymous.kafka_sasl_mechanism,
            anonymous.kafka_sasl_username) == (None, None, None)
    assert dataclasses.replace(DEFAULTS, kafka_delivery_timeout_s=5).kafka_delivery_timeout_s \
        == 5.0


def test_environment_reads_back_as_the_same_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    custom = dataclasses.replace(
        DEFAULTS.for_env("prod", "ks_prod", 12), cassandra_hosts=("10.0.0.1", "10.0.0.2"),
        cassandra_create_schema=False, kafka_delivery_timeout_s=12.5,
        dead_letter_share_warn=0.125, cassandra_ssl_ca=str(ca), kafka_security_protocol="SSL",
    )
    for settings in (DEFAULTS, custom):
        env = settings.environment()
        assert set(env) == set(VARIABLES)
        assert Settings.from_env(env) == settings
    assert custom.environment()["CASSANDRA_HOSTS"] == "10.0.0.1,10.0.0.2"
    assert custom.environment()["CASSANDRA_CREATE_SCHEMA"] == "false"
    assert DEFAULTS.environment()["CASSANDRA_LOCAL_DC"] == ""  # unset: blank


# -- issue 24: settings that loop or break promises, refused together -------------------------


@pytest.mark.parametrize("environ", [
    {"KAFKA_DLQ_TOPIC": "dev.programuser.info"},  # the default input topic
    {"KAFKA_INPUT_TOPIC": "in", "KAFKA_DLQ_TOPIC": "in"},
    {"PROGRAMUSER_ENV": "prod", "KAFKA_DLQ_TOPIC": "prod.programuser.info"},
])
def test_a_dead_letter_topic_that_is_the_input_topic_is_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError) as caught:
        Settings.from_env(environ)
    message = str(caught.value)
    assert message.startswith(f"KAFKA_DLQ_TOPIC={environ['KAFKA_DLQ_TOPIC']!r} is the input "
                              "topic: every dead letter would be read again")
    assert "\n" not in message


def test_a_dead_letter_topic_that_is_the_input_topic_is_refused_in_code_too() -> None:
    with pytest.raises(ValueError, match=r"^KAFKA_DLQ_TOPIC='t' is the input topic"):
        Settings(kafka_input_topic="t", kafka_dlq_topic="t")


def test_dead_letter_bytes_above_what_the_transaction_can_send_are_refused() -> None:
    # KAFKA_DELIVERY_TIMEOUT_S 30 + 30 s at 10 MiB/s: 600 MiB.
    most = 60 * 10 * 1024 * 1024
    assert Settings.from_env({"PROGRAMUSER_DEAD_LETTER_BYTES": str(most)}).dead_letter_bytes \
        == most
    with pytest.raises(ValueError) as caught:
        Settings.from_env({"PROGRAMUSER_DEAD_LETTER_BYTES": str(most + 1)})
    message = str(caught.value)
    assert message.startswith(f"PROGRAMUSER_DEAD_LETTER_BYTES={most + 1} is more than a run "
                              "can send as dead letters within its transaction (60 s")
    assert f"use at most {most}, or raise KAFKA_DELIVERY_TIMEOUT_S" in message
    assert "\n" not in message
    # A longer delivery timeout makes the transaction, and the room, larger.
    assert Settings.from_env({"PROGRAMUSER_DEAD_LETTER_BYTES": str(most + 1),
                              "KAFKA_DELIVERY_TIMEOUT_S": "40"}).dead_letter_bytes == most + 1


def test_a_trigger_age_that_makes_the_table_stale_by_design_is_refused() -> None:
    assert Settings.from_env({"PROGRAMUSER_TRIGGER_AGE_S": "3569"}).trigger_age_s == 3569
    with pytest.raises(ValueError) as caught:
        Settings.from_env({"PROGRAMUSER_TRIGGER_AGE_S": "3570"})
    message = str(caught.value)
    assert message.startswith("PROGRAMUSER_TRIGGER_AGE_S=3570 plus the sensor's interval "
                              "(PROGRAMUSER_SENSOR_INTERVAL_S=30) reaches "
                              "PROGRAMUSER_FRESHNESS_FAIL_S=3600")
    assert "\n" not in message


@pytest.mark.parametrize(("name", "raw"), [
    ("PROGRAMUSER_TRIGGER_LAG_RECORDS", "0"), ("PROGRAMUSER_TRIGGER_LAG_RECORDS", "1.5"),
    ("PROGRAMUSER_TRIGGER_AGE_S", "0"), ("PROGRAMUSER_TRIGGER_AGE_S", "-5"),
    ("PROGRAMUSER_TRIGGER_AGE_S", "soon"),
])
def test_a_trigger_that_could_never_fire_or_fires_on_nothing_is_refused(
    name: str, raw: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{name}={raw!r} "):
        Settings.from_env({name: raw})


def test_the_trigger_defaults_are_the_documented_ones() -> None:
    assert (DEFAULTS.trigger_lag_records, DEFAULTS.trigger_age_s) == (1000, 300.0)


def test_the_run_config_cannot_exceed_the_cap_on_a_runs_length() -> None:
    from pydantic import ValidationError

    from programuser_dagster.ingest.run_config import IngestConfig

    assert IngestConfig(max_messages=1_000_000).max_messages == 1_000_000
    with pytest.raises(ValidationError):
        IngestConfig(max_messages=1_000_001)


def test_drain_max_messages_is_capped_like_the_setting() -> None:
    import argparse

    from programuser_dagster.cli import run_length

    assert run_length("1000000") == 1_000_000
    with pytest.raises(argparse.ArgumentTypeError, match="must be at most 1000000"):
        run_length("1000001")


@pytest.mark.parametrize("bad", ["hooks.slack.com/services/T0/B0/SECRETTOKEN",
                                 "ftp://hooks.example.org/SECRETTOKEN", "https:///SECRETTOKEN",
                                 "https://h:99999/SECRETTOKEN"])
def test_a_bad_alert_webhook_url_is_refused_without_showing_it(bad: str) -> None:
    with pytest.raises(ValueError) as refused:
        Settings.from_env({"PROGRAMUSER_ALERT_WEBHOOK_URL": bad})
    assert str(refused.value).startswith("PROGRAMUSER_ALERT_WEBHOOK_URL is not an http(s) URL")
    assert "SECRETTOKEN" not in str(refused.value)


def test_an_http_alert_webhook_url_is_allowed_and_not_a_setting() -> None:
    url = "https://hooks.example.org/services/T0/B0/SECRETTOKEN"
    s = Settings.from_env({"PROGRAMUSER_ALERT_WEBHOOK_URL": url})
    assert "SECRETTOKEN" not in repr(s) and "SECRETTOKEN" not in str(s.environment())
