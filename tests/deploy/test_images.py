"""The two images, checked without Docker: what the Dockerfiles promise (slim, non-root,
health-checked, no compilers, pinned torch), that everything they copy is in the build
context, and that the models image's entry point really builds a servable repository (the
script runs here, outside the image, against the same sources)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from modelkit.repository import model_dirs, onnx_path, read_config
from tests.deploy.conftest import REPO

ORCHESTRATOR_DOCKERFILE = REPO / "Dockerfile"
MODELS_DOCKERFILE = REPO / "docker" / "models.Dockerfile"
ENTRYPOINT = REPO / "docker" / "build-models.sh"
# Packages that would mean a compiler in the image.
COMPILERS = ("gcc", "g++", "clang", "build-essential", "make", "cmake")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]

    def values(self, keyword: str) -> list[str]:
        return [value for kw, value in self.instructions if kw == keyword]


def _stages(dockerfile: Path) -> list[Stage]:
    """Build stages with their instructions (continuation lines joined, ARG defaults applied
    to FROM lines)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = value.partition("=")
            args[name] = default
        if keyword == "FROM":
            base, _, alias = value.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), base.strip())
            stages.append(Stage(base, alias.strip() or None, []))
        elif stages:
            stages[-1].instructions.append((keyword, value.strip()))
    return stages


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_orchestrator_image_is_multi_stage_slim_and_non_root() -> None:
    stages = _stages(ORCHESTRATOR_DOCKERFILE)
    assert len(stages) >= 2, "the build happens in its own stage"
    final = stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final.base), final.base
    users = final.values("USER")
    assert users and users[-1] not in ("root", "0"), "the service must not run as root"
    # Only the virtual environment comes from the build stage: no source tree, no caches.
    copies = final.values("COPY")
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_orchestrator_image_has_no_compiler() -> None:
    for stage in _stages(ORCHESTRATOR_DOCKERFILE):
        for command in stage.values("RUN"):
            words = set(re.split(r"[\s;&|]+", command))
            assert not words & set(COMPILERS), f"compiler installed: {command}"


def test_orchestrator_image_serves_on_all_interfaces_and_checks_its_health() -> None:
    final = _stages(ORCHESTRATOR_DOCKERFILE)[-1]
    env = " ".join(final.values("ENV"))
    assert "DH_HOST=0.0.0.0" in env
    assert final.values("ENTRYPOINT") == ['["dh"]']
    assert final.values("CMD") == ['["serve"]']
    (healthcheck,) = final.values("HEALTHCHECK")
    assert "/healthz" in healthcheck and "urllib.request" in healthcheck
    assert "curl" not in healthcheck  # the slim base has none


def test_models_image_pins_the_cpu_torch_the_tests_use() -> None:
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned = next(req for req in dev["dev"] if req.startswith("torch=="))
    text = MODELS_DOCKERFILE.read_text()
    assert f"ARG TORCH_VERSION={pinned.removeprefix('torch==')}" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert "torch==${TORCH_VERSION}" in text
    final = _stages(MODELS_DOCKERFILE)[-1]
    assert final.values("ENTRYPOINT") == ['["build-models"]']
    users = final.values("USER")
    assert users and users[-1] not in ("root", "0")


@pytest.mark.parametrize("dockerfile", [ORCHESTRATOR_DOCKERFILE, MODELS_DOCKERFILE])
def test_exec_form_instructions_are_valid_json(dockerfile: Path) -> None:
    # Docker silently falls back to the shell form when the array is not valid JSON, and a
    # shell-form ENTRYPOINT would not receive SIGTERM.
    for stage in _stages(dockerfile):
        for keyword, value in stage.instructions:
            array = value.split("CMD ", 1)[1] if keyword == "HEALTHCHECK" else value
            if array.startswith("["):
                parsed = json.loads(array)
                assert all(isinstance(word, str) for word in parsed), f"{keyword} {value}"


@pytest.mark.parametrize("dockerfile", [ORCHESTRATOR_DOCKERFILE, MODELS_DOCKERFILE])
def test_everything_an_image_copies_is_in_the_build_context(dockerfile: Path) -> None:
    ignored = _dockerignore()
    for stage in _stages(dockerfile):
        for value in stage.values("COPY"):
            if value.startswith("--from="):
                continue
            *sources, _ = value.split()
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: missing"
                top = source.split("/")[0]
                assert top not in ignored, f"{dockerfile.name}: {source} is in .dockerignore"


def test_build_context_leaves_out_environments_models_and_secrets() -> None:
    ignored = _dockerignore()
    for pattern in (".env", ".venv", ".venv-*", "build", "data", "**/*.onnx", ".git"):
        assert pattern in ignored, f".dockerignore lacks {pattern}"


@pytest.fixture
def entrypoint_env(built_models: Path, tmp_path: Path) -> dict[str, str]:
    """The models container's environment, pointed at temporary folders, with `python` the
    interpreter running the tests and the S3FD weights the session already fetched."""
    downloads = tmp_path / "build" / "downloads"
    downloads.mkdir(parents=True)
    shutil.copy(REPO / "build" / "downloads" / "sfd_face.pth", downloads)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "MODELS_SOURCE": str(built_models),
        "MODELS_TARGET": str(tmp_path / "models"),
        "MODELS_WORK": str(tmp_path / "build"),
        "MODELS_LIPSYNC": "reference",
        "TRITON_INSTANCES_PER_GPU": "3",
        "TRITON_TENSORRT_FP16": "true",
        "TRITON_TENSORRT_MODELS": "lipsync",
    }


def _run_entrypoint(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT)], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )


def test_models_entrypoint_builds_a_gpu_repository_and_skips_it_the_second_time(
    entrypoint_env: dict[str, str],
) -> None:
    first = _run_entrypoint(entrypoint_env)
    assert first.returncode == 0, first.stderr
    target = Path(entrypoint_env["MODELS_TARGET"])
    names = [d.name for d in model_dirs(target)]
    assert names == ["face_detector", "lipsync"]
    for name in names:
        config = read_config(target / name)
        assert [(g.kind, g.count, list(g.gpus)) for g in config.instance_group] == [
            (model_config_pb2.ModelInstanceGroup.KIND_GPU, 3, [])
        ]
        assert onnx_path(target, name).is_file()
    lipsync = read_config(target / "lipsync")
    accelerators = lipsync.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["tensorrt"]

    second = _run_entrypoint(entrypoint_env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("up to date") == 2, second.stdout


def test_models_entrypoint_stops_on_a_bad_setting(entrypoint_env: dict[str, str]) -> None:
    done = _run_entrypoint({**entrypoint_env, "TRITON_INSTANCES_PER_GPU": "many"})
    assert done.returncode == 2
    assert "TRITON_INSTANCES_PER_GPU: 'many'" in done.stderr
    assert not Path(entrypoint_env["MODELS_TARGET"]).exists()
