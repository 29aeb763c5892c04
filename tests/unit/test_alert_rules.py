"""deploy/prometheus/rules.yml: valid for Prometheus, each alert tested by `promtool test rules`
(fires, does not fire, resolves), and the PrometheusRule of deploy/k8s the same rules.

promtool is Debian's (package prometheus, which `make deps` installs); no server runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: `make deps` installs Debian's prometheus package")
    return subprocess.run([found, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=DEPLOY / "prometheus" / "tests")


def alerts() -> list[str]:
    return [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_the_rules_are_valid() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(alerts()) == 7


def test_promtool_unit_tests_pass() -> None:
    assert TESTS
    tested = promtool("test", "rules", *TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize("alert", alerts())
def test_each_alert_is_tested_firing_and_not(alert: str) -> None:
    """Each alert has cases where it fires and where it does not (before firing, or resolved
    after): a rule no test makes fire could be wrong unnoticed."""
    cases = [case for path in TESTS for test in yaml.safe_load(path.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if case["alertname"] == alert]
    fired = [c["eval_time"] for c in cases if c.get("exp_alerts")]
    quiet = [c["eval_time"] for c in cases if not c.get("exp_alerts")]
    assert fired and len(quiet) >= 2, (alert, fired, quiet)


def test_the_prometheus_rule_holds_the_same_rules() -> None:
    resource = yaml.safe_load((DEPLOY / "k8s" / "prometheus-rule.yaml").read_text())
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"] == yaml.safe_load(RULES.read_text())


def test_the_scaled_rules_are_the_same_rules_in_less_time() -> None:
    """The alerting end-to-end test runs these rules with times scaled down: every `for:` and
    the stall rule's no-commit bound scaled, nothing else changed, still valid."""
    from tests.support.alerting import scaled_rules

    scaled = yaml.safe_load(scaled_rules(RULES.read_text(), 1 / 30))
    original = yaml.safe_load(RULES.read_text())
    rules = {r["alert"]: r for g in scaled["groups"] for r in g["rules"]}
    assert rules["ProgramuserPartitionStalled"]["for"] == "20s"  # 10m
    assert rules["ProgramuserRunsFailing"]["for"] == "2s"  # 1m
    assert "programuser_last_commit_timestamp_seconds) < 10" in \
        rules["ProgramuserPartitionStalled"]["expr"]
    for group in original["groups"]:
        for rule in group["rules"]:
            got = rules[rule["alert"]]
            assert {k: v for k, v in got.items() if k not in ("for", "expr")} == \
                {k: v for k, v in rule.items() if k not in ("for", "expr")}
            if rule["alert"] != "ProgramuserPartitionStalled":
                assert got["expr"] == rule["expr"]
