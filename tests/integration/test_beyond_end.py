"""A committed offset beyond the log end (issue 24, item 3), on the real servers: written with a
plain consumer, as another tool (or a broker restored from an older snapshot) leaves it. Every
surface names the state and the replay that repairs it; the replay it names does repair it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetCheckSeverity

from programuser_dagster.cli import main
from programuser_dagster.incidents.verify import verify
from programuser_dagster.ingest import checks
from programuser_dagster.ingest.backlog import plan_backlog
from programuser_dagster.resources import kafka_resource
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO
from tests.support.pipeline import (
    cli_env,
    commit_outside,
    event,
    health_tick,
    offsets,
    produce,
    run_partition,
    temporary_env,
)

pytestmark = pytest.mark.stack

WARNING = ("partition 0: committed offset 10 is beyond the log end 2: records below 10 will be "
           "skipped; to re-read them: `programuser-dagster replay --partition 0 --to-offset 2 "
           "--apply`")


def cli(s: Settings, home: Path, capsys: Any, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    with temporary_env(cli_env(s, home)):
        code = main(list(args))
    return code, capsys.readouterr().out


def test_a_committed_offset_beyond_the_log_end_is_named_everywhere_and_replay_repairs_it(
    instance, kafka_topics: Settings, cassandra_session, tmp_path: Path, capsys
) -> None:
    s = kafka_topics
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    produce(s, [event("p", "u0"), event("p", "u1")])
    assert run_partition(instance, s).success
    commit_outside(s, 0, 10)
    o = offsets(s)
    assert (o.committed, o.high, o.lag) == (10, 2, 0)

    # lag: the table, then the state; not 0 as if caught up
    code, out = cli(s, home, capsys, "lag")
    assert code == 1 and WARNING in out.splitlines()

    # the sensor: no run, no "caught up", and its lag observation says why
    kafka = kafka_resource(s)
    try:
        plan = plan_backlog(instance, kafka, s)
    finally:
        kafka.close()
    assert not plan.run_requests
    assert "caught up" not in plan.summary() and WARNING in plan.summary()
    observation = plan.lag_observation()
    assert observation.description == WARNING
    assert observation.metadata["beyond_end_partition_0"].value == 8

    # the asset check fails, as an error
    result, _ = health_tick(instance, s)
    [check] = [e for e in result.asset_events if e.check_name == checks.STALLED_CHECK]
    assert (check.passed, check.severity) == (False, AssetCheckSeverity.ERROR)
    assert WARNING in check.description

    # verify: reads what there is (no wait for records that are not there), and fails
    started = time.monotonic()
    report = verify(s, [0], recheck_delay_s=0.1)
    assert time.monotonic() - started < 20
    assert not report.ok and report.keys_checked == 2
    assert report.describe().splitlines()[0].startswith(WARNING)
    code, out = cli(s, home, capsys, "verify", "--partition", "0")
    assert code == 1 and WARNING in out

    # drain does not call it caught up either
    code, out = cli(s, home, capsys, "drain")
    assert code == 1 and "caught up" not in out and WARNING in out

    # the command the warning names: its dry run, then --apply, repairs the state
    code, out = cli(s, home, capsys, "replay", "--partition", "0", "--to-offset", "2")
    assert code == 0 and "beyond the log end 2, would rewind to 2" in out
    assert offsets(s).committed == 10
    code, out = cli(s, home, capsys, "replay", "--partition", "0", "--to-offset", "2", "--apply")
    assert code == 0, out
    o = offsets(s)
    assert (o.committed, o.beyond_end) == (2, False)
    code, out = cli(s, home, capsys, "lag")
    assert code == 0 and "beyond" not in out
    # a record that arrives now (offset 2, below the old committed 10) is read, not skipped
    produce(s, [event("p", "u2")])
    assert offsets(s).lag == 1
    assert run_partition(instance, s).success
    assert offsets(s).committed == 3
    rows = cassandra_session.execute(
        f"SELECT user_id FROM {s.cassandra_keyspace}.{s.cassandra_table} WHERE program_id = 'p'")
    assert sorted(r.user_id for r in rows) == ["u0", "u1", "u2"]
