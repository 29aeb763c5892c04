"""The cluster stack itself (issue 14): `stack status --cluster` says what each node is doing,
and a healthy cluster's `up` starts nothing and returns at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from devtools.stack import cluster
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO

pytestmark = pytest.mark.cluster


def status() -> tuple[int, dict[str, str]]:
    out = subprocess.run([sys.executable, "-m", "devtools", "stack", "status", "--cluster"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    return out.returncode, {line.split()[0]: line for line in out.stdout.splitlines()}


def test_status_names_each_node_its_address_pid_and_state(healthy_cluster: Settings) -> None:
    code, lines = status()
    assert code == 0
    assert sorted(lines) == sorted(n.name for n in cluster.NODES)
    for n in cluster.NODES:
        assert f"{n.address}:{n.port}" in lines[n.name]
        assert f"pid {cluster.pid(n)}" in lines[n.name]
        assert "answering" in lines[n.name] and "NOT" not in lines[n.name]
    cluster.signal_node("cassandra-3", signal.SIGSTOP)
    try:
        code, lines = status()
    finally:
        cluster.signal_node("cassandra-3", signal.SIGCONT)
    assert code == 1
    assert "stopped (SIGSTOP)" in lines["cassandra-3"]


def test_up_on_a_healthy_cluster_starts_nothing(healthy_cluster: Settings) -> None:
    t0 = time.monotonic()
    assert cluster.up(adopt=False) == []
    assert time.monotonic() - t0 < 30
