"""deploy/k8s/values.yaml, the values of Dagster's Helm chart, renders a valid Dagster instance.

Helm and Kubernetes cannot run here, so the parts of the chart (dagster-io/dagster, helm/dagster)
that write the instance's dagster.yaml are translated below, a section at a time: the ConfigMap
templates/configmap-instance.yaml and its helpers templates/helpers/instance/_run-coordinator.tpl,
_run-launcher.tpl, _postgresql.tpl and templates/helpers/_helpers.tpl. What they give is checked
with Dagster's own schemas (the instance's, then each configured class's), and against
deploy/k8s/dagster.yaml, so that the two cannot drift.

A translation prints a value the way `{{ value }}` does into the YAML text, then reads the text
back as the instance's loader does: `8` stays 8, `"eight"` becomes a string that fails the
schema. `toYaml` keeps a value's structure, so those are copied as they are.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config, dagster_instance_config_schema
from dagster._core.instance_for_test import instance_for_test
from dagster._serdes.config_class import ConfigurableClassData
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VALUES = DEPLOY / "k8s" / "values.yaml"
# As in the install command of values.yaml: `helm upgrade --install programuser ... -n programuser`.
RELEASE = "programuser"
NAMESPACE = "programuser"
CHART = "dagster"
SUBCHART = "dagster-user-deployments"
CLASS_SECTIONS = ("run_coordinator", "run_launcher", "run_storage", "event_log_storage",
                  "schedule_storage")


def _values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def _deployed() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "k8s" / "dagster.yaml").read_text())


# -- the translation ---------------------------------------------------------------------------


def _printed(value: Any) -> Any:
    """`{{ value }}` written into the YAML text and read back (Helm prints nil as nothing)."""
    if value is None:
        return None
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return yaml.safe_load(text)


def _quoted(value: Any) -> str | None:
    """`{{ value | quote }}`: always a string (sprig's quote drops nil)."""
    return None if value is None else str(value)


def _fullname(values: dict[str, Any], chart: str = CHART) -> str:
    """_helpers.tpl "dagster.fullname"."""
    glob = values.get("global") or {}
    if glob.get("fullnameOverride"):
        return glob["fullnameOverride"][:63].removesuffix("-")
    name = glob.get("nameOverride") or chart
    full = RELEASE if name in RELEASE else f"{RELEASE}-{name}"
    return full[:63].removesuffix("-")


def _service_account_name(values: dict[str, Any]) -> str:
    """_helpers.tpl "dagster.serviceAccountName" (both names are empty unless set)."""
    return ((values.get("global") or {}).get("serviceAccountName")
            or (values.get("serviceAccount") or {}).get("name") or _fullname(values))


def _names(refs: list[dict[str, Any]] | None) -> list[str]:
    """`range`, keeping each entry's `name` (a ConfigMapEnvSource or SecretEnvSource)."""
    return [ref["name"] for ref in refs or [] if "name" in ref]


def run_coordinator(values: dict[str, Any]) -> dict[str, Any] | None:
    """configmap-instance.yaml's run_coordinator, _run-coordinator.tpl "...queued"."""
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    if not (daemon["enabled"] and coordinator["enabled"]):
        return None
    assert coordinator["type"] == "QueuedRunCoordinator", "only the queued type is translated"
    queued = coordinator["config"]["queuedRunCoordinator"] or {}
    section: dict[str, Any] = {"module": "dagster.core.run_coordinator",
                               "class": "QueuedRunCoordinator"}
    if not any(queued.values()):  # `if not (empty (compact (values ...)))`
        return section
    config: dict[str, Any] = {"max_concurrent_runs": -1 if queued.get("maxConcurrentRuns") is None
                              else _printed(queued["maxConcurrentRuns"])}
    if queued.get("tagConcurrencyLimits"):
        config["tag_concurrency_limits"] = copy.deepcopy(queued["tagConcurrencyLimits"])
    for key, name in (("dequeueIntervalSeconds", "dequeue_interval_seconds"),
                      ("dequeueUseThreads", "dequeue_use_threads"),
                      ("dequeueNumWorkers", "dequeue_num_workers")):
        if queued.get(key):
            config[name] = _printed(queued[key])
    if block := queued.get("blockOpConcurrencyLimitedRuns"):
        config["block_op_concurrency_limited_runs"] = {
            "enabled": _printed(block.get("enabled")),
            "op_concurrency_slot_buffer": _printed(block.get("opConcurrencySlotBuffer")),
        }
    section["config"] = config
    return section


def run_monitoring(values: dict[str, Any]) -> dict[str, Any] | None:
    """configmap-instance.yaml's run_monitoring. maxRuntimeSeconds is rendered as the chart has
    done since dagster-io/dagster#27005 (January 2025); the other keys as in the template."""
    daemon = values["dagsterDaemon"]
    monitoring = daemon["runMonitoring"]
    if not (daemon["enabled"] and monitoring.get("enabled")):
        return None
    section = {"enabled": _printed(monitoring["enabled"]),
               "start_timeout_seconds": _printed(monitoring.get("startTimeoutSeconds"))}
    for key, name in (("cancelTimeoutSeconds", "cancel_timeout_seconds"),
                      ("maxResumeRunAttempts", "max_resume_run_attempts"),
                      ("maxRuntimeSeconds", "max_runtime_seconds")):
        if monitoring.get(key) is not None:  # `if not (kindIs "invalid" ...)`
            section[name] = _printed(monitoring[key])
    # These two are written whether set or not.
    section["poll_interval_seconds"] = _printed(monitoring.get("pollIntervalSeconds"))
    section["free_slots_after_run_end_seconds"] = _printed(
        monitoring.get("freeSlotsAfterRunEndSeconds"))
    return section


def run_retries(values: dict[str, Any]) -> dict[str, Any] | None:
    """configmap-instance.yaml's run_retries: left out unless enabled."""
    daemon = values["dagsterDaemon"]
    retries = daemon["runRetries"]
    if not (daemon["enabled"] and retries.get("enabled")):
        return None
    section = {"enabled": _printed(retries["enabled"])}
    if retries.get("maxRetries"):
        section["max_retries"] = _printed(retries["maxRetries"])
    return section


def run_launcher(values: dict[str, Any]) -> dict[str, Any]:
    """configmap-instance.yaml's run_launcher, _run-launcher.tpl "dagsterYaml.runLauncher.k8s"."""
    assert values["runLauncher"]["type"] == "K8sRunLauncher", "only K8sRunLauncher is translated"
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    config: dict[str, Any] = {"load_incluster_config": _printed(k8s.get("loadInclusterConfig"))}
    if k8s.get("kubeconfigFile"):
        config["kubeconfig_file"] = _printed(k8s["kubeconfigFile"])
    config["job_namespace"] = _printed(k8s.get("jobNamespace") or NAMESPACE)
    config["image_pull_policy"] = _printed(k8s.get("imagePullPolicy"))
    if values.get("imagePullSecrets"):
        config["image_pull_secrets"] = copy.deepcopy(values["imagePullSecrets"])
    config["service_account_name"] = _printed(_service_account_name(values))
    if "image" in k8s:
        config["job_image"] = f"{k8s['image']['repository']}:{k8s['image']['tag']}"
    config["dagster_home"] = _quoted(values["global"].get("dagsterHome"))
    config["instance_config_map"] = f"{_fullname(values)}-instance"
    config["postgres_password_secret"] = _quoted(
        values["global"].get("postgresqlSecretName") or f"{_fullname(values)}-postgresql-secret")
    if k8s.get("envConfigMaps"):
        config["env_config_maps"] = _names(k8s["envConfigMaps"])
    if k8s.get("envSecrets"):
        config["env_secrets"] = _names(k8s["envSecrets"])
    for key, name in (("envVars", "env_vars"), ("volumeMounts", "volume_mounts"),
                      ("volumes", "volumes"), ("labels", "labels"), ("resources", "resources"),
                      ("securityContext", "security_context")):
        if k8s.get(key):
            config[name] = copy.deepcopy(k8s[key])
    if k8s.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    if k8s.get("schedulerName"):
        config["scheduler_name"] = _quoted(k8s["schedulerName"])
    if raw := k8s.get("runK8sConfig"):
        config["run_k8s_config"] = {
            name: copy.deepcopy(raw[key]) for key, name in (
                ("containerConfig", "container_config"), ("podSpecConfig", "pod_spec_config"),
                ("podTemplateSpecMetadata", "pod_template_spec_metadata"),
                ("jobSpecConfig", "job_spec_config"), ("jobMetadata", "job_metadata"))
            if raw.get(key)}
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def postgres_storage(values: dict[str, Any], kind: str) -> dict[str, Any]:
    """configmap-instance.yaml's run/event_log/schedule storage, _postgresql.tpl's config."""
    pg = values["postgresql"]
    db = {"username": _printed(pg.get("postgresqlUsername")),
          "password": {"env": "DAGSTER_PG_PASSWORD"},
          # "dagster.postgresql.host": the chart's own server, or the quoted external host.
          "hostname": (pg.get("postgresqlHost") or f"{RELEASE}-postgresql") if pg["enabled"]
          else _quoted(pg.get("postgresqlHost")),
          "db_name": _printed(pg.get("postgresqlDatabase")),
          "port": _printed(pg["service"]["port"]),
          "params": copy.deepcopy(pg.get("postgresqlParams"))}
    if pg.get("postgresqlScheme"):
        db["scheme"] = _printed(pg["postgresqlScheme"])
    module, cls = {"run_storage": ("run_storage", "PostgresRunStorage"),
                   "event_log_storage": ("event_log", "PostgresEventLogStorage"),
                   "schedule_storage": ("schedule_storage", "PostgresScheduleStorage")}[kind]
    return {"module": f"dagster_postgres.{module}", "class": cls, "config": {"postgres_db": db}}


def retention(values: dict[str, Any]) -> dict[str, Any] | None:
    """configmap-instance.yaml's retention: each kind's purgeAfterDays as it is (toYaml)."""
    kept = values.get("retention") or {}
    if not kept.get("enabled"):
        return None
    return {kind: {"purge_after_days": copy.deepcopy(kept[kind]["purgeAfterDays"])}
            for kind in ("sensor", "schedule") if kept.get(kind)}


def instance(values: dict[str, Any]) -> dict[str, Any]:
    """The sections of the rendered dagster.yaml that this translation covers."""
    sections = {
        "run_launcher": run_launcher(values),
        **{kind: postgres_storage(values, kind)
           for kind in ("run_storage", "event_log_storage", "schedule_storage")},
        "run_coordinator": run_coordinator(values),
        "run_monitoring": run_monitoring(values),
        "run_retries": run_retries(values),
        "telemetry": {"enabled": _printed(values["telemetry"]["enabled"])},
        "retention": retention(values),
    }
    return {key: section for key, section in sections.items() if section is not None}


def code_location_container_context(values: dict[str, Any], name: str) -> dict[str, Any] | None:
    """What a code location passes to its runs when includeConfigInLaunchedRuns is enabled (its
    default): the user-deployments subchart's "dagsterUserDeployments.k8sContainerContext"."""
    [deployment] = [d for d in values[SUBCHART]["deployments"] if d["name"] == name]
    if not (deployment.get("includeConfigInLaunchedRuns") or {"enabled": True})["enabled"]:
        return None
    full = _fullname(values, SUBCHART)
    k8s: dict[str, Any] = {
        "image_pull_policy": _printed(deployment["image"]["pullPolicy"]),
        "env_config_maps": [f"{full}-{name}-user-env", *_names(deployment.get("envConfigMaps"))],
    }
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = _names(deployment["envSecrets"])
    for key, field in (("volumeMounts", "volume_mounts"), ("volumes", "volumes"),
                       ("labels", "labels"), ("resources", "resources")):
        if deployment.get(key):
            k8s[field] = copy.deepcopy(deployment[key])
    k8s["namespace"] = NAMESPACE
    k8s["service_account_name"] = ((values.get("global") or {}).get("serviceAccountName")
                                   or f"{full}-user-deployments")
    k8s["run_k8s_config"] = {"pod_spec_config": {"automount_service_account_token": True}}
    return {"k8s": k8s}


# -- Dagster's checks --------------------------------------------------------------------------


def _errors(rendered: dict[str, Any]) -> list[str]:
    """Dagster's own verdict on a rendered dagster.yaml: the instance's schema, then each
    configured class's config against that class's config type (as the instance loads it)."""
    result = process_config(dagster_instance_config_schema(), rendered)
    if not result.success:
        return [error.message for error in result.errors]
    messages = []
    for key in CLASS_SECTIONS:
        section = rendered[key]
        data = ConfigurableClassData(section["module"], section["class"],
                                     yaml.safe_dump(section.get("config") or {}))
        klass = getattr(importlib.import_module(data.module_name), data.class_name)
        checked = process_config(klass.config_type(), data.config_dict)
        messages += [f"{key}: {error.message}" for error in checked.errors or []]
    return messages


@pytest.fixture(autouse=True)
def _pg_password(monkeypatch) -> None:
    # The storage configs read the password from the environment (StringSource).
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused")


# -- the tests ---------------------------------------------------------------------------------


def test_the_rendered_instance_is_valid_dagster_config(tmp_path: Path) -> None:
    rendered = instance(_values())
    assert set(rendered) >= {"run_coordinator", "run_monitoring", "telemetry", "run_launcher"}
    assert _errors(rendered) == []
    # And the loader the webserver and daemon use accepts the file as written.
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(rendered))
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_launcher"]["class"] == K8sRunLauncher.__name__
    assert process_config(K8sRunLauncher.config_type(), config["run_launcher"]["config"]).success


