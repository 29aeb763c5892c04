"""`make bench` works: a tiny run end to end on the real servers. It asserts no speed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from devtools import bench
from programuser_dagster.settings import Settings

pytestmark = pytest.mark.stack


def test_a_tiny_bench_measures_everything_and_cleans_up(
    stack: Settings, cassandra_session, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "bench-results.json"
    result = bench.run(200, scale=True, out=out, daemon_events=200)

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    figures = written["figures"]
    for key in (
        "json_parse_events_per_s", "flatten_events_per_s", "kafka_read_events_per_s",
        "cassandra_write_ceiling_rows_per_s", "baseline_rows_per_s", "e2e_events_per_s",
        "peak_rss_mb", "client_cpu_us_per_event_outside_driver", "dagster_fixed_cost_s_per_run",
        "dagster_fixed_cost_s_per_run_postgres", "e2e_daemon_events_per_s",
        "run_start_to_first_read_s",
    ):
        assert figures[key] > 0, key
    # The cost per run: 10 runs of 200 events each, on sqlite and on PostgreSQL.
    assert [written["fixed_cost"][k]["runs"] for k in ("sqlite", "postgres")] == [10, 10]
    # The daemon's runs drained the 200 events of the 4 partitions, none failed.
    daemon = written["daemon"]
    assert daemon["events"] == 200 and daemon["runs"] >= 1 and daemon["failed_runs"] == 0
    # The sweep covers every concurrency for each write form (one INSERT per row, batches
    # bound by the driver, batches encoded column-wise); the ceiling is its best point.
    sweep = written["ceiling_sweep"]
    forms = {p["form"] for p in sweep}
    assert len(forms) == 3
    for form in forms:
        assert {p["in_flight"] for p in sweep if p["form"] == form} == set(bench.CONCURRENCY_SWEEP)
    assert figures["cassandra_write_ceiling_rows_per_s"] == max(p["rows_per_s"] for p in sweep)
    # The drain really drained: N, N/10 and 10N events, each committed (checked inside).
    assert sorted(int(n) for n in written["e2e"]) == [20, 200, 2000]
    assert all(r["peak_rss_mb"] > 0 and r["runs"] >= 1 for r in written["e2e"].values())
    assert set(written["targets_met"]) == set(bench.TARGETS)
    assert written["machine"]["nproc"] >= 1
    assert "e2e_events_per_s" in capsys.readouterr().out

    # Nothing of the bench is left on the servers.
    scratch = set(written["scratch"])
    # 6 areas (N, N/10, 10N, the two costs per run, the daemon path): input topic, DLQ,
    # keyspace each.
    assert len(scratch) == 18
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


def test_the_tree_rss_counts_exec_children_but_not_a_fork_before_its_exec() -> None:
    # A process holding ~200 MB forks a child that never execs (its pages are the parent's,
    # shared copy-on-write) and starts `sleep` (a program of its own).
    script = (
        "import os, subprocess, time\n"
        "blob = bytearray(200 * 2**20)\n"
        "for i in range(0, len(blob), 4096): blob[i] = 1\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60); os._exit(0)\n"
        "subprocess.Popen(['sleep', '60'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        own_kb = int(next(line.split()[1] for line in Path(f"/proc/{child.pid}/status")
                          .read_text().splitlines() if line.startswith("VmRSS:")))
        tree_kb = bench._tree_rss_kb(child.pid)
        assert own_kb > 200 * 1024
        assert own_kb <= tree_kb < own_kb + 20 * 1024  # `sleep` yes, the fork's copy no
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
