"""scripts/gpu-bench on a host that cannot run it: one clear line and exit 2, nothing started."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu-bench"
# Only the system's own tools: no nvidia-smi, tritonserver or docker unless installed there.
SYSTEM_PATH = "/usr/bin:/bin"


def _run(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)], env={"PATH": path}, capture_output=True, text=True, timeout=30, check=False
    )


def test_without_a_gpu_it_says_so_in_one_line_and_exits_2() -> None:
    if shutil.which("nvidia-smi", path=SYSTEM_PATH):
        pytest.skip("this host has nvidia-smi")

    result = _run(SYSTEM_PATH)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "gpu-bench: no NVIDIA GPU here (nvidia-smi lists none); run it on a GPU host"
    ]


def test_with_a_gpu_but_no_way_to_run_triton_it_says_which_is_missing(tmp_path: Path) -> None:
    if any(shutil.which(tool, path=SYSTEM_PATH) for tool in ("tritonserver", "docker")):
        pytest.skip("this host can run Triton")
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-fake)'\n")
    fake.chmod(0o755)

    result = _run(f"{tmp_path}:{SYSTEM_PATH}")

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "neither tritonserver nor docker compose" in lines[0]
