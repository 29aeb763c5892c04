"""Re-running failed partitions from the job's Partitions page, end to end.

A real `dagster dev` (webserver + daemon) on the session's Kafka and Cassandra: partition 0 was
drained by `programuser-dagster drain` (succeeded), the sensor's one tick launches partition 1
(fails for a real reason); partitions 2 and 3 never get a run. Then, through the webserver's
GraphQL API and exactly as the UI's "Launch backfill…" dialog does, the failed and missing
partitions are selected and a backfill of them is launched; the daemon's backfill drains them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dagster import DagsterInstance

from devtools.stack import delete_topics, ensure_topics
from programuser_dagster.ingest.drain import drain
from programuser_dagster.ingest.job import JOB_NAME
from programuser_dagster.ingest.run_tags import PARTITION_TAG
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO, dagster_dev, free_port, settings_env
from tests.support.pipeline import all_rows, dead_letters, event, offsets, produce

pytestmark = pytest.mark.stack

T = TypeVar("T")
LOCATION = "programuser_dagster"
# The UI's repoAddress for a code location loading one Definitions object.
REPOSITORY = {"repositoryName": "__repository__", "repositoryLocationName": LOCATION}
EVENTS = 20  # good events per partition

# How the job's Partitions page finds its partition set (usePartitionNameForPipeline).
PARTITION_SETS = """
query ($repositorySelector: RepositorySelector!, $pipelineName: String!) {
  partitionSetsOrError(repositorySelector: $repositorySelector, pipelineName: $pipelineName) {
    __typename
    ... on PartitionSets { results { name } }
    ... on Error { message }
  } }
"""
# The Partitions page's PartitionsStatusQuery, trimmed to what the backfill dialog reads.
PARTITION_STATUSES = """
query ($repositorySelector: RepositorySelector!, $partitionSetName: String!) {
  partitionSetOrError(repositorySelector: $repositorySelector,
                      partitionSetName: $partitionSetName) {
    __typename
    ... on PartitionSet {
      partitionsOrError { ... on Partitions { results { name } } }
      partitionStatusesOrError {
        ... on PartitionStatuses { results { partitionName runId runStatus } }
      }
    }
    ... on Error { message }
  } }
"""
# The dialog's "Submit N runs" button (LAUNCH_PARTITION_BACKFILL_MUTATION).
LAUNCH_BACKFILL = """
mutation ($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  } }
"""
BACKFILL = """
query ($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      status partitionNames
      runs { runId status tags { key value } }
    }
    ... on Error { message }
  } }
"""
BACKFILL_DONE = {"COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def graphql(port: int, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    assert not body.get("errors"), body["errors"]
    return body["data"]


def wait_for(
    what: str, check: Callable[[], T | None], timeout_s: float,
    dev: subprocess.Popen[bytes], log: Path,
) -> T:
    """Poll `check` until it returns something, failing with the dagster dev log's tail."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert dev.poll() is None, f"dagster dev exited:\n{log.read_text()[-4000:]}"
        try:
            found = check()
        except OSError:  # the webserver is not listening yet
            found = None
        if found is not None:
            return found
        assert time.monotonic() < deadline, (
            f"{what} within {timeout_s:.0f}s; dagster dev log:\n{log.read_text()[-4000:]}"
        )
        time.sleep(2)


def partition_statuses(port: int, partition_set: str) -> dict[str, dict[str, Any]]:
    """Partition name -> its latest run (runId, runStatus; None if it has none), in the
    partitions' order, as the Partitions page reads them."""
    found = graphql(port, PARTITION_STATUSES, {
        "repositorySelector": REPOSITORY, "partitionSetName": partition_set,
    })["partitionSetOrError"]
    assert found["__typename"] == "PartitionSet", found
    by_name = {s["partitionName"]: s for s in
               found["partitionStatusesOrError"]["results"]}
    return {p["name"]: by_name.get(p["name"], {}) for p in
            found["partitionsOrError"]["results"]}


def failed_and_missing(statuses: dict[str, dict[str, Any]]) -> list[str]:
    """The dialog's preselection (BackfillSelector.tsx): partitions whose latest run failed or
    that have none, with its two default filters "Missing" and "Failed" checked."""
    return [name for name, s in statuses.items()
            if (s.get("runStatus") or "NOT_STARTED") in ("NOT_STARTED", "FAILURE")]


