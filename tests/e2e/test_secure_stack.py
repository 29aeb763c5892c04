"""`stack up --secure`: Kafka with SASL/PLAIN and Cassandra with PasswordAuthenticator, on their
own ports and data folder; the pipeline works with credentials from the environment and fails
with a clear message without them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from devtools.produce import produce_records
from devtools.stack import down, up
from devtools.stack.launcher import SECURE_DEFAULTS
from programuser_dagster.cassandra.client import CassandraResource
from programuser_dagster.resources import build_resources
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import free_port
from tests.support.pipeline import SEED_EVENT, failure_text, row, run_partition

# `make test` runs tests side by side; this module's stay on one worker so that
# its private secure stack starts once.
pytestmark = [pytest.mark.stack, pytest.mark.xdist_group("test_secure_stack")]


@pytest.fixture(scope="module")
def secure_stack() -> Iterator[Settings]:
    """A private secure stack (temporary data folder, free ports), stopped afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="programuser-secure-"))
    env = {
        **SECURE_DEFAULTS,
        "PROGRAMUSER_STACK_DIR": str(folder),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "PROGRAMUSER_KAFKA_CONTROLLER_PORT": str(free_port()),
        "CASSANDRA_PORT": str(free_port()),
        "PROGRAMUSER_CASSANDRA_STORAGE_PORT": str(free_port()),
        "KAFKA_SASL_PASSWORD": "kafka-login-for-tests",
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        settings = Settings.from_env()
        try:
            up(settings, timeout=240)
            yield settings
        finally:
            down()
            shutil.rmtree(folder, ignore_errors=True)


def test_the_pipeline_works_with_credentials_from_the_environment(
    secure_stack: Settings, instance
) -> None:
    s = secure_stack
    resources = build_resources(s)
    kafka = resources["kafka"]
    try:
        produce_records(kafka, [(b"k", orjson.dumps(SEED_EVENT))], partition=0)
    finally:
        kafka.close()
    result = run_partition(instance, s, resources=resources)
    assert result.success, failure_text(result)
    io = resources["cassandra"]
    try:
        stored = row(io.session(), s, SEED_EVENT["programId"], SEED_EVENT["userId"])
    finally:
        io.close()
    assert stored is not None and stored["program_name"] == SEED_EVENT["programName"]


def test_without_the_kafka_login_the_run_fails_and_says_what_to_set(
    secure_stack: Settings, instance, monkeypatch
) -> None:
    monkeypatch.delenv("KAFKA_SASL_PASSWORD")
    anonymous = dataclasses.replace(
        secure_stack, kafka_security_protocol=None, kafka_sasl_mechanism=None,
        kafka_sasl_username=None,
    )
    result = run_partition(instance, anonymous, resources=build_resources(anonymous))
    assert not result.success
    assert "If the broker requires a login, set KAFKA_SECURITY_PROTOCOL" in failure_text(result)


def test_without_the_cassandra_login_the_writer_says_so(secure_stack: Settings) -> None:
    io = CassandraResource(
        port=secure_stack.cassandra_port, keyspace=secure_stack.cassandra_keyspace
    )
    with pytest.raises(Exception, match=r"Could not connect to Cassandra.*credentials"):
        io.session()
    assert os.environ.get("CASSANDRA_PASSWORD")  # the login exists; it just was not given
