"""The real Dagster UI in headless Chromium (Debian's), driven by Playwright.

Opens the UI served by `dagster dev`, finds the job, sees the sensor running, opens a
successful run and reads its counts, opens the asset page; screenshots go to screenshots/.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from programuser_dagster.settings import Settings
from tests.support.dagster_dev import REPO, dagster_dev, free_port, settings_env
from tests.support.pipeline import event, offsets, produce

pytestmark = pytest.mark.stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "screenshots"
LOCATION = "programuser_dagster"


def test_an_operator_can_follow_ingestion_in_the_ui(
    kafka_topics: Settings, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: `make deps` installs Debian's chromium.")
    from playwright.sync_api import sync_playwright

    s = kafka_topics
    produce(s, [event("p", f"u{i}") for i in range(7)], partition=2)
    home, port = tmp_path / "dagster_home", free_port()
    env = {**settings_env(s), "PROGRAMUSER_SENSOR_INTERVAL_S": "5"}
    SHOTS.mkdir(exist_ok=True)
    with dagster_dev(home, tmp_path / "dagster-dev.log", env, port) as dev:
        deadline = time.monotonic() + 240
        while offsets(s, 2).committed != 7:
            assert dev.poll() is None
            assert time.monotonic() < deadline, "the sensor's run did not commit in 4 min"
            time.sleep(2)
        with DagsterInstance.from_config(str(home)) as instance:
            while True:
                done = instance.get_run_records(
                    RunsFilter(job_name="program_user_info", statuses=[DagsterRunStatus.SUCCESS])
                )
                if done:
                    break
                assert time.monotonic() < deadline
                time.sleep(1)
            run_id = done[0].dagster_run.run_id

        base = f"http://127.0.0.1:{port}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                # As root on CI: no sandbox; no background traffic to hosts we cannot reach.
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)

            page.goto(f"{base}/locations/{LOCATION}/jobs/program_user_info")
            page.get_by_text("flatten_events").first.wait_for()
            # The first visit offers a newsletter: close it, as a person would.
            skip = page.get_by_role("button", name="Skip")
            if skip.count():
                skip.first.click()
            page.screenshot(path=str(SHOTS / "1-job.png"))

            page.goto(f"{base}/locations/{LOCATION}/sensors/kafka_backlog_sensor")
            page.get_by_text("kafka_backlog_sensor").first.wait_for()
            # The sensor's status row reads "Running" (it is on by default).
            page.get_by_text("Running", exact=True).first.wait_for()
            # The tick history loads after the page: the tick that launched the run shows.
            page.get_by_text("1 run requested").first.wait_for()
            page.screenshot(path=str(SHOTS / "2-sensor.png"))

            page.goto(f"{base}/runs/{run_id}")
            page.get_by_text("messages_read").first.wait_for()
            text = page.inner_text("body")
            assert "Committed 7: partition 2 offsets [0, 7): read 7, written 7" in text
            page.screenshot(path=str(SHOTS / "3-run.png"), full_page=True)

            page.goto(f"{base}/assets/program_enrollment")
            page.get_by_text("program_enrollment").first.wait_for()
            page.get_by_text("Latest materialization").first.wait_for()
            page.screenshot(path=str(SHOTS / "4-asset.png"))
            page.goto(f"{base}/assets/program_enrollment?view=checks")
            page.get_by_text("accounting_balanced").first.wait_for()
            page.screenshot(path=str(SHOTS / "5-asset-checks.png"))
            browser.close()
