"""TLS on the cluster (issue 14): the pipeline over SASL_SSL and TLS-only CQL, with certificate
and host name verification on; a wrong CA or host name fails the run within 20 s, naming TLS
and the variable to check; no key or keystore secret reaches a run's logs, config or metadata.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from dagster import DagsterInstance

from devtools.samples import message_key, sample_events
from devtools.stack import cluster
from devtools.stack.tls import Tls
from programuser_dagster.settings import Settings
from tests.support.cluster_faults import redirected
from tests.support.dagster_dev import REPO
from tests.support.faults import entry_text
from tests.support.pipeline import (
    all_rows,
    expected_rows,
    failure_text,
    run_partition,
    temporary_env,
)

pytestmark = pytest.mark.cluster

FAIL_WITHIN_S = 20.0
ROGUE = "127.0.0.14"  # no node: DNAT sends it to cassandra-1 / kafka-1


def over_tls(s: Settings) -> Settings:
    """These settings on the brokers' SASL_SSL listener (Cassandra is TLS-only anyway)."""
    tls = cluster.TLS_DEFAULTS
    return dataclasses.replace(
        s, kafka_bootstrap_servers=tls["KAFKA_BOOTSTRAP_SERVERS"],
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=tls["KAFKA_SASL_USERNAME"],
        kafka_ssl_ca_location=tls["KAFKA_SSL_CA_LOCATION"])


def produce(s: Settings, n: int = 200) -> list[bytes]:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": cluster.PLAINTEXT_BOOTSTRAP})
    values = []
    for event in sample_events(n, seed=5, programs=20):
        values.append(orjson.dumps(event))
        producer.produce(s.kafka_input_topic, value=values[-1], key=message_key(event),
                         partition=0)
    assert producer.flush(30) == 0
    return values


def other_ca(directory: Path) -> str:
    """A CA that signed none of the nodes' certificates."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(directory / "other.key"), "-out", str(directory / "other.pem"),
                    "-subj", "/CN=not the cluster's CA"], check=True, capture_output=True)
    return str(directory / "other.pem")


def timed_run(instance: DagsterInstance, s: Settings) -> tuple[Any, float]:
    """A run of partition 0 with the Kafka login in its environment, and how long it took."""
    with temporary_env({"KAFKA_SASL_PASSWORD": cluster.TLS_DEFAULTS["KAFKA_SASL_PASSWORD"]}):
        t0 = time.monotonic()
        result = run_partition(instance, s)
        return result, time.monotonic() - t0


def assert_tls_failure(result: Any, variable: str) -> str:
    """The run failed saying TLS verification failed and naming `variable`; its text."""
    assert not result.success
    text = failure_text(result)
    assert "TLS verification" in text and variable in text, text[-2000:]
    return text


def run_secrets() -> list[str]:
    tls = Tls(cluster.tls_dir())
    return [tls.password(), "PRIVATE KEY", cluster.TLS_DEFAULTS["KAFKA_SASL_PASSWORD"]]


def test_the_pipeline_runs_over_tls_and_no_secret_reaches_the_run(
    cluster_settings: Settings, cassandra: Any, instance: DagsterInstance,
    measured: Callable[..., None],
) -> None:
    s = over_tls(cluster_settings)
    values = produce(s)
    result, took = timed_run(instance, s)
    assert result.success, failure_text(result)
    assert all_rows(cassandra, s) == expected_rows(values)
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    seen = json.dumps(run.run_config) + json.dumps(run.tags) + "".join(
        entry_text(e) + repr(e.dagster_event) for e in instance.all_logs(result.run_id))
    for secret in run_secrets():
        assert secret not in seen
    # The keys stay in the stack's data folder, which git ignores.
    ignored = subprocess.run(["git", "check-ignore", "-q", str(cluster.tls_dir() / "ca.key")],
                             cwd=REPO, check=False)
    assert ignored.returncode == 0
    measured("tls: a run over SASL_SSL and TLS CQL", events=len(values), run_s=round(took, 1))


@pytest.mark.parametrize("system", ["cassandra", "kafka"])
def test_a_wrong_ca_fails_the_run_fast_naming_tls_and_the_variable(
    system: str, cluster_settings: Settings, instance: DagsterInstance, tmp_path: Path,
    measured: Callable[..., None],
) -> None:
    s = over_tls(cluster_settings)
    produce(s, 10)
    wrong = other_ca(tmp_path)
    if system == "cassandra":
        s, variable = dataclasses.replace(s, cassandra_ssl_ca=wrong), "CASSANDRA_SSL_CA"
    else:
        s, variable = dataclasses.replace(s, kafka_ssl_ca_location=wrong), "KAFKA_SSL_CA_LOCATION"
    result, took = timed_run(instance, s)
    assert_tls_failure(result, variable)
    assert took < FAIL_WITHIN_S, f"failed after {took:.1f} s"
    measured(f"tls: wrong CA for {system}", failed_after_s=round(took, 1), names=variable)


@pytest.mark.parametrize("system", ["cassandra", "kafka"])
def test_a_wrong_host_name_fails_the_run_fast_naming_tls_and_the_variable(
    system: str, cluster_settings: Settings, instance: DagsterInstance,
    measured: Callable[..., None],
) -> None:
    s = over_tls(cluster_settings)
    produce(s, 10)
    first = cluster.ADDRESSES[0]
    if system == "cassandra":
        s = dataclasses.replace(s, cassandra_hosts=(ROGUE,))
        ports, variable = (cluster.CQL_PORT,), "CASSANDRA_SSL_CA"
    else:
        s = dataclasses.replace(s, kafka_bootstrap_servers=f"{ROGUE}:{cluster.KAFKA_TLS_PORT}")
        ports, variable = (cluster.KAFKA_TLS_PORT,), "KAFKA_SSL_CA_LOCATION"
    with redirected(ROGUE, first, ports):
        result, took = timed_run(instance, s)
    text = assert_tls_failure(result, variable)
    assert "mismatch" in text, text[-2000:]  # the host name, not the CA
    assert took < FAIL_WITHIN_S, f"failed after {took:.1f} s"
    measured(f"tls: wrong host name for {system}", failed_after_s=round(took, 1))
