"""Settings.from_env refuses values that would make the pipeline loop or hang (pure, no server)."""

from __future__ import annotations

import pytest

from programuser_dagster.settings import Settings

# (variable, a refused value, words of what is allowed)
REFUSED = [
    ("PROGRAMUSER_MAX_MESSAGES", "0", "at least 1"),
    ("PROGRAMUSER_MAX_MESSAGES", "-5", "at least 1"),
    ("KAFKA_INPUT_PARTITIONS", "0", "at least 1"),
    ("KAFKA_DELIVERY_TIMEOUT_S", "0", "seconds above 0"),
    ("KAFKA_DELIVERY_TIMEOUT_S", "-1.5", "seconds above 0"),
    ("KAFKA_DELIVERY_TIMEOUT_S", "nan", "seconds above 0"),
    ("KAFKA_DELIVERY_TIMEOUT_S", "inf", "seconds above 0"),
    ("CASSANDRA_PORT", "0", "1 to 65535"),
    ("CASSANDRA_PORT", "65536", "1 to 65535"),
    ("PROGRAMUSER_SENSOR_INTERVAL_S", "0", "at least 1"),
    ("PROGRAMUSER_FRESHNESS_FAIL_S", "-60", "at least 1"),
    ("PROGRAMUSER_STALL_WARN_S", "0", "at least 1"),
    ("PROGRAMUSER_DLQ_SHARE_WARN", "0", "above 0 and at most 1"),
    ("PROGRAMUSER_DLQ_SHARE_WARN", "1.5", "above 0 and at most 1"),
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


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("PROGRAMUSER_MAX_MESSAGES", "1", "max_messages", 1),
        ("CASSANDRA_PORT", "65535", "cassandra_port", 65535),
        ("PROGRAMUSER_DLQ_SHARE_WARN", "1", "dead_letter_share_warn", 1.0),
        ("KAFKA_DELIVERY_TIMEOUT_S", "0.5", "kafka_delivery_timeout_s", 0.5),
    ],
)
def test_from_env_accepts_the_bounds(name: str, value: str, field: str, expected: float) -> None:
    assert getattr(Settings.from_env({name: value}), field) == expected


def test_from_env_says_a_count_must_be_a_whole_number() -> None:
    with pytest.raises(ValueError, match=r"PROGRAMUSER_MAX_MESSAGES='1.5' is not a whole number"):
        Settings.from_env({"PROGRAMUSER_MAX_MESSAGES": "1.5"})


def test_the_defaults_are_all_allowed() -> None:
    s = Settings.from_env({})
    assert (s.max_messages, s.cassandra_port, s.dead_letter_share_warn) == (100_000, 9042, 0.05)
