"""The deployment files, checked with the tools that run them (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import REPO_ROOT

from vae_serve.server.telemetry.metrics import Metrics

DEPLOY = REPO_ROOT / "deploy"


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} not found: `make test` installs it (see the Makefile's tools target)")
    return found


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]])
def test_compose_files_are_valid(files):
    args = [a for f in files for a in ("-f", f)]
    done = run(tool("docker-compose"), *args, "--profile", "train", "config")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert {"vae-server-1", "vae-server-2", "nginx", "prometheus", "grafana", "trainer", "jaeger"} <= set(
        services
    )
    for name in ("vae-server-1", "vae-server-2"):
        server = services[name]
        assert server["environment"]["VAE_REFLECTION"] == "false"
        assert "vae-client" in server["healthcheck"]["test"]
        assert server["environment"]["OTEL_TRACES_EXPORTER"] == "otlp"  # tracing is off unless set
        assert server["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert services["nginx"]["depends_on"]["vae-server-1"]["condition"] == "service_healthy"
    if "docker-compose.gpu.yml" in files:
        device = services["vae-server-1"]["deploy"]["resources"]["reservations"]["devices"][0]
        assert (
            device["driver"] == "nvidia" and services["vae-server-1"]["environment"]["VAE_DEVICE"] == "cuda"
        )


def test_broken_compose_is_caught(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((REPO_ROOT / "docker-compose.yml").read_text().replace("services:", "servces:", 1))
    assert run(tool("docker-compose"), "-f", str(broken), "config", "-q").returncode != 0


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/train.Dockerfile"])
def test_dockerfiles_lint_clean(dockerfile):
    done = run(tool("hadolint"), "--no-color", dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr


def test_server_image_runs_as_non_root_with_health_and_stop_signal():
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001$", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and '"health"]' in text
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.MULTILINE)
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and not any("[train]" in line or "torch" in line for line in installs)  # runtime only


def test_prometheus_config_is_valid_and_scrapes_every_replica():
    done = run(tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["vae-server-1:8002", "vae-server-2:8002"]


def exported_names() -> set[str]:
    """Every sample name the server can export (histograms' _bucket/_sum/_count, counters' _total)."""
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"histogram": ["_bucket", "_sum", "_count"], "counter": ["_total"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def test_dashboard_uses_only_metrics_the_server_exports():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "vae-serve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"vae_serve_[a-z_]+", e)}
    assert used, "the dashboard queries no vae-serve metric"
    assert used <= exported_names(), used - exported_names()
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("request rate", "p99", "errors", "batch size", "queue time", "execution provider"):
        assert topic in titles


def test_kubernetes_manifests_validate_against_the_schema():
    manifests = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml"))
    done = run(tool("kubernetes-validate"), "--strict", *manifests)
    assert done.returncode == 0, done.stdout + done.stderr
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["grpc"]["port"] == 50051


def test_a_wrong_manifest_field_is_caught(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((DEPLOY / "k8s" / "service.yaml").read_text().replace("clusterIP:", "clusterIp:"))
    assert run(tool("kubernetes-validate"), "--strict", str(bad)).returncode != 0


def test_every_vae_variable_in_the_deployment_is_a_server_setting():
    from vae_serve.server.settings import Settings

    config = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    names = {
        key
        for s in config["services"].values()
        for key in (s.get("environment") or {})
        if key.startswith("VAE_")
    }
    names |= set(re.findall(r"\b(VAE_[A-Z_]+)=", (REPO_ROOT / "Dockerfile").read_text()))
    k8s = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    names |= {e["name"] for e in k8s["spec"]["template"]["spec"]["containers"][0]["env"]}
    unknown = {n for n in names if n.removeprefix("VAE_").lower() not in Settings.model_fields}
    assert names and not unknown, unknown


def test_model_volume_is_writable_by_the_image_user():
    server, trainer = (REPO_ROOT / "Dockerfile").read_text(), (DEPLOY / "train.Dockerfile").read_text()
    assert "chown -R 10001:10001 /models" in server and "USER 10001" in server
    assert "chown 10001:10001 /models" in trainer and "USER 10001" in trainer


def test_traces_go_to_jaeger_and_grafana_links_exemplars_to_them():
    config = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    jaeger, prometheus = config["services"]["jaeger"], config["services"]["prometheus"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:") and "16686:16686" in jaeger["ports"]
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert "--enable-feature=exemplar-storage" in prometheus["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    sources = {}
    for path in (DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.yml"):
        sources |= {s["uid"]: s for s in yaml.safe_load(path.read_text())["datasources"]}
    assert sources["jaeger"]["type"] == "jaeger" and sources["jaeger"]["url"] == "http://jaeger:16686"
    (link,) = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert link == {"name": "trace_id", "datasourceUid": "jaeger"}  # the label metrics.py writes
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "vae-serve.json").read_text())
    targets = [t for p in dashboard["panels"] for t in p["targets"]]
    assert any(t.get("exemplar") and "request_duration" in t["expr"] for t in targets)
