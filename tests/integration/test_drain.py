"""`programuser-dagster drain` and `lag`, and `python -m devtools produce`, against the real
servers."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from programuser_dagster.ingest.drain import FAILED, PROGRESS, STALLED, SUPERSEDED_RUN, drain, judge
from programuser_dagster.ingest.run_tags import PARTITION_TAG
from programuser_dagster.settings import Settings
from tests.support.pipeline import add_run, cli_env, commit_outside, event, offsets, produce

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parents[2]


def test_drain_on_an_empty_topic_runs_nothing(instance, kafka_topics: Settings) -> None:
    lines: list[str] = []
    result = drain(instance, kafka_topics, say=lines.append)
    assert (result.runs, result.failed, lines) == ([], 0, [])


def test_drain_empties_a_backlog_across_four_partitions(
    instance, kafka_topics: Settings, cassandra_session
) -> None:
    s = kafka_topics
    for p in range(4):
        produce(s, [event(f"p{p}", f"u{i}") for i in range(25)], partition=p)
    lines: list[str] = []
    result = drain(instance, s, say=lines.append, max_messages=10)
    # 25 records per partition at 10 per run: 3 runs for each of the 4 partitions.
    assert result.failed == 0
    assert sorted(p for p, ok, _ in result.runs if ok) == sorted([0, 1, 2, 3] * 3)
    assert all(offsets(s, p).committed == 25 for p in range(4))
    count = cassandra_session.execute(
        f"SELECT count(*) FROM {s.cassandra_keyspace}.{s.cassandra_table}"
    ).one()[0]
    assert count == 100
    runs = instance.get_run_records(RunsFilter(job_name="program_user_info"))
    assert len(runs) == 12 and all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs)
    assert all("ok: partition" in line for line in lines)


def test_drain_skips_a_partition_whose_run_is_in_flight(
    instance, kafka_topics: Settings
) -> None:
    s = kafka_topics
    produce(s, [event("p", "u")], partition=0)
    produce(s, [event("p", "v")], partition=1)
    add_run(instance, 0, DagsterRunStatus.STARTED)
    lines: list[str] = []
    result = drain(instance, s, say=lines.append)
    assert result.skipped == {0: "a run is queued or in progress in the UI"}
    assert [p for p, _, _ in result.runs] == [1]
    assert offsets(s, 0).committed is None


def _cli(args: list[str], s: Settings, home: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(s, home)
    # produce is dev tooling (devtools/, run from the checkout's root); the rest is the CLI.
    module = ["devtools"] if args[:1] == ["produce"] else ["programuser_dagster.cli"]
    return subprocess.run(
        [sys.executable, "-m", *module, *args],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )


def test_cli_produce_sample_drain_and_lag(kafka_topics: Settings, tmp_path) -> None:
    s = kafka_topics
    home = str(tmp_path)
    produced = _cli(["produce", "--sample", "40"], s, home)
    assert produced.returncode == 0, produced.stderr
    assert f"produced 40 messages to {s.kafka_input_topic}" in produced.stdout
    before = _cli(["lag"], s, home)
    assert before.returncode == 0 and before.stdout.splitlines()[-1].split()[-2] == "40"
    drained = _cli(["drain"], s, home)
    assert drained.returncode == 0, drained.stderr
    assert "ok: partition" in drained.stdout
    after = _cli(["lag"], s, home)
    assert after.stdout.splitlines()[-1].split()[-2] == "0"
    assert _cli(["drain"], s, home).stdout.strip() == (
        "nothing to drain: every partition is caught up"
    )


def test_drain_in_two_processes_gives_each_partition_to_one_of_them(
    kafka_topics: Settings, cassandra_session, tmp_path
) -> None:
    from dagster import DagsterInstance

    from programuser_dagster.ingest.run_tags import DRAIN_PROCESS_TAG

    s = kafka_topics
    for p in range(4):
        produce(s, [event(f"p{p}", f"u{i}") for i in range(25)], partition=p)
    drained = _cli(["drain", "--processes", "2", "--max-messages", "10"], s, str(tmp_path))
    assert drained.returncode == 0, drained.stderr
    # Each worker prints its own runs' lines: 3 runs for each of the 4 partitions.
    assert drained.stdout.count("ok: partition") == 12, drained.stdout
    assert all(offsets(s, p).committed == 25 for p in range(4))
    count = cassandra_session.execute(
        f"SELECT count(*) FROM {s.cassandra_keyspace}.{s.cassandra_table}"
    ).one()[0]
    assert count == 100
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        runs = instance.get_run_records(RunsFilter(job_name="program_user_info"))
    assert len(runs) == 12
    assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs)
    # Two worker processes, each running its own partitions (round-robin: 0+2 and 1+3), so at
    # most one run per partition at a time.
    by_process: dict[str, set[str]] = {}
    for r in runs:
        tags = r.dagster_run.tags
        by_process.setdefault(tags[DRAIN_PROCESS_TAG], set()).add(tags[PARTITION_TAG])
    assert sorted(sorted(parts) for parts in by_process.values()) == [["0", "2"], ["1", "3"]]


# ------------------------------------------------------------- bad settings must not loop


def _offsets(partition: int, committed: int | None, high: int, low: int = 0) -> Any:
    from programuser_dagster.kafka.resource import PartitionOffsets

    return PartitionOffsets(partition=partition, low=low, high=high, committed=committed)


@pytest.mark.parametrize(
    ("before", "after", "succeeded", "outcome", "verdict"),
    [
        # The offset moved: progress, whatever is left.
        ((None, 25), (10, 25), True, "committed", PROGRESS),
        ((10, 25), (20, 25), True, "committed", PROGRESS),
        # A range of only holes (transaction markers) moves the offset too.
        ((10, 12), (12, 12), True, "committed", PROGRESS),
        # Nothing left to read: caught up, even if this run did not move the offset.
        ((10, 10), (10, 10), True, None, PROGRESS),
        # Succeeded, offset stayed, records left: the loop of issue 11.
        ((40, 52), (40, 52), True, "committed", STALLED),
        ((None, 5), (None, 5), True, None, STALLED),
        ((None, 5), (0, 5), True, "no_progress", STALLED),
        # Another run committed this range first: not a failure, go on.
        ((40, 52), (40, 52), True, "superseded", SUPERSEDED_RUN),
        ((40, 52), (40, 52), False, None, FAILED),
        ((40, 52), (50, 52), False, None, FAILED),
    ],
)
def test_judge_tells_progress_from_a_stall(
    before: tuple, after: tuple, succeeded: bool, outcome: str | None, verdict: str
) -> None:
    assert judge(_offsets(0, *before), _offsets(0, *after), succeeded, outcome) == verdict


def test_judge_counts_a_start_below_the_low_watermark_as_its_start() -> None:
    # Committed 5, records below 30 deleted by retention: the run starts at 30.
    assert judge(_offsets(0, 5, 60, low=30), _offsets(0, 40, 60, low=30), True, None) == PROGRESS
    assert judge(_offsets(0, 5, 60, low=30), _offsets(0, 5, 60, low=30), True, None) == STALLED


def test_the_stop_summary_says_what_was_finished_and_what_was_not() -> None:
    from programuser_dagster.ingest.drain import DrainResult

    result = DrainResult(
        runs=[(0, True, ""), (2, True, ""), (0, False, ""), (1, False, "")],
        signal=signal.SIGTERM, caught_up={2}, not_started={3, 4}, lag_left={5: 7},
        in_progress={1: (False, "failed without committing")},
    )
    assert result.stop_summary() == (
        "drain: stopped by SIGTERM: 3 runs finished (1 failed, 1 partition caught up), "
        "partition 1's run in progress failed without committing, lag left on partition 5 (7), "
        "partitions 3, 4 not started"
    )
    assert DrainResult(signal=signal.SIGINT).stop_summary() == (
        "drain: stopped by SIGINT: 0 runs finished (0 partitions caught up), no run was in "
        "progress"
    )


@pytest.mark.parametrize("bad", [0, -5])
def test_drain_refuses_max_messages_below_one(instance, bad: int) -> None:
    with pytest.raises(ValueError, match=f"max_messages must be at least 1, not {bad}"):
        drain(instance, Settings(), max_messages=bad)


def test_drain_stops_on_a_partition_whose_run_did_not_move_its_offset(
    instance, kafka_topics: Settings
) -> None:
    """A run succeeds, then its partition's offset is back where it was (here an operator's
    reset, the moment drain prints the run's line): drain stops on that partition, says so,
    counts a failure, and finishes the other partitions."""
    s = kafka_topics
    produce(s, [event("p0", f"u{i}") for i in range(25)], partition=0)
    produce(s, [event("p1", f"u{i}") for i in range(5)], partition=1)
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if line.startswith("partition 0: run") and " ok: " in line and len(lines) == 1:
            commit_outside(s, 0, 0)

    result = drain(instance, s, say=say, max_messages=10)

    assert result.failed == 1, lines
    [stall] = [line for line in lines if "succeeded but" in line]
    assert stall.startswith("partition 0: run ")
    assert stall.endswith("succeeded but the committed offset stayed at 0 (lag 25): stopping on "
                          "this partition; see the run in the UI")
    assert list(result.stalled) == [0]
    assert [p for p, _, _ in result.runs] == [0, 1]  # partition 0 was not run again
    assert offsets(s, 0).committed == 0 and offsets(s, 1).committed == 5


def test_drain_goes_on_after_a_superseded_run(
    instance, kafka_topics: Settings, monkeypatch
) -> None:
    """Another committer commits the range while the run waits before its fence: the run is
    superseded, drain says so, does not count it as a failure, and drains the rest."""
    from programuser_dagster.ingest.fault_pauses import PAUSE_BEFORE_FENCE_ENV

    s = kafka_topics
    produce(s, [event("p", f"u{i}") for i in range(25)], partition=0)
    monkeypatch.setenv(PAUSE_BEFORE_FENCE_ENV, "2")
    lines: list[str] = []

    def interfere() -> None:
        [run] = _wait_for("the first run", lambda: _runs(instance)[:1], 120)
        _wait_for("its pause", lambda: _logged(instance, run.run_id, "Test fault hook"), 120)
        commit_outside(s, 0, 10)  # as another run would have

    thread = threading.Thread(target=interfere, daemon=True)
    thread.start()
    result = drain(instance, s, say=lines.append, max_messages=10)
    thread.join(10)

    assert result.failed == 0, lines
    assert lines[0].startswith("partition 0: run ")
    assert lines[0].endswith(" superseded: another run committed this range first"), lines
    assert [p for p, ok, _ in result.runs] == [0, 0, 0]  # superseded, [10, 20), [20, 25)
    assert offsets(s, 0).committed == 25


def test_drain_prints_the_cause_of_a_failed_run_on_its_line(
    instance, kafka_topics: Settings
) -> None:
    import dataclasses

    s = dataclasses.replace(kafka_topics, cassandra_username="nobody")  # bad credentials
    produce(s, [event("p", "u")], partition=0)
    lines: list[str] = []
    result = drain(instance, s, say=lines.append)
    assert result.failed == 1
    [line] = lines
    assert line.startswith("partition 0: run ") and " FAILED: " in line
    assert "Execution of step" not in line
    assert "Bad credentials" in line or "AuthenticationFailed" in line, line
    assert "\n" not in line


def test_failure_description_reads_past_dagsters_wrapper_to_the_cause() -> None:
    from dagster._utils.error import SerializableErrorInfo

    from programuser_dagster.ingest.drain import _error_text

    kafka = SerializableErrorInfo(
        "cimpl.KafkaException: KafkaError{code=_TRANSPORT}\n", [], "KafkaException")
    ours = SerializableErrorInfo(
        "programuser_dagster.kafka.resource.KafkaUnavailable: Kafka at 127.0.0.1:1 did not "
        "answer.\n", [], "KafkaUnavailable", cause=kafka)
    wrapper = SerializableErrorInfo(
        'dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while '
        'executing op "flatten_events":\n', [], "DagsterExecutionStepExecutionError", cause=ours)
    assert _error_text(wrapper) == ("KafkaUnavailable: Kafka at 127.0.0.1:1 did not answer. "
                                    "(caused by KafkaException: KafkaError{code=_TRANSPORT})")
    interrupted = SerializableErrorInfo(
        "dagster._core.errors.DagsterExecutionInterruptedError\n", [],
        "DagsterExecutionInterruptedError")
    assert _error_text(interrupted) == "interrupted by SIGINT or SIGTERM before it committed"


# ------------------------------------------------------------ drain stops on SIGTERM/SIGINT




def _wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _runs(instance) -> list[Any]:
    records = instance.get_run_records(RunsFilter(job_name="program_user_info"), ascending=True)
    return [r.dagster_run for r in records]


def _logged(instance, run_id: str, text: str) -> bool:
    for entry in instance.all_logs(run_id):
        event_ = entry.dagster_event
        if any(text in t for t in (entry.user_message, event_ and event_.message) if t):
            return True
    return False


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(Path(__file__).parents[2] / "dagster.yaml", home / "dagster.yaml")
    return home


def _backlog(s: Settings) -> None:
    for p in range(4):
        produce(s, [event(f"p{p}", f"u{i}") for i in range(25)], partition=p)


def _start_drain(s: Settings, home: Path, out: Path, *args: str,
                 pause_s: float = 4) -> subprocess.Popen:
    from programuser_dagster.ingest.fault_pauses import PAUSE_BEFORE_COMMIT_ENV

    # Each run waits here, its writes acknowledged, inside the commit step: the signal
    # arrives while a run is in progress.
    env = cli_env(s, home, **{PAUSE_BEFORE_COMMIT_ENV: str(pause_s)})
    return subprocess.Popen(
        [sys.executable, "-m", "programuser_dagster.cli", "drain", "--max-messages", "10",
         *args],
        env=env, stdout=out.open("wb"), stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def _assert_committed_rows_were_written(s: Settings, session) -> dict[int, int | None]:
    """Nothing committed that was not written: every event below each partition's committed
    offset has its row. Returns the committed offsets."""
    committed = {p: offsets(s, p).committed for p in range(4)}
    rows = {(r.program_id, r.user_id) for r in session.execute(
        f"SELECT program_id, user_id FROM {s.cassandra_keyspace}.{s.cassandra_table}")}
    for p, c in committed.items():
        missing = [i for i in range(c or 0) if (f"p{p}", f"u{i}") not in rows]
        assert not missing, f"partition {p} committed {c} but rows {missing} are missing"
    return committed


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_drain_stops_on_a_signal_and_says_what_was_left(
    kafka_topics: Settings, cassandra_session, tmp_path: Path, signum: int, code: int
) -> None:
    s = kafka_topics
    _backlog(s)
    home = _home(tmp_path)
    out = tmp_path / "drain.out"
    proc = _start_drain(s, home, out)
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            [run] = _wait_for("drain's first run", lambda: _runs(instance)[:1], 180)
            _wait_for("its pause before the commit",
                      lambda: _logged(instance, run.run_id, "Test fault hook"), 180)
            proc.send_signal(signum)
            assert proc.wait(120) == code, out.read_text()
            runs = _runs(instance)
        name = signal.Signals(signum).name
        assert out.read_text().splitlines()[-1] == (
            f"drain: stopped by {name}: 0 runs finished (0 partitions caught up), partition 0's "
            "run in progress committed up to 10, lag left on partition 0 (15), "
            "partitions 1, 2, 3 not started"
        ), out.read_text()
        # No run started after the signal; the one in progress finished (its writes were
        # acknowledged: it committed).
        assert [r.run_id for r in runs] == [run.run_id]
        assert runs[0].status == DagsterRunStatus.SUCCESS
        assert _assert_committed_rows_were_written(s, cassandra_session) == {
            0: 10, 1: None, 2: None, 3: None}
    finally:
        _stop(proc)


def test_drain_in_two_processes_forwards_a_signal_and_waits_for_the_workers(
    kafka_topics: Settings, cassandra_session, tmp_path: Path
) -> None:
    s = kafka_topics
    _backlog(s)
    home = _home(tmp_path)
    out = tmp_path / "drain.out"
    # Long enough that the first worker's run is still paused when the second's pause begins,
    # however far apart a busy machine starts them (4 s was not: the signal came after one commit).
    proc = _start_drain(s, home, out, "--processes", "2", pause_s=15)
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            first = _wait_for("a run in each worker", lambda: _runs(instance)[1:] and
                              _runs(instance), 180)
            for run in first:
                _wait_for("the pause before the commit",
                          lambda run=run: _logged(instance, run.run_id, "Test fault hook"), 180)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(120) == 143, out.read_text()
            runs = _runs(instance)
        assert out.read_text().splitlines()[-1] == (
            "drain: stopped by SIGTERM: 0 runs finished (0 partitions caught up), partition 0's "
            "run in progress committed up to 10, partition 1's run in progress committed up "
            "to 10, lag left on partition 0 (15), partition 1 (15), partitions 2, 3 not started"
        ), out.read_text()
        assert sorted(r.run_id for r in runs) == sorted(r.run_id for r in first)
        assert all(r.status == DagsterRunStatus.SUCCESS for r in runs)
        assert _assert_committed_rows_were_written(s, cassandra_session) == {
            0: 10, 1: 10, 2: None, 3: None}
    finally:
        _stop(proc)
