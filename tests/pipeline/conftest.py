"""Fixtures for pipeline tests: a started Engine on the session's Triton, and media."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from synthmedia.avatar import write_avatar_video
from tests.conftest import TritonAddress

AVATAR_FPS = 25
AVATAR_SIZE = (192, 192)


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def short_avatar(media: Path) -> Path:
    """1.2 s of the astronaut at 25 fps: shorter than every test's audio."""
    path = media / "short_avatar.mp4"
    write_avatar_video(path, seconds=1.2, fps=AVATAR_FPS, size=AVATAR_SIZE)
    return path


def engine_settings(triton: TritonAddress, data_dir: Path, **overrides: object) -> Settings:
    return Settings(
        triton_url=triton.grpc_url,
        triton_metrics_url=triton.metrics_url,
        data_dir=data_dir,
        detect_every=4,
        lipsync_batch_size=16,
        work_threads=2,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
async def engine(
    triton: TritonAddress, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Engine]:
    async with Engine(engine_settings(triton, tmp_path_factory.mktemp("data"))) as started:
        yield started