def _class_config(section: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A configured class as Dagster loads it: its module (dagster.core -> dagster._core), class
    and config with the class's defaults filled in."""
    data = ConfigurableClassData(section["module"], section["class"],
                                 yaml.safe_dump(section.get("config") or {}))
    klass = getattr(importlib.import_module(data.module_name), data.class_name)
    result = process_config(klass.config_type(), data.config_dict)
    assert result.success, result.errors
    return data.module_name, data.class_name, dict(result.value)


def test_the_run_queue_is_deploy_k8s_dagster_yaml_s() -> None:
    """The chart writes the queue's limits into run_coordinator's config (it has no value for
    Dagster's `concurrency:` section); deploy/k8s/dagster.yaml writes them under `concurrency:
    runs:`. The queue Dagster runs from each is the same."""
    from tests.unit.test_deploy_config import run_queue

    rendered, deployed = run_queue(instance(_values())), run_queue(_deployed())
    assert rendered[0] == deployed[0]
    assert _class_config(instance(_values())["run_coordinator"])[:2] == (
        "dagster._core.run_coordinator", type(deployed[1]).__name__)
    for name in ("_dequeue_use_threads", "_dequeue_interval_seconds", "_dequeue_num_workers"):
        assert getattr(rendered[1], name) == getattr(deployed[1], name), name


# How Dagster reads the settings (its defaults for what a file leaves out).
SETTINGS = ("run_monitoring_enabled", "run_monitoring_start_timeout_seconds",
            "run_monitoring_cancel_timeout_seconds", "run_monitoring_max_runtime_seconds",
            "run_monitoring_max_resume_run_attempts", "run_monitoring_poll_interval_seconds",
            "run_retries_enabled", "run_retries_max_retries", "telemetry_enabled")


def _effective(sections: dict[str, Any]) -> dict[str, Any]:
    keys = ("run_monitoring", "run_retries", "telemetry")
    with instance_for_test(overrides={k: sections[k] for k in keys if k in sections}) as dagster:
        read = {name: getattr(dagster, name) for name in SETTINGS}
        # The concurrency-slot freeing daemon runs only when this is set (truthy).
        read["frees_slots"] = bool(
            dagster.run_monitoring_settings.get("free_slots_after_run_end_seconds"))
        return read


def test_run_monitoring_retries_and_telemetry_are_deploy_k8s_dagster_yaml_s() -> None:
    rendered, deployed = _effective(instance(_values())), _effective(_deployed())
    assert rendered == deployed
    assert rendered["run_monitoring_max_runtime_seconds"] == 1800
    assert rendered["run_retries_enabled"] is False and rendered["telemetry_enabled"] is False


def test_the_launcher_is_deploy_k8s_dagster_yaml_s() -> None:
    rendered = run_launcher(_values())["config"]
    deployed = _deployed()["run_launcher"]["config"]
    # The chart launches runs in the release's namespace; dagster.yaml reads it from the
    # environment. Every other field of dagster.yaml's is rendered the same.
    shared = set(deployed) - {"job_namespace"}
    assert {k: rendered[k] for k in shared} == {k: deployed[k] for k in shared}
    assert rendered["job_namespace"] == NAMESPACE
    assert rendered["env_config_maps"] == ["programuser-dagster-env"]
    assert rendered["env_secrets"] == ["programuser-dagster-secrets"]


def test_the_code_location_and_its_runs_get_the_same_config_map_and_secret() -> None:
    values = _values()
    deployed = _deployed()["run_launcher"]["config"]
    [deployment] = values[SUBCHART]["deployments"]
    assert deployment["name"] == "programuser-dagster"
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "programuser_dagster.definitions"]
    assert deployment["port"] == 4000
    assert _names(deployment["envConfigMaps"]) == deployed["env_config_maps"]
    assert _names(deployment["envSecrets"]) == deployed["env_secrets"]
    # A run pod's container: the launcher's config with the code location's context on top, as
    # dagster-k8s's K8sContainerContext.create_for_run merges them (the context is checked
    # against dagster-k8s's schema on the way).
    launcher = run_launcher(values)["config"]
    pod = K8sContainerContext(
        image_pull_policy=launcher["image_pull_policy"],
        service_account_name=launcher["service_account_name"],
        env_config_maps=launcher["env_config_maps"], env_secrets=launcher["env_secrets"],
        env_vars=launcher["env_vars"], namespace=launcher["job_namespace"],
        resources=launcher["resources"],
    ).merge(K8sContainerContext.create_from_config(
        code_location_container_context(values, deployment["name"])))
    container = pod.run_k8s_config.container_config
    config_maps = [e["config_map_ref"]["name"] for e in container["env_from"]
                   if "config_map_ref" in e]
    secrets = [e["secret_ref"]["name"] for e in container["env_from"] if "secret_ref" in e]
    assert config_maps == [*deployed["env_config_maps"],
                           "programuser-dagster-user-deployments-programuser-dagster-user-env"]
    assert secrets == deployed["env_secrets"]
    assert container["env"] == [{"name": "MALLOC_ARENA_MAX", "value": "2"}]
    assert container["resources"] == deployed["resources"]
    assert container["image_pull_policy"] == "IfNotPresent"
    # The location's service account wins over the launcher's (includeConfigInLaunchedRuns).
    assert pod.run_k8s_config.pod_spec_config["service_account_name"] == (
        "programuser-dagster-user-deployments-user-deployments")


