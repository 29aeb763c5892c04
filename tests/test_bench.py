"""`make bench` works: a tiny run end to end on the real servers. It asserts no speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from programuser_dagster import bench
from programuser_dagster.settings import Settings

pytestmark = pytest.mark.stack


def test_a_tiny_bench_measures_everything_and_cleans_up(
    stack: Settings, cassandra_session, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "bench-results.json"
    result = bench.run(200, scale=True, out=out)

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    figures = written["figures"]
    for key in (
        "json_parse_events_per_s", "flatten_events_per_s", "kafka_read_events_per_s",
        "cassandra_write_ceiling_rows_per_s", "baseline_rows_per_s", "e2e_events_per_s",
        "peak_rss_mb",
    ):
        assert figures[key] > 0, key
    # The sweep covers every concurrency for both write forms; the ceiling is its best point.
    sweep = written["ceiling_sweep"]
    assert {p["in_flight"] for p in sweep} == set(bench.CONCURRENCY_SWEEP)
    assert figures["cassandra_write_ceiling_rows_per_s"] == max(p["rows_per_s"] for p in sweep)
    # The drain really drained: N, N/10 and 10N events, each committed (checked inside).
    assert sorted(int(n) for n in written["e2e"]) == [20, 200, 2000]
    assert all(r["peak_rss_mb"] > 0 and r["runs"] >= 1 for r in written["e2e"].values())
    assert set(written["targets_met"]) == set(bench.TARGETS)
    assert written["machine"]["nproc"] >= 1
    assert "e2e_events_per_s" in capsys.readouterr().out

    # Nothing of the bench is left on the servers.
    scratch = set(written["scratch"])
    assert len(scratch) == 9  # 3 areas (N, N/10, 10N): input topic, DLQ, keyspace each
    topics = AdminClient({"bootstrap.servers": stack.kafka_bootstrap_servers}).list_topics(
        timeout=30
    ).topics
    assert not scratch & set(topics)
    keyspaces = {r.keyspace_name for r in cassandra_session.execute(
        "SELECT keyspace_name FROM system_schema.keyspaces"
    )}
    assert not scratch & keyspaces


def test_the_parallel_bench_drains_one_to_p_partitions_in_as_many_processes(
    stack: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "bench-parallel-results.json"
    result = bench.parallel(30, out, max_partitions=2)

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    points = result["points"]
    # Each point drained (and committed, checked inside) P x 30 events with P processes.
    assert [(p["partitions"], p["processes"], p["events"]) for p in points] == [
        (1, 1, 30), (2, 2, 60)
    ]
    assert points[0]["speedup"] == 1.0
    assert points[1]["speedup"] == round(points[1]["events_per_s"] / points[0]["events_per_s"], 2)
