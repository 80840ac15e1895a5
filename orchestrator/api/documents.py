"""The JSON shape of a job and of an avatar: what GET answers and what a webhook posts.

The shapes are the API's models (orchestrator.api.schemas); this module maps the store's
records onto them. It lives in the API layer: the jobs layer never imports the API's.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from orchestrator.api.schemas import (
    AvatarDocument,
    AvatarLinks,
    ErrorDetail,
    FaceBox,
    JobDocument,
    JobLinks,
    JobResult,
    Progress,
    WebhookOutcome,
)
from orchestrator.jobs.lifecycle import JobState
from orchestrator.jobs.store import AvatarRecord, JobError, JobRecord
from orchestrator.pipeline.runner import Progress as LiveProgress


def _time(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _error(record: JobError | dict[str, str] | None) -> ErrorDetail | None:
    if isinstance(record, JobError):
        return ErrorDetail(stage=record.stage, message=record.message, retryable=record.retryable)
    return None if record is None else ErrorDetail.model_validate(record)


def _faces(faces: list[dict[str, Any]] | None) -> list[FaceBox] | None:
    if faces is None:
        return None
    return [
        FaceBox(index=f["index"], frame=f["frame"], x1=x1, y1=y1, x2=x2, y2=y2)
        for f in faces
        for x1, y1, x2, y2 in [f["box"]]
    ]


def job_links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result"}


def job_progress(job: JobRecord, live: LiveProgress | None) -> Progress:
    """Frames done and total, frames/s and ETA; live figures while the job runs."""
    if live is not None and job.state is JobState.RUNNING:
        eta = live.eta_seconds
        return Progress(
            stage=live.stage,
            frames_done=live.frames_done,
            frames_total=live.frames_total,
            frames_per_second=round(live.frames_per_second, 2),
            eta_seconds=None if eta is None else round(eta, 2),
        )
    # Not rendering here: the row's figures, written by the heartbeat of the replica that
    # renders it, so every replica gives the same answer.
    remaining: float | None = 0.0 if job.state is JobState.SUCCEEDED else None
    if job.state is JobState.RUNNING and job.frames_per_second > 0 and job.frames_total:
        remaining = round(max(0, job.frames_total - job.frames_done) / job.frames_per_second, 2)
    return Progress(
        stage=job.stage,
        frames_done=job.frames_done,
        frames_total=job.frames_total,
        frames_per_second=round(job.frames_per_second, 2),
        eta_seconds=remaining,
    )


def job_document(job: JobRecord, live: LiveProgress | None = None) -> JobDocument:
    created_at = _time(job.created_at)
    assert created_at is not None
    return JobDocument(
        id=job.id,
        state=job.state,
        avatar_id=job.avatar_id if job.registered_avatar else None,
        created_at=created_at,
        started_at=_time(job.started_at),
        finished_at=_time(job.finished_at),
        attempts=job.attempts,
        audio_seconds=round(job.audio_seconds, 3),
        deadline_seconds=job.deadline_s,
        progress=job_progress(job, live),
        stage_seconds={k: round(v, 3) for k, v in job.stage_seconds.items()},
        result=None if job.result is None else JobResult.model_validate(asdict(job.result)),
        error=_error(job.error),
        webhook=WebhookOutcome.model_validate(job.webhook)
        if job.webhook is not None and job.webhook_url
        else None,
        client_code=job.client_code,
        face=job.face,
        links=JobLinks.model_validate(job_links(job.id)),
    )


def avatar_document(avatar: AvatarRecord, frames_decoded: int | None = None) -> AvatarDocument:
    """`frames_decoded`: the live count while the avatar is being prepared."""
    created_at = _time(avatar.created_at)
    assert created_at is not None
    return AvatarDocument(
        id=avatar.id,
        state=avatar.state,
        name=avatar.source_name,
        created_at=created_at,
        finished_at=_time(avatar.finished_at),
        frames=avatar.frames,
        frames_decoded=avatar.frames_seen if frames_decoded is None else frames_decoded,
        fps=avatar.fps,
        width=avatar.width,
        height=avatar.height,
        frames_with_face=avatar.frames_with_face,
        detected_frames=avatar.detected_frames,
        faces=_faces(avatar.faces),
        error=_error(avatar.error),
        links=AvatarLinks(self=f"/v1/avatars/{avatar.id}"),
    )
