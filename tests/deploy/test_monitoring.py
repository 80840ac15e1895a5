"""Prometheus scrapes both services, and every query of the Grafana dashboard names a metric
that Triton or the orchestrator really exports: checked against the live /metrics of the
session's Triton and of the orchestrator app started on it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from orchestrator.api.app import create_app
from orchestrator.settings import Settings
from tests.conftest import TritonAddress
from tests.deploy.conftest import REPO

PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "digital-human.json"

# Triton's GPU metrics, as its metrics documentation lists them (docs/user_guide/metrics.md,
# "GPU Metrics"). The local test server runs on the CPU and exports none of them, so a panel
# may use these names without the live check; every other name must be live.
TRITON_GPU_METRICS = frozenset(
    {
        "nv_gpu_utilization",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_power_usage",
        "nv_gpu_power_limit",
        "nv_energy_consumption",
    }
)
# What the issue asks the dashboard to show, by the metric each panel needs.
REQUIRED_METRICS = frozenset(
    {
        "nv_gpu_utilization",  # GPU utilisation per GPU
        "nv_gpu_memory_used_bytes",  # GPU memory per GPU
        "nv_inference_queue_duration_us",  # queue time ...
        "nv_inference_compute_infer_duration_us",  # ... against compute time
        "nv_inference_count",  # average batch size ...
        "nv_inference_exec_count",  # ... per model
        "nv_inference_request_success",  # requests per second
        "dh_job_duration_seconds_bucket",  # job latency
        "dh_frames_processed_total",  # frames per second
        "dh_backlog_jobs",  # backlog
    }
)
# Sample names a metric family of each type exposes (Prometheus text format); a labelled
# family with no sample yet shows only its # TYPE line.
TYPE_SUFFIXES = {
    "counter": ("", "_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "untyped": ("",),
}
PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)


def exported_names(exposition: str) -> set[str]:
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names.update(family + suffix for suffix in TYPE_SUFFIXES[kind.strip()])
        elif line and not line.startswith("#"):
            match = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            assert match, f"not a sample line: {line}"
            names.add(match.group())
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges, e.g. [$__rate_interval]
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\boffset\s+-?\w+", "", expr)  # offset 5m
    names = set()
    # Not after a digit or a dot: the "e3" of 1e3 is no name.
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels inside collapsed rows
    return found


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _scrape_targets() -> dict[str, tuple[str, list[str]]]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    return {
        job["job_name"]: (
            job.get("metrics_path", "/metrics"),
            [t for static in job.get("static_configs", []) for t in static["targets"]]
            + [
                f"{name}:{dns['port']}"
                for dns in job.get("dns_sd_configs", [])
                for name in dns["names"]
            ],
        )
        for job in config["scrape_configs"]
    }


def test_prometheus_scrapes_triton_and_the_orchestrator(services: dict[str, Any]) -> None:
    targets = _scrape_targets()
    assert targets["triton"] == ("/metrics", ["triton:8002"])
    assert targets["orchestrator"] == ("/metrics", ["orchestrator:8080"])
    # The targets are compose services listening on those container ports.
    assert "8002:8002" in " ".join(services["triton"]["ports"])
    assert services["orchestrator"]["environment"]["DH_PORT"] == 8080
    # The fleet's workers, every copy of the scaled service, on their own port.
    fleet = yaml.safe_load((REPO / "docker-compose.fleet.yml").read_text())["services"]
    port = fleet["worker"]["environment"]["DH_WORKER_PORT"]
    assert targets["worker"] == ("/metrics", [f"worker:{port}"])


def test_grafana_provisions_the_datasource_every_panel_uses(dashboard: dict[str, Any]) -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    (prometheus,) = datasources
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == prometheus["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == prometheus["uid"], panel["title"]


def test_grafana_loads_dashboards_from_where_compose_mounts_them(
    services: dict[str, Any],
) -> None:
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "digital-human.yml").read_text()
    )["providers"]
    (provider,) = providers
    mounts = dict(entry.split(":")[:2][::-1] for entry in services["grafana"]["volumes"])
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], f"{panel['title']}: no query"
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_shows_what_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(expr) for _, expr in _queries(dashboard)))
    assert used >= REQUIRED_METRICS, f"missing panels for {sorted(REQUIRED_METRICS - used)}"


def test_query_parser_finds_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(dh_x_bucket{state="ok"}'
        "[$__rate_interval]))) / sum without (gpu) (nv_y) and on (model) nv_z offset 5m * 1e3"
    )
    assert metric_names(expr) == {"dh_x_bucket", "nv_y", "nv_z"}


async def test_every_dashboard_query_names_a_metric_that_is_exported(
    dashboard: dict[str, Any], triton: TritonAddress, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        triton_metrics = exported_names((await client.get(triton.metrics_url)).text)
    settings = Settings(
        triton_url=triton.grpc_url, triton_metrics_url=triton.metrics_url, data_dir=tmp_path
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://orchestrator"
        ) as client,
    ):
        response = await client.get("/metrics")
    assert response.status_code == 200
    orchestrator_metrics = exported_names(response.text)
    # The CPU-only local Triton has no GPU: these must come from the allow-list, not from it.
    assert not TRITON_GPU_METRICS & triton_metrics

    exported = triton_metrics | orchestrator_metrics | TRITON_GPU_METRICS
    unknown = [
        f"{title}: {name}"
        for title, expr in _queries(dashboard)
        for name in sorted(metric_names(expr))
        if name not in exported
    ]
    assert not unknown, "queries name metrics nobody exports:\n" + "\n".join(unknown)
    # And each service's metrics were really seen (a broken scrape would hide nothing above).
    assert "nv_inference_request_success" in triton_metrics
    assert "dh_backlog_jobs" in orchestrator_metrics
