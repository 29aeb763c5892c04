"""The deploy/docker/ deployment on this machine, with the shipped files themselves: the code
location as a container of the run image (`dagster api grpc`), and `dagster-daemon` with
deploy/docker/dagster.yaml and workspace.yaml, its environment from deploy/docker/daemon.env
plus the given values. Every container uses host networking. For `make test-docker` and the
container bench; an operator runs the same two processes under a supervisor (deploy/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from programuser_dagster.settings import SECRET_VARIABLES, Settings

from . import docker
from .postgres import deploy_yaml, free_port

DEPLOY = docker.REPO / "deploy" / "docker"
WORKSPACE = DEPLOY / "workspace.yaml"
CONTAINER_TAG = "docker/container_id"  # set by DockerRunLauncher on each run it launches
_BIN = Path(sys.executable).parent  # the venv's dagster and dagster-daemon


def docker_config() -> dict[str, Any]:
    """The run launcher's config in deploy/docker/dagster.yaml."""
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]


def pipeline_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The pipeline's variables for exactly these settings (every one of them, so a blank in
    daemon.env cannot put a run on another server), the secrets from this process's
    environment, and `extra`."""
    secrets = {k: os.environ[k] for k in SECRET_VARIABLES if os.environ.get(k)}
    return {**settings.environment(), **secrets, **extra}


class DockerDeployment:
    """A code-server container and a daemon on Dagster home `home` (its dagster.yaml is
    deploy/docker/dagster.yaml), as a context manager: when the block ends, or when starting
    fails half-way, the daemon is stopped and every container of the deployment removed."""

    def __init__(self, engine: docker.Engine, image: str, pipeline: Mapping[str, str],
                 postgres: Mapping[str, str], home: Path, run_env: Sequence[str] = (),
                 label: str = "programuser-dagster/deployment=local") -> None:
        """`pipeline`: the pipeline's variables (pipeline_env()); `postgres`: the DAGSTER_PG_*
        of the instance's database; `run_env`: KEY=VALUE entries for every run container of
        this code location only (its container context)."""
        self.engine, self.image, self.pipeline, self.postgres = engine, image, pipeline, postgres
        self.home, self.run_env, self.label = home, run_env, label
        self.log = home / "daemon.log"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    def __enter__(self) -> DockerDeployment:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        code_port = free_port()
        key, _, value = self.label.partition("=")
        # The code location's container context applies to each of its runs' containers: the
        # extra variables, and this deployment's label beside the shipped file's (a context's
        # labels replace the launcher's, so both are given).
        context = {"env_vars": list(self.run_env), "container_kwargs": {
            "labels": {**docker_config()["container_kwargs"]["labels"], key: value}}}
        code = docker.code_server(self.image, code_port, {
            **self.pipeline, **self.postgres,
            "DAGSTER_CURRENT_IMAGE": self.image,  # runs launched from this location use it
            "DAGSTER_CONTAINER_CONTEXT": json.dumps({"docker": context}),
        }, name=f"programuser-code-{code_port}", labels=[self.label])
        docker.wait_serving(code, code_port)
        (self.home / "dagster.yaml").write_text(deploy_yaml(docker.REPO, "docker"),
                                                encoding="utf-8")
        # The shipped env file's variables (blank: the default), then the given values.
        self.env = {
            **os.environ, **docker.env_file(DEPLOY / "daemon.env"), **self.pipeline,
            **self.postgres, **self.engine.env, "DAGSTER_HOME": str(self.home),
            "DAGSTER_DOCKER_NETWORK": "host",
            "DAGSTER_CODE_HOST": "127.0.0.1", "DAGSTER_CODE_PORT": str(code_port),
        }
        with self.log.open("wb") as out:
            self.daemon = subprocess.Popen(
                [str(_BIN / "dagster-daemon"), "run", "-w", str(WORKSPACE)],
                cwd=self.home, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def code_server_env(self) -> dict[str, str]:
        """What a process needs to load the workspace (the code server's address)."""
        return {k: self.env[k] for k in ("DAGSTER_CODE_HOST", "DAGSTER_CODE_PORT")}

    def dagster(self, *args: str) -> str:
        """The dagster CLI on this deployment's instance and workspace."""
        done = subprocess.run([str(_BIN / "dagster"), *args, "-w", str(WORKSPACE)],
                              env=self.env, cwd=self.home, capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"dagster {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def check_alive(self) -> None:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited ({self.daemon.returncode}):\n"
                               + self.log.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        """The daemon, then every container of this deployment: its code server's and its
        runs'."""
        if self.daemon is not None:
            self.daemon.terminate()
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(10)
        docker.remove_containers(self.label)
