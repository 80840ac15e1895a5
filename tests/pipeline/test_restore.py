"""Face restoration in a job: the face_restore model changes the face box and nothing else.

A second Triton (tests/conftest.py, `restoring_triton`) serves the production models plus
the analytic unsharp-mask restorer (modelkit/restore_analytic.py); the session's server
has no restorer, and there asking for restoration is refused (tests/api/test_restore_face.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from modelkit import restore_analytic
from orchestrator.pipeline.drive import pingpong
from orchestrator.pipeline.mel import SAMPLE_RATE
from orchestrator.pipeline.runner import Engine, JobResult
from synthmedia.audio import bursts, write_audio
from tests.conftest import TritonAddress
from tests.pipeline.conftest import engine_settings
from tests.pipeline.frames import decode_frames, psnr

AUDIO_SECONDS = 2.0


@pytest.fixture(scope="module")
async def restoring_engine(
    restoring_triton: TritonAddress, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Engine]:
    settings = engine_settings(restoring_triton, tmp_path_factory.mktemp("restoring_data"))
    async with Engine(settings) as started:
        yield started


@dataclass(frozen=True)
class Rendered:
    result: JobResult
    frames: list[np.ndarray]


@pytest.fixture(scope="module")
async def both_jobs(
    restoring_engine: Engine, short_avatar: Path, media: Path
) -> tuple[Rendered, Rendered]:
    """The same avatar and speech, rendered without and with restoration."""
    audio = media / "restore_bursts.wav"
    write_audio(audio, bursts(AUDIO_SECONDS, [0.4, 1.2], 0.2), SAMPLE_RATE)
    jobs = []
    for restore in (False, True):
        out = media / f"restore_{restore}.mp4"
        result = await restoring_engine.generate(short_avatar, audio, out, restore_face=restore)
        jobs.append(Rendered(result, decode_frames(result.output)))
    return jobs[0], jobs[1]


async def test_the_restorer_is_found_with_its_own_face_size(restoring_engine: Engine) -> None:
    served = restoring_engine.served
    assert served.face_restore is not None
    assert served.restore_size == restore_analytic.FACE_SIZE
    assert served.face_restore.name in [spec.name for spec in served.specs]


def test_restoration_changes_the_face_box_and_nothing_outside_it(
    both_jobs: tuple[Rendered, Rendered],
) -> None:
    plain, restored = both_jobs
    avatar = plain.result.avatar
    assert len(plain.frames) == len(restored.frames) > 0
    inside_plain, inside_restored, outside_plain, outside_restored = [], [], [], []
    for i, (a, b) in enumerate(zip(plain.frames, restored.frames, strict=True)):
        x1, y1, x2, y2 = (int(v) for v in avatar.boxes[pingpong(i, avatar.frame_count)])
        outside = np.ones(a.shape[:2], bool)
        outside[y1:y2, x1:x2] = False
        outside_plain.append(a[outside])
        outside_restored.append(b[outside])
        inside_plain.append(a[y1:y2, x1:x2].astype(np.float32))
        inside_restored.append(b[y1:y2, x1:x2].astype(np.float32))
    # Outside the box both are the avatar; only the encoder's rounding tells them apart.
    assert psnr(np.concatenate(outside_plain), np.concatenate(outside_restored)) >= 40.0
    difference = np.mean(
        [np.abs(a - b).mean() for a, b in zip(inside_plain, inside_restored, strict=True)]
    )
    assert difference > 1.0, "the restorer changed the face"

    def detail(boxes: list[np.ndarray]) -> float:
        return float(np.mean([np.abs(np.diff(box, axis=1)).mean() for box in boxes]))

    assert detail(inside_restored) > detail(inside_plain), "the unsharp mask sharpens"
