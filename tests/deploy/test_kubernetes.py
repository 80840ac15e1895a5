"""deploy/kubernetes, checked without a cluster: every manifest is valid against the
Kubernetes API's own JSON schemas (the PyPI package kubernetes-validate ships them), the
kustomizations name files that exist, the pieces point at each other (selectors, ports,
names), the orchestrator's settings are real ones, the probes hit paths that answer, and
the autoscaler's metric is built from names a live Triton exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import yaml

from orchestrator.api.app import create_app
from orchestrator.metrics import ServiceMetrics
from orchestrator.roles import API, WORKER
from orchestrator.settings import Settings
from orchestrator.triton_url import parse_triton_url
from tests.deploy.conftest import COMPOSE_FILE, REPO
from tests.deploy.test_monitoring import exported_names
from tests.outage import KillableTriton

KUBERNETES = REPO / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
KUSTOMIZATIONS = (BASE, KUBERNETES / "monitoring")
ADAPTER_VALUES = KUBERNETES / "prometheus-adapter" / "values.yaml"
SECRETS_EXAMPLE = KUBERNETES / "secrets.env.example"
# The oldest Kubernetes release still under upstream support when this was written; every
# kind used here (apps/v1, autoscaling/v2, policy/v1) is GA well before it.
KUBERNETES_VERSION = "1.31.0"
# Kinds served by CustomResourceDefinitions, which the API schemas do not hold: each gets a
# structural check below instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images"}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kustomization(directory: Path) -> dict[str, Any]:
    kustomization: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return kustomization


def _built(directory: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize directory` would emit, before its namespace and
    image rewrites (which the tests below check separately)."""
    documents = []
    for entry in _kustomization(directory)["resources"]:
        target = (directory / entry).resolve()
        documents += _built(target) if target.is_dir() else _documents(target)
    return documents


def _one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _built(BASE)


