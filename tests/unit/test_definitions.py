"""The code location loads with no server running, and refuses bad settings as it loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import Definitions

from programuser_dagster.cassandra.client import CassandraResource, CassandraWriteFailed
from programuser_dagster.cassandra.io_manager import CassandraIOManager
from programuser_dagster.definitions import build_definitions
from programuser_dagster.ingest.job import build_job
from programuser_dagster.ingest.run_config import FLATTEN_STEP
from programuser_dagster.kafka.resource import KafkaResource, KafkaUnavailable
from programuser_dagster.resources import (
    cassandra_io_manager,
    cassandra_resource,
    kafka_resource,
)
from programuser_dagster.settings import DEFAULTS, Settings, local_stack_hint

REPO = Path(__file__).resolve().parents[2]
# Nothing listens on port 1 of loopback: any connection attempt would be refused at once.
NO_SERVER = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "CASSANDRA_HOSTS": "127.0.0.1",
             "CASSANDRA_PORT": "1"}


def test_the_definitions_load_and_validate_with_no_server() -> None:
    defs = build_definitions(Settings.from_env({**NO_SERVER, "PROGRAMUSER_MAX_MESSAGES": "7"}))
    Definitions.validate_loadable(defs)
    job = defs.get_job_def("program_user_info")
    # The job's own config for a partition (the Launchpad's, a UI backfill's) has the settings.
    config = job.get_run_config_for_partition_key("0")
    assert config["ops"][FLATTEN_STEP]["config"]["max_messages"] == 7
    assert defs.get_sensor_def("kafka_backlog_sensor") is not None
    assert defs.get_schedule_def("kafka_backlog_schedule") is not None


def test_the_jobs_default_config_has_the_settings_limits() -> None:
    job = build_job(Settings.from_env({"PROGRAMUSER_MAX_MESSAGES": "7",
                                       "PROGRAMUSER_CHUNK_MESSAGES": "3"}))
    config = job.get_run_config_for_partition_key("0")
    assert config["ops"][FLATTEN_STEP]["config"]["max_messages"] == 7
    assert config["ops"][FLATTEN_STEP]["config"]["chunk_messages"] == 3


def _load(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("KAFKA_", "CASSANDRA_", "PROGRAMUSER_"))}
    return subprocess.run(
        [sys.executable, "-c", "import programuser_dagster.definitions"],
        env={**clean, **NO_SERVER, **env}, cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )


def test_the_code_location_loads_with_no_server() -> None:
    loaded = _load({})
    assert loaded.returncode == 0, loaded.stderr[-2000:]


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("CASSANDRA_CONSISTENCY", "FOO", "LOCAL_QUORUM"),
        ("KAFKA_INPUT_PARTITIONS", "-1", "at least 1"),
        ("CASSANDRA_CREATE_SCHEMA", "maybe", "true or false"),
    ],
)
def test_a_bad_setting_stops_the_code_location_loading_naming_the_variable(
    name: str, value: str, words: str
) -> None:
    loaded = _load({name: value})
    assert loaded.returncode != 0
    last = loaded.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: ") and f"{name}={value!r}" in last, last
    assert words in last


def test_an_unreachable_broker_is_named_by_its_setting() -> None:
    kafka = KafkaResource(bootstrap_servers="127.0.0.1:1", request_timeout_s=1)
    try:
        with pytest.raises(KafkaUnavailable) as caught:
            kafka.partitions()
    finally:
        kafka.close()
    assert "Check KAFKA_BOOTSTRAP_SERVERS and KAFKA_INPUT_TOPIC" in str(caught.value)
    # A loopback address: the hint to the local stack is added.
    assert "(the local stack: `python -m devtools stack status`)" in str(caught.value)


def test_an_unreachable_cassandra_is_named_by_its_settings() -> None:
    io = CassandraResource(hosts="127.0.0.1", port=1)
    with pytest.raises(CassandraWriteFailed) as caught:
        io.session()
    assert "Check CASSANDRA_HOSTS, CASSANDRA_PORT and the credentials" in str(caught.value)
    assert "(the local stack: `python -m devtools stack status`)" in str(caught.value)


@pytest.mark.parametrize(
    ("hosts", "local"),
    [
        ("127.0.0.1:9092", True), ("127.0.0.1:9192,localhost:9193", True), ("127.0.0.1", True),
        ("::1", True), ("[::1]:9042", True),
        ("kafka-1.prod:9092,kafka-2.prod:9092", False), ("cassandra.prod", False),
        ("127.0.0.1:9092,kafka.prod:9092", False), ("", False),
    ],
)
def test_the_local_stack_hint_only_for_servers_on_loopback(hosts: str, local: bool) -> None:
    assert bool(local_stack_hint(hosts)) is local


def test_the_resources_defaults_are_the_settings_defaults() -> None:
    for built, bare in ((kafka_resource(DEFAULTS), KafkaResource()),
                        (cassandra_resource(DEFAULTS), CassandraResource()),
                        (cassandra_io_manager(DEFAULTS), CassandraIOManager())):
        # The IO manager's client is compared on the line above.
        fields = [f for f in type(bare).model_fields if "password" not in f and f != "cassandra"]
        assert {f: getattr(built, f) for f in fields} == {f: getattr(bare, f) for f in fields}
