"""The deployed job as Dagster reconstructs it (re-execution, `execute_job`).

`reconstructable(job_from_env)` records this module's import path (tests.support.jobs), so the
function must stay at module level here.
"""

from __future__ import annotations

from dagster import reconstructable
from dagster._core.definitions.reconstruct import ReconstructableJob

from programuser_dagster.settings import Settings


def job_from_env():
    """The deployed job, built from the environment, so that Dagster can re-execute it."""
    from programuser_dagster.definitions import build_definitions

    return build_definitions(Settings.from_env()).get_job_def("program_user_info")


def reconstructable_job_from_env() -> ReconstructableJob:
    # Dagster caches the last reconstructed job; each test sets its own environment.
    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    return reconstructable(job_from_env)
