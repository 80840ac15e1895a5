"""The JSON shape of a job and of an avatar: what GET answers and what a webhook posts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from orchestrator.jobs.store import RUNNING, SUCCEEDED, AvatarRecord, JobRecord
from orchestrator.pipeline.runner import Progress


def _time(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def job_links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result"}


def job_progress(job: JobRecord, live: Progress | None) -> dict[str, Any]:
    """Frames done and total, frames/s and ETA; live figures while the job runs."""
    if live is not None and job.state == RUNNING:
        eta = live.eta_seconds
        return {
            "stage": live.stage,
            "frames_done": live.frames_done,
            "frames_total": live.frames_total,
            "frames_per_second": round(live.frames_per_second, 2),
            "eta_seconds": None if eta is None else round(eta, 2),
        }
    return {
        "stage": job.stage,
        "frames_done": job.frames_done,
        "frames_total": job.frames_total,
        "frames_per_second": round(job.frames_per_second, 2),
        "eta_seconds": 0.0 if job.state == SUCCEEDED else None,
    }


def job_document(job: JobRecord, live: Progress | None = None) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state,
        "avatar_id": job.avatar_id if job.registered_avatar else None,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "attempts": job.attempts,
        "audio_seconds": round(job.audio_seconds, 3),
        "deadline_seconds": job.deadline_s,
        "progress": job_progress(job, live),
        "stage_seconds": {k: round(v, 3) for k, v in job.stage_seconds.items()},
        "result": job.result,
        "error": job.error,
        "webhook": job.webhook if job.webhook_url else None,
        "client_code": job.client_code,
        "links": job_links(job.id),
    }


def avatar_document(avatar: AvatarRecord) -> dict[str, Any]:
    return {
        "id": avatar.id,
        "state": avatar.state,
        "name": avatar.source_name,
        "created_at": _time(avatar.created_at),
        "finished_at": _time(avatar.finished_at),
        "frames": avatar.frames,
        "frames_decoded": avatar.frames_seen,
        "fps": avatar.fps,
        "width": avatar.width,
        "height": avatar.height,
        "frames_with_face": avatar.frames_with_face,
        "detected_frames": avatar.detected_frames,
        "error": avatar.error,
        "links": {"self": f"/v1/avatars/{avatar.id}"},
    }
