"""Cassandra refusing every write, whatever the row, on real servers: a guardrail switched on
mid-stream, a column dropped mid-stream. The run fails without committing and names the cause;
nothing is dead-lettered; once the cause is gone the next run writes everything
(docs/contract.md, "Outcome of a message", step 7; issue 24).

Guardrails are node-wide, so they are switched on a private node (its own data folder and
ports, ~15-40 s to start here), not on the shared one other tests write to at the same time;
Kafka is the shared broker. The guardrail is changed at runtime over JMX with Cassandra's own
nodetool (setguardrailsconfig), on a local-only JMX port. A dropped column touches only the
test's own keyspace, so that test uses the shared node.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import ExecuteInProcessResult

from devtools.stack import down, up
from devtools.stack.launcher import (
    _CASSANDRA_JDK17_FLAGS,
    cassandra_cluster,
    ensure_libs,
    ensure_schema,
    find_java17,
)
from programuser_dagster.cassandra import io_manager as cassandra_io
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import free_port
from tests.support.pipeline import (
    dead_letters,
    event,
    failure_text,
    offsets,
    produce,
    row,
    run_partition,
    step_metadata,
)

# `make test` runs tests side by side; this module's stay on one worker so that
# its private Cassandra node starts once.
pytestmark = [pytest.mark.stack, pytest.mark.xdist_group("test_every_row_refused")]


@dataclass(frozen=True)
class PrivateNode:
    cql_port: int
    jmx_port: int
    lib: Path  # the node's jars (nodetool is among them)

    def set_guardrail(self, setter: str, *values: str) -> None:
        """`nodetool setguardrailsconfig <setter> <values>` on this node, at runtime."""
        env = {k: v for k, v in os.environ.items() if k != "JDK_JAVA_OPTIONS"}
        subprocess.run(
            [str(find_java17() / "bin" / "java"), *_CASSANDRA_JDK17_FLAGS, "-cp", f"{self.lib}/*",
             "org.apache.cassandra.tools.NodeTool", "-h", "127.0.0.1", "-p", str(self.jmx_port),
             "setguardrailsconfig", setter, *values],
            check=True, capture_output=True, timeout=120, env=env,
        )


@pytest.fixture(scope="module")
def private_node() -> Iterator[PrivateNode]:
    """A Cassandra node of this module's own (temporary data folder, free ports), stopped and
    removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="programuser-guardrails-"))
    cql, jmx = free_port(), free_port()
    env = {
        "PROGRAMUSER_STACK_DIR": str(folder),
        "CASSANDRA_PORT": str(cql),
        "PROGRAMUSER_CASSANDRA_STORAGE_PORT": str(free_port()),
        # Read by the java launcher: JMX on 127.0.0.1 only (Cassandra's local JMX), for nodetool.
        "JDK_JAVA_OPTIONS": f"-Dcassandra.jmx.local.port={jmx}",
    }

    @contextmanager
    def private_env() -> Iterator[None]:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            yield

    try:
        with private_env():
            up(Settings.from_env(), which=["cassandra"], timeout=240)
            lib = ensure_libs("cassandra")
        yield PrivateNode(cql, jmx, lib)
    finally:
        with private_env():
            down(["cassandra"])
        shutil.rmtree(folder, ignore_errors=True)


def _on_private_node(node: PrivateNode, settings: Settings) -> Settings:
    """The test's topics (shared broker) and keyspace, the keyspace on the private node."""
    s = dataclasses.replace(settings, cassandra_port=node.cql_port)
    ensure_schema(s.cassandra_hosts, s.cassandra_keyspace, s.cassandra_table,
                  s.cassandra_replication, port=s.cassandra_port)
    return s


def _failed_without_a_trace(failed: ExecuteInProcessResult, s: Settings, words: list[str],
                            committed: int | None) -> None:
    """The run failed naming the cause, committed nothing and dead-lettered nothing."""
    assert not failed.success
    message = failure_text(failed)
    for word in ["refuses every write, whatever the row", *words]:
        assert word in message
    assert offsets(s).committed == committed
    assert dead_letters(s, expected=0, timeout_s=3) == []


def _next_run_writes_everything(instance: Any, s: Settings, session: Any,
                                keys: list[tuple[str, str]], written: int) -> None:
    """Once the cause is gone, the next run writes the range: every key, no dead letter."""
    rerun = run_partition(instance, s)
    assert rerun.success
    md = step_metadata(rerun)
    assert (md["messages_written"], md["messages_dead_lettered"]) == (written, 0)
    assert offsets(s).committed == len(keys)
    assert dead_letters(s, expected=0, timeout_s=3) == []
    assert [k for k in keys if row(session, s, *k) is None] == []


