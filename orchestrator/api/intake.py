"""Turning staged inputs into a queued job; shared by /v1/jobs and the HeyGem routes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from orchestrator.api.deps import Service
from orchestrator.blocking import run_blocking
from orchestrator.errors import BadInput
from orchestrator.jobs.admission import JobInputs
from orchestrator.jobs.lifecycle import AvatarState
from orchestrator.jobs.limits import AudioInfo, check_audio, check_video
from orchestrator.jobs.store import AvatarRecord, JobRecord
from orchestrator.jobs.webhook import check_webhook_url
from orchestrator.pipeline.decode import VideoInfo
from orchestrator.pipeline.faces import FaceChoice, NoSuchFace, pick

STAGE = "request"


def audio_check(service: Service) -> Callable[[Path, bool, str], AudioInfo | None]:
    return lambda path, partial, name: check_audio(path, service.settings, partial, name)


def video_check(service: Service) -> Callable[[Path, bool, str], VideoInfo | None]:
    return lambda path, partial, name: check_video(path, service.settings, partial, name)


def face_choice(text: str | None) -> FaceChoice:
    """A request's `face` field (absent: the largest); a malformed one is a 422."""
    try:
        return FaceChoice.parse(text)
    except ValueError as exc:
        raise BadInput(STAGE, str(exc)) from None


def check_face(choice: FaceChoice, avatar: AvatarRecord) -> None:
    """Refuses, listing the faces there are, a choice naming none of a prepared avatar's
    faces. An avatar still being prepared (or a one-off video) is checked when the job
    renders, and the job fails with the same message."""
    if choice.is_default or avatar.state != AvatarState.READY or avatar.faces is None:
        return
    if not avatar.faces:
        raise BadInput(STAGE, f"face {choice}: avatar '{avatar.id}' has no face to choose from")
    frame = avatar.faces[0]["frame"]
    found = np.array([face["box"] for face in avatar.faces], np.float64)
    try:
        pick(found, choice, frame)
    except NoSuchFace as exc:
        message = f"face {choice} names no face of avatar '{avatar.id}': {exc}"
        raise BadInput(STAGE, message) from None


def face_restore_unavailable(service: Service) -> str | None:
    """Why this server cannot restore faces (restore_face, HeyGem's chaofen); None if it can."""
    served = service.engine.served
    return None if served.face_restore is not None else served.restore_unavailable


async def submit_job(
    service: Service,
    *,
    audio: Path,
    video: Path | None,
    video_content_id: str | None,
    avatar_id: str | None,
    client_code: str | None = None,
    webhook_url: str | None = None,
    watermark: bool = False,
    restore_face: bool = False,
    face: FaceChoice | None = None,
    audio_name: str | None = None,
    video_name: str | None = None,
) -> JobRecord:
    """Queues a job from staged files. The staged files are the caller's to discard if
    this raises; on success they belong to the job. The names are the inputs as the
    client named them (an upload's filename, a URL's last part): messages use them.
    `face`: the face to animate (None: the largest)."""
    choice = face or FaceChoice()
    if (video is None) == (avatar_id is None):
        raise BadInput(STAGE, "send either an avatar_id or a video file, not both or neither")
    if webhook_url:
        check_webhook_url(webhook_url, service.settings)
    info = await run_blocking(
        service.io_pool, check_audio, audio, service.settings, False, audio_name
    )
    assert info is not None, "a complete file is always measured"
    if avatar_id is not None:
        avatar = await service.store.get_avatar(avatar_id)
        if avatar is None:
            raise BadInput(STAGE, f"no avatar with id '{avatar_id}'")
        if avatar.state == AvatarState.FAILED:
            reason = (avatar.error or {}).get("message", "unknown reason")
            raise BadInput(STAGE, f"avatar '{avatar_id}' could not be prepared: {reason}")
        check_face(choice, avatar)
        inputs = JobInputs(
            audio=audio,
            audio_seconds=info.seconds,
            avatar_id=avatar_id,
            video=Path(avatar.source_path),
            registered_avatar=True,
            client_code=client_code,
            webhook_url=webhook_url or None,
            audio_name=audio_name,
            video_name=avatar.source_name,
            watermark=watermark,
            restore_face=restore_face,
            face=str(choice),
        )
    else:
        assert video is not None and video_content_id is not None
        await run_blocking(service.io_pool, check_video, video, service.settings, False, video_name)
        inputs = JobInputs(
            audio=audio,
            audio_seconds=info.seconds,
            avatar_id=video_content_id,
            video=video,
            registered_avatar=False,
            client_code=client_code,
            webhook_url=webhook_url or None,
            audio_name=audio_name,
            video_name=video_name,
            watermark=watermark,
            restore_face=restore_face,
            face=str(choice),
        )
    # A client code used twice: DuplicateCode (409) from the store, whichever engine.
    return await service.admission.submit(inputs)
