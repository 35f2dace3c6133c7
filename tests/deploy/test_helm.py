"""The Helm chart (deploy/helm/vae-serve), rendered and linted by Helm itself (helm-python-sdk:
Helm's Go SDK as a library) for several value sets; what it renders held to the Kubernetes
schemas and, for the custom resources, to their CRDs' schemas (deploy/crds/); the scaling query
through promtool; the server's settings file through the server's own parser."""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path

import helm_python as helm
import httpx
import kubernetes_validate
import pytest
import yaml
from support import REPO_ROOT, make_certificates, start_vae_serve_http

from vae_serve.server.settings import Settings, parse_args
from vae_serve.server.telemetry.metrics import Metrics

CHART = REPO_ROOT / "deploy" / "helm" / "vae-serve"
KUBERNETES = "1.30.0"  # the oldest minor still supported upstream, where the schemas differ
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/", "serving.kserve.io/")
MONITORING = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
VALUE_SETS = {
    "defaults": {},
    "keda-s3-monitoring": {
        "autoscaling": {"mode": "keda"},
        "model": {
            "source": "s3",
            "s3": {
                "uri": "s3://models/vae",
                "endpoint": "http://minio.storage:9000",
                "credentialsSecret": "s3",
            },
        },
        "metrics": {**MONITORING, "dashboard": {"enabled": True}},
        "extraEnv": [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel:4317"}],
    },
    "keda-in-flight-aws": {
        "autoscaling": {"mode": "keda", "keda": {"signal": "in-flight", "threshold": "32"}},
        "model": {"source": "s3", "s3": {"uri": "s3://models/vae", "region": "eu-west-1"}},
    },
    "gpu-tls-pvc-adapter": {
        "gpu": {"enabled": True},
        "tls": {"enabled": True, "secretName": "vae-tls"},
        "model": {"source": "pvc", "pvc": {"create": True, "storageClassName": "nfs"}},
        "autoscaling": {"mode": "prometheus-adapter"},
        "metrics": MONITORING,
        "config": {"max_batch_size": 128, "http_cors_origins": ["https://app.example"]},
    },
    "mtls-exec-probes": {
        "tls": {
            "enabled": True,
            "secretName": "vae-tls",
            "clientCA": {"secretName": "vae-clients", "key": "bundle.pem", "probeSecretName": "vae-probe"},
        },
        "probes": {"liveness": {"periodSeconds": 10, "timeoutSeconds": 5}},
    },
    "mtls-tcp-probes": {
        "tls": {"enabled": True, "secretName": "vae-tls", "clientCA": {"secretName": "vae-clients"}},
    },
    "fixed-minimal": {
        "replicas": 1,
        "autoscaling": {"mode": "none"},
        "podDisruptionBudget": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "topologySpread": {"enabled": False},
        "metrics": {"podAnnotations": False},
        "service": {"headless": False},
        "model": {"source": "pvc", "pvc": {"claimName": "shared-models"}},
    },
}


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(chart: helm.Chart, values: dict) -> list[dict]:
    """Every object the chart renders for `values` (release `demo` in namespace `ml`)."""
    manifests = chart.render(values, name="demo", namespace="ml")
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            objects += [o for o in yaml.safe_load_all(text) if o]
    return objects


def kinds(objects: list[dict]) -> dict[str, dict]:
    """The objects by kind (one of each; the dashboard's ConfigMap as "Dashboard")."""
    found: dict[str, dict] = {}
    for o in objects:
        kind = "Dashboard" if o["metadata"]["name"].endswith("-dashboard") else o["kind"]
        assert kind not in found, f"two {kind} objects"
        found[kind] = o
    return found


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request, chart) -> tuple[str, list[dict]]:
    return request.param, render(chart, VALUE_SETS[request.param])


def pod_spec(objects: list[dict]) -> dict:
    return kinds(objects)["Deployment"]["spec"]["template"]["spec"]


def container(objects: list[dict]) -> dict:
    (server,) = pod_spec(objects)["containers"]
    return server


def env(objects: list[dict]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(objects)["env"]}


