"""Re-executing a run's commit step in a fresh process, as the UI's "Re-execute from failure"
does (a new run worker, later a new container): the step finds what the first process wrote in
the IO manager's receipts table, not in the first process's memory or local files."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from programuser_dagster.ingest.fault_pauses import PAUSE_BEFORE_COMMIT_ENV
from programuser_dagster.settings import Settings
from tests.support.faults import REPO, env_for, runs_of, wait_for
from tests.support.pipeline import all_rows, dead_letters, event, offsets, produce

pytestmark = pytest.mark.stack

# The child process: the deployed job, rebuilt from the environment, re-executed from failure.
_REEXECUTE = textwrap.dedent("""
    import sys
    from dagster import DagsterInstance, ReexecutionOptions, execute_job
    from programuser_dagster.ingest.run_tags import PARTITION_TAG
    from tests.support.jobs import reconstructable_job_from_env

    with DagsterInstance.get() as instance:
        options = ReexecutionOptions.from_failure(sys.argv[1], instance)
        with execute_job(reconstructable_job_from_env(), instance, reexecution_options=options,
                         tags={PARTITION_TAG: "0"}) as result:
            print(result.run_id)
            sys.exit(0 if result.success else 1)
""")


def _paused(instance: DagsterInstance, run_id: str) -> bool:
    return any("Test fault hook" in (e.message or "")
               for e in instance.all_logs(run_id))


def test_the_commit_step_reexecuted_in_a_fresh_process_commits_what_the_first_wrote(
    kafka_topics: Settings, cassandra_session, tmp_path: Path
) -> None:
    s = kafka_topics
    produce(s, [event("p", f"u{i}") for i in range(5)])
    [bad] = produce(s, [b"not json"])
    produce(s, [event("p", f"u{i}") for i in range(5, 8)])
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")

    # 1. A drain writes the rows, then is killed while its commit step waits to commit.
    with (tmp_path / "drain.out").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "programuser_dagster.cli", "drain"],
            env=env_for(s, home, **{PAUSE_BEFORE_COMMIT_ENV: "300"}),
            stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            with DagsterInstance.from_config(str(home)) as instance:
                [run] = wait_for("drain's run", lambda: runs_of(instance, 0), timeout=180)
                wait_for("the commit pause", lambda: _paused(instance, run.run_id), timeout=180)
                written = all_rows(cassandra_session, s)
                assert len(written) == 8
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                # What run monitoring (or the next planner) does with a run whose process died.
                instance.report_run_failed(instance.get_run_by_id(run.run_id), "killed")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    assert offsets(s).committed is None
    # A fresh process, as in a new container: nothing of the first process's local files.
    shutil.rmtree(home / "storage", ignore_errors=True)

    # 2. Re-execute from failure in a new process: only the commit step runs, and commits.
    child = subprocess.run(
        [sys.executable, "-c", _REEXECUTE, run.run_id],
        env=env_for(s, home), cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    rerun_id = child.stdout.strip().splitlines()[-1]
    with DagsterInstance.from_config(str(home)) as instance:
        steps = {st.step_key: st.status.value
                 for st in instance.get_run_step_stats(rerun_id)}
        assert steps == {"commit_offsets": "SUCCESS"}
        loaded = [e for e in instance.all_logs(rerun_id, of_type=DagsterEventType.LOADED_INPUT)]
        assert [e.dagster_event.step_key for e in loaded] == ["commit_offsets"]
        rerun = instance.get_run_by_id(rerun_id)
        assert rerun.status == DagsterRunStatus.SUCCESS and rerun.parent_run_id == run.run_id
    assert offsets(s).committed == 9
    assert all_rows(cassandra_session, s) == written
    # The dead letter, delivered by the re-executed step from its offset and reason, is on the
    # dead-letter topic once for a read_committed reader (the killed transaction was aborted).
    [letter] = dead_letters(s, expected=1)
    assert dict(letter.headers())["source_offset"] == str(bad).encode()