@pytest.fixture(scope="module")
def adapter_rule() -> dict[str, Any]:
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert len(rules) == 1
    rule: dict[str, Any] = rules[0]
    return rule


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_every_kustomization_resource_exists_and_every_manifest_is_listed(
    directory: Path,
) -> None:
    kustomization = _kustomization(directory)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= KUSTOMIZATION_KEYS, "a field this test does not check"
    for entry in kustomization["resources"]:
        assert (directory / entry).exists(), f"{directory.name}: {entry} missing"
    listed = {(directory / e).resolve() for e in kustomization["resources"]}
    on_disk = {p.resolve() for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk <= listed, f"manifests not in {directory.name}/kustomization.yaml"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(directory: Path) -> None:
    documents = _built(directory)
    assert documents
    for document in documents:
        kind = (document["apiVersion"], document["kind"])
        if kind in CUSTOM_KINDS:
            continue
        # strict: an unknown or misspelt field fails instead of being dropped by the API.
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validator_really_rejects_a_broken_manifest(base: list[dict[str, Any]]) -> None:
    deployment = _one(base, "Deployment", "triton")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_service_monitors_select_the_metrics_services_by_named_port() -> None:
    documents = _built(KUBERNETES / "monitoring")
    monitors = [d for d in documents if d["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"triton", "api", "worker"}
    services = [d for d in documents if d["kind"] == "Service"]
    for monitor in monitors:
        assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
        assert set(monitor["spec"]) == {"selector", "endpoints"}
        selector = monitor["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services if _selects(selector, s["metadata"]["labels"])]
        assert len(chosen) == 1, f"{monitor['metadata']['name']} selects {len(chosen)} Services"
        ports = {p["name"] for p in chosen[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval"}
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_services_and_budgets_select_the_pods_they_mean(base: list[dict[str, Any]]) -> None:
    deployments = {d["metadata"]["name"]: d for d in base if d["kind"] == "Deployment"}
    assert set(deployments) == {"triton", "api", "worker"}
    for deployment in deployments.values():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert _selects(selector, _pod_labels(deployment))
    for kind in ("Service", "PodDisruptionBudget"):
        for document in (d for d in base if d["kind"] == kind):
            selector = document["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            chosen = [n for n, d in deployments.items() if _selects(selector, _pod_labels(d))]
            assert len(chosen) == 1, f"{kind}/{document['metadata']['name']} selects {chosen}"
            if kind == "Service":
                names = {
                    p["name"]
                    for c in deployments[chosen[0]]["spec"]["template"]["spec"]["containers"]
                    for p in c["ports"]
                }
                for port in document["spec"]["ports"]:
                    assert port["targetPort"] in names, f"no container port {port['targetPort']}"
    budgets = {d["metadata"]["name"]: d["spec"] for d in base if d["kind"] == "PodDisruptionBudget"}
    assert budgets["api"]["minAvailable"] == 1
    assert budgets["worker"]["maxUnavailable"] == 1
    assert budgets["triton"]["maxUnavailable"] == 1


def test_triton_is_a_gpu_deployment_of_the_compose_image_with_its_models(
    base: list[dict[str, Any]],
) -> None:
    deployment = _one(base, "Deployment", "triton")
    pod = deployment["spec"]["template"]["spec"]
    triton = _container(deployment, "triton")
    assert int(triton["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert triton["image"] == compose["services"]["triton"]["image"], "one Triton version"
    assert "--model-repository=/models" in triton["args"]
    assert "--exit-on-error=true" in triton["args"]
    # The repository: built by the models image into an emptyDir the server mounts.
    (init,) = pod["initContainers"]
    assert init["image"] == "digital-human-models"
    volumes = {v["name"]: v for v in pod["volumes"]}
    built_into = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}["/models"]
    served_from = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}["/models"]
    assert built_into == served_from and "emptyDir" in volumes[built_into]
    # Connections age out so that orchestrators re-resolve DNS and find new pods.
    ages = [a for a in triton["args"] if a.startswith("--grpc-max-connection-age")]
    assert len(ages) == 2


def test_the_headless_service_is_what_the_orchestrators_dial(base: list[dict[str, Any]]) -> None:
    namespace = _kustomization(BASE)["namespace"]
    headless = _one(base, "Service", "triton-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [(p["name"], p["port"]) for p in headless["spec"]["ports"]] == [("grpc", 8001)]
    config = _one(base, "ConfigMap", "digital-human-config")["data"]
    target = parse_triton_url(config["DH_TRITON_URL"])
    assert target.target.startswith("dns:///") and target.several
    (address,) = target.addresses
    assert address == f"triton-headless.{namespace}.svc.cluster.local:8001"
    metrics = urlsplit(config["DH_TRITON_METRICS_URL"])
    service = _one(base, "Service", "triton-metrics")
    assert metrics.hostname == f"triton-metrics.{namespace}.svc.cluster.local"
    assert metrics.port in {p["port"] for p in service["spec"]["ports"]}
    assert metrics.path == "/metrics"


# Each role's Deployment, the `dh` command it runs and the port setting it listens on.
ROLES = {"api": ("api", "DH_PORT", "http"), "worker": ("worker", "DH_WORKER_PORT", "probes")}


@pytest.mark.parametrize("name", ROLES)
def test_each_role_runs_its_command_on_real_settings(base: list[dict[str, Any]], name: str) -> None:
    command, port_setting, port_name = ROLES[name]
    deployment = _one(base, "Deployment", name)
    assert deployment["spec"]["replicas"] == 2
    container = _container(deployment, name)
    assert container["args"] == [command]
    sources = {next(iter(s)): next(iter(s.values()))["name"] for s in container["envFrom"]}
    config = _one(base, "ConfigMap", sources["configMapRef"])["data"]
    assert sources["secretRef"] == "digital-human-secrets"
    secret_lines = [
        line.lstrip("# ").split("=", 1)[0]
        for line in SECRETS_EXAMPLE.read_text().splitlines()
        if line.lstrip("# ").startswith("DH_") and "=" in line
    ]
    known = {f"DH_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted((set(config) | set(secret_lines)) - known)
    assert not unknown, f"not settings of orchestrator/settings.py: {unknown}"
    # Credentials live in the Secret only.
    secret_names = {"DH_API_KEY", "DH_DATABASE_URL", "DH_S3_ACCESS_KEY_ID"}
    assert secret_names <= set(secret_lines)
    assert not secret_names & set(config)
    assert config["DH_HOST"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {port_name: int(config[port_setting])}
    # The API holds no GPU and the workers none either: Triton's pods have them.
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


@pytest.mark.parametrize("name", ROLES)
def test_each_roles_probes_hit_the_paths_its_server_answers(
    base: list[dict[str, Any]], tmp_path: Path, name: str
) -> None:
    command, _, port_name = ROLES[name]
    container = _container(_one(base, "Deployment", name), name)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == port_name
    app = create_app(Settings(data_dir=tmp_path), {"api": API, "worker": WORKER}[command])
    # Each server's own contract: every path it serves is in its OpenAPI document.
    paths = set(app.openapi()["paths"])
    assert {"/readyz", "/healthz", "/metrics"} <= paths
    if command == "worker":
        assert paths == {"/readyz", "/healthz", "/metrics"}, "a worker answers nothing else"
    else:
        assert "/v1/jobs" in paths


def test_the_workers_scale_on_the_fleets_backlog_and_the_api_on_cpu(
    base: list[dict[str, Any]],
) -> None:
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]
    (external,) = adapter["external"]
    worker = _one(base, "HorizontalPodAutoscaler", "worker")["spec"]
    assert worker["scaleTargetRef"]["name"] == "worker"
    (metric,) = worker["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == external["name"]["as"]
    # Built from a metric every replica really exports (the fleet-wide backlog).
    series = external["seriesQuery"].split("{")[0]
    assert external["name"]["matches"] == f"^{series}$"
    metrics = ServiceMetrics()
    try:
        assert series in exported_names(metrics.render().decode())
    finally:
        metrics.close()
    assert 1 <= worker["minReplicas"] < worker["maxReplicas"]
    api = _one(base, "HorizontalPodAutoscaler", "api")["spec"]
    assert api["scaleTargetRef"]["name"] == "api"
    (metric,) = api["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # Utilization is a share of the request: the API's pods must request CPU.
    container = _container(_one(base, "Deployment", "api"), "api")
    assert container["resources"]["requests"]["cpu"]
    assert api["minReplicas"] >= 2, "one API replica may be drained (disruption budget)"


def test_triton_probes_and_autoscaling_metric_are_real_on_a_live_triton(
    base: list[dict[str, Any]], adapter_rule: dict[str, Any], killable_triton: KillableTriton
) -> None:
    triton = _container(_one(base, "Deployment", "triton"), "triton")
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert killable_triton.endpoints is not None
    for probe in ("readinessProbe", "livenessProbe"):
        assert triton[probe]["httpGet"]["port"] == "http"
        path = triton[probe]["httpGet"]["path"]
        reply = httpx.get(killable_triton.endpoints.http_url + path, timeout=5.0)
        assert reply.status_code == 200, f"{path}: {reply.status_code}"
    exported = exported_names(httpx.get(killable_triton.metrics_url, timeout=5.0).text)
    query = adapter_rule["metricsQuery"]
    for name in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert name in exported, f"Triton exports no {name}"
        assert f"{name}{{<<.LabelMatchers>>}}" in query
    assert adapter_rule["seriesQuery"].startswith("nv_inference_queue_duration_us{")


def test_triton_scales_on_the_adapters_queue_time_metric(
    base: list[dict[str, Any]], adapter_rule: dict[str, Any]
) -> None:
    hpa = _one(base, "HorizontalPodAutoscaler", "triton")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "triton",
    }
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == adapter_rule["name"]["as"]
    assert adapter_rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_images_are_set_in_one_place() -> None:
    images = {i["name"] for i in _kustomization(BASE)["images"]}
    used = {
        c["image"]
        for d in _built(BASE)
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        + d["spec"]["template"]["spec"].get("initContainers", [])
    }
    # Ours are rewritten by kustomize `images`; Triton's is pinned where it is used.
    assert used - images == {
        yaml.safe_load(COMPOSE_FILE.read_text())["services"]["triton"]["image"]
    }
    assert images <= used


def _kustomize_cli() -> list[str] | None:
    """kustomize itself, or kubectl's built-in copy, if this machine has one."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_kustomize_builds_each_directory_into_valid_manifests(directory: Path) -> None:
    cli = _kustomize_cli()
    if cli is None:
        pytest.skip("no kustomize or kubectl here; the tests above read the files themselves")
    done = subprocess.run(
        [*cli, str(directory)], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    documents = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    assert len(documents) == len(_built(directory))
    namespace = _kustomization(BASE)["namespace"]
    for document in documents:
        assert document["metadata"]["namespace"] == namespace
        if (document["apiVersion"], document["kind"]) not in CUSTOM_KINDS:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in _kustomization(BASE)["images"]}
    pods = [d["spec"]["template"]["spec"] for d in documents if d["kind"] == "Deployment"]
    used = {c["image"] for pod in pods for c in pod["containers"] + pod.get("initContainers", [])}
    assert set(images.values()) <= used, "kustomize's images rewrite missed a container"