def test_a_failed_and_missing_backfill_from_the_partitions_page_drains_exactly_those(
    kafka_topics: Settings, cassandra_session: Any, tmp_path: Path
) -> None:
    s = kafka_topics
    t0 = time.monotonic()
    home = tmp_path / "dagster_home"
    # Partition 0 is drained by `programuser-dagster drain` on the UI's instance before the UI
    # starts: its run must count as the partition's success on the Partitions page.
    produce(s, [event("p0", f"u{i}") for i in range(EVENTS)], partition=0)
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    with DagsterInstance.from_config(str(home)) as instance:
        drained = drain(instance, s, say=lambda _: None)
    assert [(p, ok) for p, ok, _ in drained.runs] == [(0, True)]
    # Partition 1's run fails for a real reason: its one non-JSON message must be dead-lettered,
    # and the dead-letter topic is gone (the broker does not create topics), so the run fails
    # without committing anything.
    produce(s, [b"{not json", *(event("p1", f"u{i}") for i in range(EVENTS))], partition=1)
    delete_topics(s.kafka_bootstrap_servers, [s.kafka_dlq_topic])
    env = {
        **settings_env(s),
        "KAFKA_DELIVERY_TIMEOUT_S": "5",
        # The sensor ticks once, at start-up: it launches the run of 1 as in production (0 has
        # no lag left), and does not tick again (nor retry 1) during the test, so only the
        # backfill can drain 1, 2 and 3.
        "PROGRAMUSER_SENSOR_INTERVAL_S": "3600",
        # Above the trigger's age plus that interval, as the settings require.
        "PROGRAMUSER_FRESHNESS_FAIL_S": "7200",
    }
    port, log = free_port(), tmp_path / "dagster-dev.log"
    with dagster_dev(home, log, env, port) as dev:
        def partition_set() -> str | None:
            found = graphql(port, PARTITION_SETS, {
                "repositorySelector": REPOSITORY, "pipelineName": JOB_NAME,
            })["partitionSetsOrError"]
            return found["results"][0]["name"] if found.get("results") else None

        name = wait_for("the code location did not load", partition_set, 240, dev, log)

        def first_runs_done() -> dict[str, dict[str, Any]] | None:
            statuses = partition_statuses(port, name)
            done = {p: statuses.get(p, {}).get("runStatus") for p in ("0", "1")}
            assert "CANCELED" not in done.values(), statuses
            return statuses if set(done.values()) <= {"SUCCESS", "FAILURE"} else None

        before = wait_for("drain's run of 0 and the sensor's run of 1 did not finish",
                          first_runs_done, 300, dev, log)
        t_failed = time.monotonic()
        assert {p: st.get("runStatus") for p, st in before.items()} == {
            "0": "SUCCESS", "1": "FAILURE", "2": None, "3": None,
        }, before
        assert offsets(s, 0).committed == EVENTS
        assert offsets(s, 1).committed is None

        # Partitions 2 and 3 get records but no run (the sensor does not tick again): missing.
        for p in (2, 3):
            produce(s, [event(f"p{p}", f"u{i}") for i in range(EVENTS)], partition=p)
        # The cause of the failure is repaired before the re-run.
        ensure_topics(s.kafka_bootstrap_servers, {s.kafka_dlq_topic: s.kafka_partitions},
                      dead_letter={s.kafka_dlq_topic})

        selected = failed_and_missing(partition_statuses(port, name))
        assert selected == ["1", "2", "3"]  # not 0, whose run succeeded
        launched = graphql(port, LAUNCH_BACKFILL, {"backfillParams": {
            "selector": {"partitionSetName": name, "repositorySelector": REPOSITORY},
            "partitionNames": selected,
            "fromFailure": False,
            "tags": [],
        }})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        def backfill_done() -> dict[str, Any] | None:
            found = graphql(port, BACKFILL, {"backfillId": backfill_id})
            backfill = found["partitionBackfillOrError"]
            return backfill if backfill.get("status") in BACKFILL_DONE else None

        # The backfill daemon looks for work every 30 s, and marks a job backfill completed on
        # its first look after the backfill's runs have finished.
        backfill = wait_for(f"backfill {backfill_id} did not complete", backfill_done, 360,
                            dev, log)
        t_done = time.monotonic()
        after = partition_statuses(port, name)

    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    assert backfill["partitionNames"] == ["1", "2", "3"]
    runs = {
        next(t["value"] for t in r["tags"] if t["key"] == PARTITION_TAG): r
        for r in backfill["runs"]
    }
    assert sorted(runs) == ["1", "2", "3"] and len(backfill["runs"]) == 3, backfill["runs"]
    assert {r["status"] for r in runs.values()} == {"SUCCESS"}, backfill["runs"]
    # On the Partitions page every partition is now green: 1-3 by the backfill's runs, 0 still
    # by drain's run (not re-run).
    assert {p: (st["runId"], st["runStatus"]) for p, st in after.items()} == {
        "0": (before["0"]["runId"], "SUCCESS"),
        **{p: (runs[p]["runId"], "SUCCESS") for p in ("1", "2", "3")},
    }

    # Every partition is committed to its end (lag 0), and the table holds exactly the good
    # events of all four partitions.
    for p in range(4):
        o = offsets(s, p)
        assert (o.committed, o.lag) == (o.high, 0), (p, o)
    assert offsets(s, 1).high == EVENTS + 1
    expected = {(f"p{p}", f"u{i}") for p in range(4) for i in range(EVENTS)}
    assert set(all_rows(cassandra_session, s)) == expected
    # The failed run delivered no dead letter; the backfill's run of 1 delivered its one.
    letters = dead_letters(s, expected=1)
    assert [dict(m.headers())["reason"] for m in letters] == [b"not_json"]
    assert dict(letters[0].headers())["source_partition"] == b"1"
    print(f"\nfailed and missing backfill: the first runs finished after {t_failed - t0:.0f}s, "
          f"the backfill of 3 partitions completed {t_done - t_failed:.0f}s later")
