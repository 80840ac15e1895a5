"""A converted 192 px generator serves through the orchestrator with no code change: it
reads S from Triton's config, probes the model and renders a job with 192 px crops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localtriton.launcher import local_triton
from modelkit.build import build_lipsync
from modelkit.wav2lip_layouts import WAV2LIP_192
from orchestrator import cli
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video
from tests.conftest import TRITON_VENV
from tests.models.checkpoints import lipsync_repository, save_checkpoint, trained_like

FACE_SIZE = WAV2LIP_192.face_size
AVATAR_FPS = 25


@pytest.fixture(scope="module")
def triton_192(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gRPC URL of a local Triton serving the detector and a converted 192 px checkpoint."""
    work = tmp_path_factory.mktemp("served192")
    checkpoint = save_checkpoint(
        trained_like(WAV2LIP_192, seed=3).state_dict(), work / "wav2lip192.pth", "training"
    )
    repository = lipsync_repository(work)
    (repository / "face_detector").symlink_to((built_models / "face_detector").resolve())
    build_lipsync(repository, "checkpoint", checkpoint, work=work, log=lambda _: None)
    checkpoint.unlink()
    # One instance: two 192 px generators on two shared cores only slow the start.
    with local_triton(
        repository, work / "triton", TRITON_VENV, cpu_instances=1, log=lambda _: None
    ) as running:
        yield running.endpoints.grpc_url


def _settings(url: str, data_dir: Path) -> Settings:
    return Settings(
        triton_url=url, data_dir=data_dir, detect_every=4, lipsync_batch_size=8, work_threads=2
    )


async def test_probe_sends_a_face_of_the_served_size(
    triton_192: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await cli.probe(_settings(triton_192, tmp_path / "data"))

    printed = capsys.readouterr().out
    assert f"lipsync: pred [1, 3, {FACE_SIZE}, {FACE_SIZE}] float32" in printed


async def test_a_job_renders_with_crops_of_the_served_size(triton_192: str, tmp_path: Path) -> None:
    avatar, audio = tmp_path / "avatar.mp4", tmp_path / "speech.wav"
    write_avatar_video(avatar, seconds=0.6, fps=AVATAR_FPS, size=(256, 256))
    write_audio(audio, voiced_speech(0.4), 16000)

    async with Engine(_settings(triton_192, tmp_path / "data")) as engine:
        assert engine.served.face_size == FACE_SIZE
        # Triton checks every request against the config's [6, 192, 192]: a crop of any
        # other size would fail the job.
        result = await engine.generate(avatar, audio, tmp_path / "out.mp4")

    assert result.frames == 10
    assert result.output.is_file()