def _set(values: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    *parents, last = path.split(".")
    node = changed
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return changed


@pytest.mark.parametrize(("path", "wrong", "reported_at"), [
    ("dagsterDaemon.runMonitoring.startTimeoutSeconds", "three minutes", "start_timeout_seconds"),
    ("dagsterDaemon.runMonitoring.freeSlotsAfterRunEndSeconds", None,
     "free_slots_after_run_end_seconds"),
    ("telemetry.enabled", "off please", "telemetry"),
    ("dagsterDaemon.runCoordinator.config.queuedRunCoordinator.maxConcurrentRuns", "eight",
     "max_concurrent_runs"),
    ("dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits.0.limit",
     "one", "limit"),
    ("runLauncher.config.k8sRunLauncher.envVars", "MALLOC_ARENA_MAX=2", "env_vars"),
    ("runLauncher.config.k8sRunLauncher.loadInclusterConfig", "in cluster",
     "load_incluster_config"),
    ("postgresql.service.port", "five thousand", "port"),
])
def test_a_value_of_the_wrong_type_is_refused(path: str, wrong: Any, reported_at: str) -> None:
    errors = _errors(instance(_set(_values(), path, wrong)))
    assert errors, f"{path}={wrong!r} was accepted"
    assert any(reported_at in message for message in errors), errors
