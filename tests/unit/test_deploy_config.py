"""The production instance configs of deploy/ load and validate against Dagster's schemas.

Kubernetes and Docker cannot run here, so the run launchers' configs are checked against the
launchers' own config schemas (from dagster-k8s and dagster-docker), not launched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster_docker import DockerRunLauncher
from dagster_k8s import K8sRunLauncher

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PG_ENV = {
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "unused",
    "DAGSTER_PG_HOST": "db",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_K8S_NAMESPACE": "programuser",
}


@pytest.mark.parametrize("folder", ["", "k8s", "docker"])
def test_each_instance_config_is_valid(folder: str, monkeypatch) -> None:
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(DEPLOY / folder))
    assert config["storage"]["postgres"]["postgres_db"]["hostname"] == {"env": "DAGSTER_PG_HOST"}
    [limit] = config["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert limit == {
        "key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1
    }
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_retries"]["enabled"] is False


@pytest.mark.parametrize(
    ("folder", "launcher"), [("k8s", K8sRunLauncher), ("docker", DockerRunLauncher)]
)
def test_the_run_launcher_config_fits_the_launcher(
    folder: str, launcher: type, monkeypatch
) -> None:
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    section = yaml.safe_load((DEPLOY / folder / "dagster.yaml").read_text())["run_launcher"]
    assert section["class"] == launcher.__name__
    result = process_config(launcher.config_type(), section["config"])
    assert result.success, result.errors
    # A typo is caught: the schema is really applied.
    broken = {**section["config"], "no_such_field": 1}
    assert not process_config(launcher.config_type(), broken).success
