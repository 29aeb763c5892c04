"""The production instance configs of deploy/ load and validate against Dagster's schemas.

The run launchers' configs are checked against the launchers' own config schemas (from
dagster-k8s and dagster-docker); the Docker one also runs for real in tests/docker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance_for_test import instance_for_test
from dagster._core.workspace.config_schema import ensure_workspace_config
from dagster_docker import DockerRunLauncher
from dagster_k8s import K8sRunLauncher

from devtools.stack.docker import env_file
from programuser_dagster.settings import SECRET_VARIABLES, VARIABLES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PG_ENV = {
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "unused",
    "DAGSTER_PG_HOST": "db",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_K8S_NAMESPACE": "programuser",
    "DAGSTER_DOCKER_NETWORK": "host",
}


PARTITION_LIMIT = {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True},
                   "limit": 1}


def run_queue(config: dict[str, Any]) -> tuple[Any, Any]:
    """The run queue an instance of this config runs: its limits as Dagster reads them (from
    `concurrency: runs:`, or the coordinator's own config) and its coordinator."""
    sections = {k: config[k] for k in ("run_queue", "run_coordinator", "concurrency")
                if k in config}
    with instance_for_test(overrides=sections) as instance:
        return instance.get_concurrency_config().run_queue_config, instance.run_coordinator


@pytest.mark.parametrize("folder", ["", "k8s", "docker"])
def test_each_instance_config_is_valid(folder: str, monkeypatch) -> None:
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(DEPLOY / folder))
    assert config["storage"]["postgres"]["postgres_db"]["hostname"] == {"env": "DAGSTER_PG_HOST"}
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_retries"]["enabled"] is False


@pytest.mark.parametrize("path", [DEPLOY.parent, DEPLOY, DEPLOY / "k8s", DEPLOY / "docker"],
                         ids=["dagster.yaml", "deploy", "k8s", "docker"])
def test_every_instance_config_limits_runs_in_dagsters_concurrency_section(
    path: Path, monkeypatch
) -> None:
    """The queue's limits are under `concurrency: runs:` (Dagster 1.13's place for them), the
    queue's own section only says how it dequeues; the instance runs them as written."""
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(path))
    assert "run_coordinator" not in config
    assert not {"max_concurrent_runs", "tag_concurrency_limits"} & set(config["run_queue"])
    limits, coordinator = run_queue(config)
    assert limits.tag_concurrency_limits == [PARTITION_LIMIT]
    assert limits.max_concurrent_runs == config["concurrency"]["runs"]["max_concurrent_runs"]
    assert limits.max_concurrent_runs >= 4  # one run per partition at once
    assert coordinator._dequeue_use_threads and coordinator._dequeue_interval_seconds == 1


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


def _env_refs(node: object) -> set[str]:
    """The variables a config takes with {env: NAME}."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_env_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_env_refs(v) for v in node))
    return set()


def test_the_docker_launcher_passes_every_setting_secret_and_storage_variable_to_runs() -> None:
    config = yaml.safe_load((DEPLOY / "docker" / "dagster.yaml").read_text())
    passed = {entry.split("=", 1)[0] for entry in config["run_launcher"]["config"]["env_vars"]}
    # A run container loads the instance (its storage's variables) and builds its settings
    # and resources from the environment: a variable not passed would mean its default there.
    needed = set(VARIABLES) | set(SECRET_VARIABLES) | _env_refs(config["storage"])
    assert {"KAFKA_INPUT_TOPIC", "CASSANDRA_KEYSPACE", "DAGSTER_PG_PORT"} <= needed
    assert needed - passed == set()
    # Nothing passed that the pipeline does not read, but the allocator setting.
    assert passed - needed == {"MALLOC_ARENA_MAX"}


def test_the_daemon_env_file_sets_every_variable_the_launcher_and_configs_take() -> None:
    # The launcher refuses a run while one of its env_vars is missing from the daemon's
    # environment, so the shipped env file sets each (blank for a default).
    config = yaml.safe_load((DEPLOY / "docker" / "dagster.yaml").read_text())
    workspace = yaml.safe_load((DEPLOY / "docker" / "workspace.yaml").read_text())
    taken = {e for e in config["run_launcher"]["config"]["env_vars"] if "=" not in e}
    taken |= _env_refs(config) | _env_refs(workspace)
    listed = env_file(DEPLOY / "docker" / "daemon.env")
    assert "DAGSTER_DOCKER_NETWORK" in taken
    assert taken - set(listed) == set()
    assert set(listed) - taken == set()
    # No secret has a value in the shipped file.
    assert all(not listed[name] for name in (*SECRET_VARIABLES, "DAGSTER_PG_PASSWORD"))


def test_the_docker_workspace_is_a_valid_workspace_naming_the_code_location(monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_CODE_HOST", "127.0.0.1")
    monkeypatch.setenv("DAGSTER_CODE_PORT", "4000")
    workspace = yaml.safe_load((DEPLOY / "docker" / "workspace.yaml").read_text())
    ensure_workspace_config(workspace, str(DEPLOY / "docker" / "workspace.yaml"))
    monkeypatch.setenv("DAGSTER_CODE_PORT", "not a port")
    with pytest.raises(DagsterInvalidConfigError):
        ensure_workspace_config(workspace, str(DEPLOY / "docker" / "workspace.yaml"))
    [entry] = workspace["load_from"]
    assert entry["grpc_server"]["location_name"] == "programuser_dagster"
    assert _env_refs(entry) == {"DAGSTER_CODE_HOST", "DAGSTER_CODE_PORT"}