def mutual_tls(name: str) -> dict:
    """The value set's tls.clientCA when mutual TLS is on, else {}."""
    tls = VALUE_SETS[name].get("tls", {})
    return tls.get("clientCA", {}) if tls.get("enabled") else {}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_is_clean(name):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace="ml", kube_version=f"v{KUBERNETES}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_core_objects_match_the_kubernetes_schemas(rendered):
    _, objects = rendered
    core = [o for o in objects if not o["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert {"Deployment", "Service", "ConfigMap"} <= {o["kind"] for o in core}
    for o in core:
        kubernetes_validate.validate(o, KUBERNETES, strict=True)  # raises on an unknown or wrong field


def test_custom_resources_match_their_crds(rendered, crd_errors):
    name, objects = rendered
    for o in objects:
        if o["apiVersion"].startswith(CUSTOM_GROUPS):
            assert not crd_errors(o), (name, o["kind"], crd_errors(o))


def test_a_wrong_field_is_caught_by_both_schemas(chart, crd_errors):
    objects = render(chart, VALUE_SETS["keda-s3-monitoring"])
    scaled = kinds(objects)["ScaledObject"]
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    assert any("maxReplicas" in e for e in crd_errors(scaled))
    deployment = kinds(objects)["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_pods_are_non_root_with_a_read_only_root(rendered):
    _, objects = rendered
    spec = pod_spec(objects)
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 10001
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec.get("initContainers", []):
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_probes_call_the_v2_health_routes(rendered):
    """The kubelet's own GET, HTTPS with TLS; under mutual TLS, where the kubelet has no client
    certificate, the same GET from inside the pod with the probe's certificate, or a TCP connect."""
    name, objects = rendered
    server = container(objects)
    scheme = "HTTPS" if VALUE_SETS[name].get("tls", {}).get("enabled") else "HTTP"
    mutual = mutual_tls(name)
    for probe, path in (("startup", "ready"), ("readiness", "ready"), ("liveness", "live")):
        check = server[f"{probe}Probe"]
        handlers = {"httpGet", "exec", "tcpSocket", "grpc"} & set(check)
        if not mutual:
            assert handlers == {"httpGet"}, probe
            assert check["httpGet"] == {"path": f"/v2/health/{path}", "port": "http", "scheme": scheme}, probe
        elif mutual.get("probeSecretName"):
            assert handlers == {"exec"}, probe
            command = check["exec"]["command"]
            assert command[:3] == ["python", "-I", "-c"] and command[4:] == ["8000", f"/v2/health/{path}"]
            assert "/etc/vae-serve/probe-tls/tls.crt" in command[3]
            assert check["timeoutSeconds"] >= 3, probe  # a process starts on each probe
        else:
            assert handlers == {"tcpSocket"} and check["tcpSocket"] == {"port": "http"}, probe
        settings = VALUE_SETS[name].get("probes", {}).get(probe, {})
        assert settings.items() <= check.items(), probe
    assert pod_spec(objects)["terminationGracePeriodSeconds"] > 10  # the drain grace


def test_the_settings_file_is_read_by_the_server(rendered, tmp_path, monkeypatch):
    """The ConfigMap's TOML through vae-serve's own parser, with the pod's variables: every key is
    a setting of the right type, and the variables win where both speak."""
    name, objects = rendered
    config = kinds(objects)["ConfigMap"]["data"]["vae-serve.toml"]
    path = tmp_path / "vae-serve.toml"
    path.write_text(config)
    variables = env(objects)
    if "VAE_TLS_CERT" in variables:  # the Secrets' files, as the pod would mount them
        made = make_certificates(tmp_path)
        shutil.copy(made["server.pem"], tmp_path / "tls.crt")
        shutil.copy(made["server.key"], tmp_path / "tls.key")
        shutil.copy(made["ca.pem"], tmp_path / "ca.crt")
    for key, value in variables.items():
        if key.startswith("VAE_") and key != "VAE_CONFIG":
            for folder in ("/etc/vae-serve/tls/", "/etc/vae-serve/client-ca/"):
                value = value.replace(folder, f"{tmp_path}/")
            monkeypatch.setenv(key, value)
    settings = parse_args(["--config", str(path)])
    assert (settings.tls_client_ca is not None) == bool(mutual_tls(name))
    want = {"max_batch_size": 64, "reflection": False, "drain_grace_s": 10.0, "log_format": "json"}
    want |= VALUE_SETS[name].get("config", {})
    for key, value in want.items():
        assert getattr(settings, key) == value, key
    assert "max_batch_size = " + str(want["max_batch_size"]) + "\n" in config  # an integer, not 64.0
    assert settings.port == 50051 and settings.http_port == 8000 and settings.metrics_port == 8002
    unknown = {k for k in env(objects) if k.startswith("VAE_") and k[4:].lower() not in Settings.model_fields}
    assert not unknown


def test_model_sources(chart):
    image = env(render(chart, {}))
    assert image["VAE_MODEL_REPOSITORY"] == "/models" and image["VAE_MODEL"] == "fashion-vae"

    objects = render(chart, VALUE_SETS["keda-s3-monitoring"])
    (init,) = pod_spec(objects)["initContainers"]
    assert init["args"] == ["s3://models/vae", "/mnt/models"]
    names = {e["name"] for e in init["env"]}
    assert names == {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert env(objects)["VAE_MODEL_REPOSITORY"] == "/mnt/models"
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    assert "emptyDir" in volumes["models"]
    egress = kinds(objects)["NetworkPolicy"]["spec"]["egress"]
    assert {"port": 9000, "protocol": "TCP"} in egress[1]["ports"]  # the endpoint's own port

    objects = render(chart, VALUE_SETS["gpu-tls-pvc-adapter"])
    claim = kinds(objects)["PersistentVolumeClaim"]
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {
        "claimName": claim["metadata"]["name"],
        "readOnly": True,
    }
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    fixed = render(chart, VALUE_SETS["fixed-minimal"])
    assert "PersistentVolumeClaim" not in kinds(fixed)
    assert {v["name"]: v for v in pod_spec(fixed)["volumes"]}["models"]["persistentVolumeClaim"][
        "claimName"
    ] == ("shared-models")


def test_the_chart_deploys_this_version():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == project


def test_gpu_and_tls(chart):
    version = chart.metadata["appVersion"]
    objects = render(chart, VALUE_SETS["gpu-tls-pvc-adapter"])
    server = container(objects)
    assert server["image"] == f"vae-serve:{version}-gpu"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env(objects)["VAE_DEVICE"] == "cuda"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(objects)[
        "tolerations"
    ]
    assert env(objects)["VAE_TLS_CERT"] == "/etc/vae-serve/tls/tls.crt"
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "vae-tls"
    cpu = render(chart, {})
    assert container(cpu)["image"] == f"vae-serve:{version}" and "VAE_DEVICE" not in env(cpu)
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]


def test_mutual_tls_mounts_the_client_ca_and_passes_it(chart):
    objects = render(chart, VALUE_SETS["mtls-exec-probes"])
    assert env(objects)["VAE_TLS_CLIENT_CA"] == "/etc/vae-serve/client-ca/ca.crt"
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    assert volumes["client-ca"]["secret"]["secretName"] == "vae-clients"
    assert volumes["client-ca"]["secret"]["items"] == [{"key": "bundle.pem", "path": "ca.crt"}]
    assert volumes["probe-tls"]["secret"]["secretName"] == "vae-probe"
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    for volume in ("client-ca", "probe-tls"):
        want = {"name": volume, "mountPath": f"/etc/vae-serve/{volume}", "readOnly": True}
        assert mounts[volume] == want
    tcp = render(chart, VALUE_SETS["mtls-tcp-probes"])
    assert "probe-tls" not in {v["name"] for v in pod_spec(tcp)["volumes"]}
    assert {v["name"]: v for v in pod_spec(tcp)["volumes"]}["client-ca"]["secret"]["items"] == [
        {"key": "ca.crt", "path": "ca.crt"}
    ]
    plain = render(chart, VALUE_SETS["gpu-tls-pvc-adapter"])  # TLS alone asks no client certificate
    assert "VAE_TLS_CLIENT_CA" not in env(plain)
    assert "client-ca" not in {v["name"] for v in pod_spec(plain)["volumes"]}


def test_the_exec_probes_pass_against_a_mutual_tls_server(chart, tmp_path):
    """The rendered exec probes, run as the kubelet would in the pod (the Secrets' files where the
    pod mounts them), against vae-serve with --tls-client-ca: they pass where the kubelet's own
    HTTPS GET, which has no client certificate, is refused; they fail once the server is gone."""
    certs = make_certificates(tmp_path)
    probe_tls = tmp_path / "probe-tls"
    probe_tls.mkdir()
    shutil.copy(certs["client.pem"], probe_tls / "tls.crt")
    shutil.copy(certs["client.key"], probe_tls / "tls.key")
    server = container(render(chart, VALUE_SETS["mtls-exec-probes"]))
    tls = ["--tls-cert", str(certs["server.pem"]), "--tls-key", str(certs["server.key"])]
    proc, _, port = start_vae_serve_http(*tls, "--tls-client-ca", str(certs["ca.pem"]))

    def run(probe: str) -> subprocess.CompletedProcess:
        command = server[f"{probe}Probe"]["exec"]["command"]
        script = command[3].replace("/etc/vae-serve/probe-tls/", f"{probe_tls}/")
        argv = [sys.executable, *command[1:3], script, str(port), *command[5:]]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    try:
        for probe in ("startup", "readiness", "liveness"):
            done = run(probe)
            assert done.returncode == 0, (probe, done.stderr)
        kubelet = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no client certificate, none verified
        kubelet.check_hostname, kubelet.verify_mode = False, ssl.CERT_NONE
        with pytest.raises(httpx.TransportError):
            httpx.get(f"https://127.0.0.1:{port}/v2/health/ready", verify=kubelet)
    finally:
        proc.terminate()
        proc.wait(30)
    assert run("liveness").returncode != 0


@pytest.mark.parametrize(
    ("name", "scaler"),
    [
        ("defaults", "HorizontalPodAutoscaler"),
        ("gpu-tls-pvc-adapter", "HorizontalPodAutoscaler"),
        ("keda-s3-monitoring", "ScaledObject"),
        ("fixed-minimal", None),
    ],
)
def test_one_autoscaler_owns_the_replica_count(chart, name, scaler):
    found = kinds(render(chart, VALUE_SETS[name]))
    scalers = {"HorizontalPodAutoscaler", "ScaledObject"} & set(found)
    assert scalers == ({scaler} if scaler else set())
    deployment = found["Deployment"]["spec"]
    assert ("replicas" in deployment) == (scaler is None)
    if name == "gpu-tls-pvc-adapter":
        metrics = found["HorizontalPodAutoscaler"]["spec"]["metrics"]
        assert metrics[0]["pods"]["metric"]["name"] == "vae_serve_queue_rows"
        assert metrics[1]["resource"]["name"] == "cpu"


def test_pdb_spread_and_network_policy(chart):
    found = kinds(render(chart, {}))
    selector = found["Deployment"]["spec"]["selector"]["matchLabels"]
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert found["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"] == selector
    spread = pod_spec(list(found.values()))["topologySpreadConstraints"]
    assert [s["topologyKey"] for s in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    ingress = found["NetworkPolicy"]["spec"]["ingress"]
    assert [p["port"] for rule in ingress for p in rule["ports"]] == ["grpc", "http", "metrics"]
    minimal = kinds(render(chart, VALUE_SETS["fixed-minimal"]))
    assert not {"PodDisruptionBudget", "NetworkPolicy"} & set(minimal)
    assert "clusterIP" not in minimal["Service"]["spec"]


def test_monitoring_objects_are_the_repositorys_own_files(chart):
    found = kinds(render(chart, VALUE_SETS["keda-s3-monitoring"]))
    alerts = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert found["PrometheusRule"]["spec"]["groups"] == alerts["groups"]
    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana" / "dashboards" / "vae-serve.json").read_text())
    assert json.loads(found["Dashboard"]["data"]["vae-serve.json"]) == dashboard
    assert found["Dashboard"]["metadata"]["labels"]["grafana_dashboard"] == "1"
    monitor = found["ServiceMonitor"]["spec"]
    assert monitor["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    service_labels = found["Service"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= service_labels.items()
    assert {p["name"] for p in found["Service"]["spec"]["ports"]} == {"grpc", "http", "metrics"}


def promtool_check(expressions: dict[str, str], folder: Path) -> subprocess.CompletedProcess:
    """`promtool check rules` on recording rules of the given expressions."""
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: apt-get install prometheus (make system-deps does)")
    rules = {
        "groups": [{"name": "scaling", "rules": [{"record": r, "expr": e} for r, e in expressions.items()]}]
    }
    path = folder / "scaling.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return subprocess.run([found, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def scaling_queries(chart: helm.Chart) -> dict[str, str]:
    """The ScaledObject's Prometheus query for each signal."""
    queries = {}
    for signal in ("queue-time", "in-flight"):
        values = {"autoscaling": {"mode": "keda", "keda": {"signal": signal}}}
        (trigger, cpu) = kinds(render(chart, values))["ScaledObject"]["spec"]["triggers"]
        assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
        assert cpu["type"] == "cpu"
        queries[signal] = trigger["metadata"]["query"]
    return queries


def test_the_scaling_queries_are_valid_promql_on_exported_metrics(chart, tmp_path):
    queries = scaling_queries(chart)
    done = promtool_check(
        {f"vae_serve:scaling_{s.replace('-', '_')}": q for s, q in queries.items()}, tmp_path
    )
    assert done.returncode == 0 and "SUCCESS: 2 rules found" in done.stdout, done.stdout + done.stderr
    used = {"queue-time": "vae_serve_queue_duration_seconds", "in-flight": "vae_serve_requests_in_flight"}
    families = {f.name: f.type for f in Metrics().registry.collect()}
    assert families[used["queue-time"]] == "histogram" and families[used["in-flight"]] == "gauge"
    for signal, family in used.items():
        sample = family + ("_sum" if signal == "queue-time" else "")
        assert set(re.findall(r"vae_serve_\w+", queries[signal])) == {sample}, signal
        assert 'namespace="ml"' in queries[signal] and 'pod=~"demo-vae-serve-' in queries[signal]


def test_promtool_catches_a_broken_query(chart, tmp_path):
    query = scaling_queries(chart)["queue-time"]
    done = promtool_check({"vae_serve:broken": query.replace("[1m]", "[1m")}, tmp_path)
    assert done.returncode != 0


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"config": {"port": 1}}, helm.HelmValuesError),  # set by the chart from ports.grpc
        ({"config": {"max_batch_size": {"rows": 1}}}, helm.HelmValuesError),
        ({"autoscaling": {"mode": "kdea"}}, helm.HelmValuesError),
        ({"autoscaling": {"keda": {"signal": "cpu"}}}, helm.HelmValuesError),
        ({"tls": {"enabled": True}}, helm.HelmValuesError),  # no Secret named
        ({"tls": {"clientCA": {"secretName": "ca"}}}, helm.HelmValuesError),  # mutual TLS without TLS
        (
            {"tls": {"enabled": True, "secretName": "t", "clientCA": {"probeSecretName": "p"}}},
            helm.HelmValuesError,
        ),  # a probe certificate without a client CA
        (
            {"tls": {"enabled": True, "secretName": "t", "clientCA": {"secretName": "ca", "key": "a/b"}}},
            helm.HelmValuesError,
        ),  # not a Secret key
        ({"model": {"source": "s3"}}, helm.HelmValuesError),  # no URI
        ({"model": {"source": "s3", "s3": {"uri": "https://bucket/x"}}}, helm.HelmValuesError),
        ({"ports": {"grpc": 70000}}, helm.HelmValuesError),
        ({"replica": 3}, helm.HelmValuesError),  # a misspelt value is refused, not ignored
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, helm.HelmRenderError),
    ],
)
def test_bad_values_are_refused(chart, values, error):
    with pytest.raises(error):
        chart.render(values, name="demo", namespace="ml")
