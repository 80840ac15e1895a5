"""What the benchmarks share: a local Triton for the run and one job in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from localtriton.launcher import local_triton
from modelkit.build import build, build_repository, lipsync_artifact, repository_with_wav2lip

REPO = Path(__file__).resolve().parents[1]


# The Wav2Lip-96 architecture served beside the production models, for honest compute.
WAV2LIP_MODEL = "lipsync_wav2lip"


def wav2lip_onnx() -> Path:
    """The Wav2Lip-96 ONNX file (random weights) that WAV2LIP_MODEL serves, built if needed,
    for the benchmarks that run the model in this process."""
    out = REPO / "build" / "models" / "wav2lip96-random.onnx"
    artifact = lipsync_artifact(REPO / "model_repository", "wav2lip-random", out=out)
    build(artifact, REPO / "build" / "stamps", log=lambda _: None)
    return out


@contextmanager
def triton_for_benchmark(
    work: Path, url: str | None, *, wav2lip: bool = False, ort_threads: int | None = None
) -> Iterator[tuple[str, str]]:
    """(grpc url, metrics url): the given server, or a local one started for this run."""
    if url:
        yield url, ""
        return
    repository = REPO / "model_repository"
    build_repository(repository, work=REPO / "build", log=lambda _: None)
    if wav2lip:
        repository = repository_with_wav2lip(
            repository, work / "model_repository", REPO / "build", WAV2LIP_MODEL
        )
    with local_triton(
        repository, work / "triton", REPO / ".venv-triton", ort_threads=ort_threads, log=print
    ) as running:
        yield running.endpoints.grpc_url, running.endpoints.metrics_url


def run_job_process(env: dict[str, str], avatar: Path, audio: Path, out: Path) -> dict[str, float]:
    """One `dh generate` in a fresh interpreter; returns its figures (peak RSS included)."""
    command = [sys.executable, "-m", "benchmarks.job", str(avatar), str(audio), str(out)]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"benchmark job failed:\n{result.stderr[-2000:]}")
    metrics: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return metrics
