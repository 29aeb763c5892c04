"""A real Prometheus and Alertmanager on loopback (Debian's binaries), the project's alert rules
scaled down in time, and a webhook receiver recording what Alertmanager posts."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"
JOB = "programuser-dagster"  # the scrape job the rules name
_DURATION = re.compile(r"^(\d+)([smh])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
# The stall rule's "no commit for N seconds" bound.
_NO_COMMIT = re.compile(r"(\(time\(\) - programuser_last_commit_timestamp_seconds\) < )(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scaled_seconds(seconds: float, factor: float) -> int:
    return max(1, round(seconds * factor))


def scaled_rules(text: str, factor: float) -> str:
    """deploy/prometheus/rules.yml with every `for:` and the stall rule's no-commit bound
    multiplied by `factor` (at least 1 s), the rest unchanged: a test waits seconds, not the
    minutes an operator would, for the same rules."""
    rules = yaml.safe_load(text)
    stall_bounds = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                found = _DURATION.match(rule["for"])
                if found is None:
                    raise ValueError(f"{rule.get('alert')}: cannot scale for: {rule['for']!r}")
                seconds = int(found[1]) * _UNIT_S[found[2]]
                rule["for"] = f"{_scaled_seconds(seconds, factor)}s"
            if rule.get("alert") == "ProgramuserPartitionStalled":
                rule["expr"], n = _NO_COMMIT.subn(
                    lambda m: f"{m[1]}{_scaled_seconds(int(m[2]), factor)}", rule["expr"])
                stall_bounds += n
    if stall_bounds != 1:  # the rule was rewritten: this function must follow it
        raise ValueError("ProgramuserPartitionStalled has no `(time() - "
                         "programuser_last_commit_timestamp_seconds) < N` to scale")
    return yaml.safe_dump(rules, sort_keys=False)


@dataclass
class Receiver:
    """Alertmanager's webhook payloads, in the order received, with when each arrived."""

    port: int
    posts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def record(self, payload: dict[str, Any]) -> None:
        with self._changed:
            self.posts.append((time.monotonic(), payload))
            self._changed.notify_all()

    def first(self, alertname: str, status: str,
              **labels: str) -> tuple[float, dict[str, Any]] | None:
        for at, payload in list(self.posts):
            for alert in payload.get("alerts", []):
                got = alert["labels"]
                if (alert["status"] == status and got.get("alertname") == alertname
                        and all(got.get(k) == v for k, v in labels.items())):
                    return at, alert
        return None

    def wait_for(self, alertname: str, status: str, timeout_s: float,
                 **labels: str) -> tuple[float, dict[str, Any]]:
        """The first alert of this name, status ("firing", "resolved") and labels posted;
        (monotonic time of its post, the alert)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = self.first(alertname, status, **labels)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {status} {alertname} {labels} within {timeout_s:.0f} s; "
                        f"posted: {[p for _, p in self.posts]}")
                self._changed.wait(left)


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            receiver.record(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: `make deps` installs Debian's {package} package")
    return found


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path,
                timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited {process.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {timeout_s:.0f} s: {log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def _server(binary: str, config: Path, args: list[str], log: Path) -> Iterator[int]:
    """`binary` with its config file on a free loopback port, until ready; yields the port."""
    port = free_port()
    argv = [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(process, f"http://127.0.0.1:{port}/-/ready", log)
        yield port
    finally:
        _stop(process)


@contextmanager
def alertmanager(folder: Path, webhook_port: int, group_s: int = 1) -> Iterator[int]:
    """Debian's Alertmanager on a free loopback port, clustering off, every alert to the
    webhook (resolved too), grouped per alert and partition; yields its port."""
    binary = _binary("prometheus-alertmanager", "prometheus-alertmanager")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "alertmanager.yml"
    config.write_text(yaml.safe_dump({
        "route": {"receiver": "webhook", "group_by": ["alertname", "partition"],
                  "group_wait": f"{group_s}s", "group_interval": f"{group_s}s",
                  "repeat_interval": "1m"},
        "receivers": [{"name": "webhook", "webhook_configs": [
            {"url": f"http://127.0.0.1:{webhook_port}/", "send_resolved": True}]}],
    }))
    with _server(binary, config, [f"--storage.path={folder / 'data'}",
                                  "--cluster.listen-address="],
                 folder / "alertmanager.log") as port:
        yield port


@contextmanager
def prometheus(folder: Path, target_port: int, alertmanager_port: int, rules: str,
               interval_s: int = 1) -> Iterator[int]:
    """Debian's Prometheus on a free loopback port: scrapes 127.0.0.1:target_port as the job
    the rules name, evaluates `rules` every interval_s, alerts the Alertmanager; yields its
    port."""
    binary = _binary("prometheus", "prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rules.yml").write_text(rules)
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{interval_s}s", "scrape_timeout": f"{interval_s}s",
                   "evaluation_interval": f"{interval_s}s"},
        "rule_files": [str(folder / "rules.yml")],
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": JOB, "static_configs": [
            {"targets": [f"127.0.0.1:{target_port}"]}]}],
    }))
    with _server(binary, config, [f"--storage.tsdb.path={folder / 'data'}",
                                  "--rules.alert.resend-delay=1s"],
                 folder / "prometheus.log") as port:
        yield port


@contextmanager
def metrics_exporter(environment: dict[str, str], home: Path, log: Path) -> Iterator[int]:
    """`programuser-dagster metrics` on a free loopback port for these settings (their
    environment) and the Dagster instance of `home`; yields its port once it serves."""
    port = free_port()
    env = {**os.environ, **environment, "DAGSTER_HOME": str(home),
           "PROGRAMUSER_METRICS_HOST": "127.0.0.1", "PROGRAMUSER_METRICS_PORT": str(port)}
    with log.open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "programuser_dagster.cli", "metrics"],
                                   env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # once it has read the instance's history
        assert line.startswith("serving "), (line, log.read_text()[-3000:])
        yield port
    finally:
        _stop(process)
