"""The alerting rules: valid for promtool, unit-tested on synthetic series (alerts_test.yml), on
the server's real metric names, and loaded by the compose Prometheus."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support import REPO_ROOT

from vae_serve.server.telemetry.metrics import Metrics

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
TESTS = PROMETHEUS / "alerts_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    """promtool from Debian's `prometheus` package (`make system-deps` installs it)."""
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: apt-get install prometheus (make system-deps does)")
    return subprocess.run([found, *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_rules_are_valid():
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in done.stdout


def test_rules_pass_their_unit_tests():
    done = promtool("test", "rules", str(TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_quiet():
    cases = [case for test in yaml.safe_load(TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    names = {rule["alert"] for rule in alert_rules()}
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == names
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == names


def test_the_unit_tests_catch_a_wrong_threshold(tmp_path: Path):
    """The tests are not vacuous: an error-ratio threshold of 50% no longer fires on 9% errors."""
    shutil.copy(TESTS, tmp_path / TESTS.name)
    text = ALERTS.read_text()
    assert "            > 0.05\n" in text
    (tmp_path / ALERTS.name).write_text(text.replace("            > 0.05\n", "            > 0.5\n"))
    done = promtool("test", "rules", str(tmp_path / TESTS.name))
    assert done.returncode != 0 and "VaeServeHighErrorRatio" in done.stdout + done.stderr


def test_rules_use_the_server_metric_names():
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {"up"}  # Prometheus' own, per scrape target
    for family in Metrics().registry.collect():
        exported |= {family.name + suffix for suffix in suffixes.get(family.type, ())}
    used = set()
    for rule in alert_rules():
        used |= set(re.findall(r"\b(vae_serve_\w+|up)\b(?=[{\[ )]|$)", rule["expr"]))
    assert used and used <= exported, used - exported
    families = {"vae_serve_requests_total", "vae_serve_request_duration_seconds_bucket"}
    families |= {"vae_serve_rejected_total", "vae_serve_model_info", "up"}
    assert used == families


def test_the_compose_prometheus_loads_the_rules():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    done = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert done.returncode == 0 and "SUCCESS: 5 rules found" in done.stdout, done.stdout + done.stderr
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