@contextmanager
def _session(s: Settings) -> Iterator[Any]:
    cluster = cassandra_cluster(s.cassandra_hosts, s.cassandra_port)
    try:
        yield cluster.connect()
    finally:
        cluster.shutdown()


# (nodetool setter, its value switching the guardrail on, the value switching it off, words of
# the run's failure that name the cause and the fix)
GUARDRAILS = {
    "user_timestamps": ("user_timestamps_enabled", ["false"], ["true"],
                        ["guardrail user_timestamps", "user_timestamps_enabled: true"]),
    # The pipeline writes at LOCAL_QUORUM (CASSANDRA_CONSISTENCY's default).
    "write_consistency_levels": ("write_consistency_levels_disallowed", ["LOCAL_QUORUM"],
                                 ["[]"], ["guardrail write_consistency_levels",
                                          "CASSANDRA_CONSISTENCY"]),
}


@pytest.mark.parametrize(("setter", "on", "off", "words"), GUARDRAILS.values(),
                         ids=GUARDRAILS.keys())
def test_a_guardrail_refusing_every_write_fails_the_run_and_dead_letters_nothing(
    setter: str, on: list[str], off: list[str], words: list[str],
    private_node: PrivateNode, kafka_topics: Settings, instance,
) -> None:
    s = _on_private_node(private_node, kafka_topics)
    keys = [("p", f"u{i}") for i in range(5)]
    produce(s, [event(*k) for k in keys[:2]])
    assert run_partition(instance, s).success
    assert offsets(s).committed == 2

    # Mid-stream: more events arrive, and the cluster now refuses every write of the pipeline's.
    produce(s, [event(*k) for k in keys[2:]])
    private_node.set_guardrail(setter, *on)
    try:
        failed = run_partition(instance, s)
    finally:
        private_node.set_guardrail(setter, *off)
    _failed_without_a_trace(
        failed, s, [*words, "Nothing of partition 0 offsets [2, 5) was committed"], committed=2)
    with _session(s) as session:
        _next_run_writes_everything(instance, s, session, keys, written=3)


def test_a_guardrail_switched_on_during_a_run_fails_it_and_dead_letters_nothing(
    private_node: PrivateNode, kafka_topics: Settings, instance, monkeypatch
) -> None:
    s = _on_private_node(private_node, kafka_topics)
    keys = [(f"p{i}", "u") for i in range(6)]
    produce(s, [event(*k) for k in keys])
    chunks: list[None] = []

    def switch_on_after_the_first_chunk() -> None:
        chunks.append(None)
        if len(chunks) == 2:  # the first chunk is sent, the second not yet read
            private_node.set_guardrail("user_timestamps_enabled", "false")

    # The IO manager calls it between chunks (programuser_dagster/cassandra/io_manager.py:
    # handle_output).
    monkeypatch.setattr(cassandra_io, "collect_between_chunks", switch_on_after_the_first_chunk)
    try:
        failed = run_partition(instance, s, chunk_messages=2)
    finally:
        private_node.set_guardrail("user_timestamps_enabled", "true")
    assert len(chunks) >= 2  # the guardrail went on while the run was writing
    _failed_without_a_trace(failed, s, ["guardrail user_timestamps"], committed=None)
    monkeypatch.undo()
    with _session(s) as session:
        _next_run_writes_everything(instance, s, session, keys, written=6)


def test_a_column_dropped_mid_stream_fails_the_run_and_dead_letters_nothing(
    kafka_topics: Settings, cassandra_session, instance
) -> None:
    s = kafka_topics
    table = f"{s.cassandra_keyspace}.{s.cassandra_table}"
    keys = [("p", f"u{i}") for i in range(4)]
    produce(s, [event(*k) for k in keys[:2]])
    assert run_partition(instance, s).success

    produce(s, [event(*k) for k in keys[2:]])
    cassandra_session.execute(f"ALTER TABLE {table} DROP user_sub_type", timeout=60)
    failed = run_partition(instance, s)
    _failed_without_a_trace(failed, s, ["dropped or altered while running",
                                        "Undefined column name user_sub_type"], committed=2)
    cassandra_session.execute(f"ALTER TABLE {table} ADD user_sub_type text", timeout=60)
    _next_run_writes_everything(instance, s, cassandra_session, keys, written=2)
