"""The one place where the job, sensor, schedule, asset, checks and resources meet.

Loading them reads and checks every setting (settings.py): a bad value stops the code location
from loading, naming its variable, rather than failing every run later.
"""

from __future__ import annotations

import warnings

from dagster import BetaWarning, Definitions

from . import client_logs
from .housekeeping.job import build_prune_job, build_prune_schedule, dagster_history_spec
from .incidents.jobs import redrive_job, replay_job
from .ingest.assets import build_asset_checks, build_program_enrollment
from .ingest.job import build_job
from .ingest.schedules import build_backlog_schedule
from .ingest.sensors import build_backlog_sensor, build_health_sensor
from .observe.notices import build_notice_sensor
from .resources import build_resources
from .secrets import env_secret
from .settings import ALERT_WEBHOOK_URL, Settings

# Dagster 1.13 warns about a beta `owners` parameter that its own sensor decorator passes.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*owners.*")


def build_definitions(settings: Settings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    job = build_job(settings)
    prune_job = build_prune_job(settings)
    return Definitions(
        assets=[build_program_enrollment(settings), dagster_history_spec(settings)],
        asset_checks=build_asset_checks(settings),
        jobs=[job, replay_job, redrive_job, prune_job],
        sensors=[build_backlog_sensor(job, settings), build_health_sensor(settings),
                 build_notice_sensor(settings, env_secret(ALERT_WEBHOOK_URL))],
        schedules=[build_backlog_schedule(job, settings),
                   build_prune_schedule(prune_job, settings)],
        resources=build_resources(settings),
    )


# The code server and the run workers: the clients' repeated lines are summarised.
client_logs.install()
defs = build_definitions()
