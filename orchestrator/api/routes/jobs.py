"""/v1/jobs: submit (multipart), inspect, list, download the result, cancel."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from orchestrator.api.deps import Service, ServiceDep
from orchestrator.api.documents import job_document
from orchestrator.api.intake import (
    audio_check,
    face_choice,
    face_restore_unavailable,
    submit_job,
    video_check,
)
from orchestrator.api.schemas import (
    FACE_DESCRIPTION,
    FACE_PATTERN,
    JobDocument,
    JobPage,
    JobState,
    error_responses,
)
from orchestrator.api.uploads import receive_form
from orchestrator.errors import BadInput, Conflict, NotFound
from orchestrator.jobs.store import ACTIVE_STATES, SUCCEEDED, JobRecord

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
STAGE = "jobs"
PAGE_DEFAULT, PAGE_MAX = 50, 500
# Cursors are row sequence numbers: SQLite's INTEGER is a signed 64-bit value.
MAX_CURSOR_SEQ = 2**63 - 1
# A cursor this server hands out is a base64 number; anything longer is not one.
MAX_CURSOR_CHARS = 32
# How a multipart form spells a boolean (HTML checkboxes send "on"); empty or absent: false.
FORM_TRUE, FORM_FALSE = (
    frozenset({"true", "1", "yes", "on"}),
    frozenset({"false", "0", "no", "off", ""}),
)
MP4_BODY = {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}


async def _job(service: Service, job_id: str) -> JobRecord:
    job = await service.store.get_job(job_id)
    if job is None:
        raise NotFound(STAGE, f"no job with id '{job_id}'")
    return job


def _document(service: Service, job: JobRecord) -> JobDocument:
    return job_document(job, service.scheduler.live_progress(job.id))


@router.post(
    "",
    status_code=202,
    response_model=JobDocument,
    summary="Submit a job: an audio file plus an avatar_id, or an audio file plus a video",
    responses=error_responses(413, 422, 429),
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["audio"],
                        "properties": {
                            "audio": {"type": "string", "format": "binary"},
                            "video": {"type": "string", "format": "binary"},
                            "avatar_id": {"type": "string"},
                            "webhook_url": {"type": "string"},
                            "restore_face": {
                                "type": "boolean",
                                "description": "restore the generated face with the "
                                "face_restore model; 422 where none is served",
                            },
                            "face": {
                                "type": "string",
                                "pattern": FACE_PATTERN,
                                "default": "largest",
                                "description": FACE_DESCRIPTION,
                            },
                        },
                    }
                }
            },
            "required": True,
        }
    },
)
async def submit(request: Request, response: Response, service: ServiceDep) -> JobDocument:
    form = await receive_form(
        request,
        storage=service.storage,
        pool=service.io_pool,
        max_bytes=service.settings.max_upload_bytes,
        checks={"audio": audio_check(service), "video": video_check(service)},
    )
    try:
        audio = form.files.get("audio")
        if audio is None:
            raise BadInput("request", "the form needs an 'audio' file")
        video = form.files.get("video")
        restore_face = _restore_face(service, form.fields.get("restore_face"))
        face = face_choice(form.fields.get("face"))
        job = await submit_job(
            service,
            audio=audio.path,
            video=video.path if video else None,
            video_content_id=video.content_id if video else None,
            avatar_id=form.fields.get("avatar_id") or None,
            webhook_url=form.fields.get("webhook_url") or None,
            restore_face=restore_face,
            face=face,
            audio_name=audio.filename,
            video_name=video.filename if video else None,
        )
    except BaseException:
        for received in form.files.values():
            await service.storage.discard(received.path)
        raise
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return _document(service, job)


@router.get(
    "",
    response_model=JobPage,
    summary="List jobs, newest first, with a state filter and cursor paging",
    responses=error_responses(422),
)
async def list_jobs(
    service: ServiceDep,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    cursor: Annotated[
        str | None,
        Query(max_length=MAX_CURSOR_CHARS, description="next_cursor of the previous page"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
) -> JobPage:
    before = _decode_cursor(cursor) if cursor else None
    jobs = await service.store.list_jobs(state, before, limit + 1)
    page, more = jobs[:limit], len(jobs) > limit
    return JobPage(
        items=[_document(service, job) for job in page],
        next_cursor=_encode_cursor(page[-1].seq) if more and page else None,
    )


@router.get(
    "/{job_id}",
    response_model=JobDocument,
    summary="State, progress, time per stage, and the error if it failed",
    responses=error_responses(404, 422),
)
async def get_job(job_id: str, service: ServiceDep) -> JobDocument:
    return _document(service, await _job(service, job_id))


@router.get(
    "/{job_id}/result",
    summary="The rendered MP4 (supports Range requests)",
    response_class=FileResponse,
    responses={
        200: {"content": MP4_BODY, "description": "the whole MP4"},
        206: {"content": MP4_BODY, "description": "the part a Range header asked for"},
        416: {"description": "the Range is outside the file"},
        **error_responses(404, 409, 422),
    },
)
async def get_result(job_id: str, request: Request, service: ServiceDep) -> Response:
    job = await _job(service, job_id)
    if job.state != SUCCEEDED:
        raise Conflict(STAGE, f"job '{job_id}' is {job.state}; a result exists once it succeeded")
    # The storage answers: the file, the object streamed with Range, or a redirect.
    return await service.storage.result_response(
        job_id, request.headers.get("range"), f"{job_id}.mp4"
    )


@router.delete(
    "/{job_id}",
    response_model=JobDocument,
    summary="Cancel a queued or running job; a finished job is deleted with its result",
    responses={
        200: {"description": "cancelled: the job, now in state cancelled"},
        204: {"description": "deleted: the job had finished"},
        **error_responses(404, 422),
    },
)
async def delete_job(job_id: str, service: ServiceDep) -> JobDocument | Response:
    job = await _job(service, job_id)
    if job.state in ACTIVE_STATES:
        cancelled = await service.scheduler.cancel(job_id)
        return _document(service, cancelled)
    await service.store.delete_job(job_id)
    await service.storage.remove_job(job_id)
    return Response(status_code=204)


def _restore_face(service: Service, field: str | None) -> bool:
    """The form's restore_face as a boolean; asking where no restorer is served is a 422,
    not a job that quietly renders without it."""
    value = (field or "").strip().lower()
    if value not in FORM_TRUE | FORM_FALSE:
        raise BadInput("request", f"restore_face must be true or false, not '{field}'")
    if value in FORM_FALSE:
        return False
    reason = face_restore_unavailable(service)
    if reason is not None:
        raise BadInput("request", f"restore_face: face restoration is unavailable ({reason})")
    return True


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(str(seq).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    refused = BadInput("request", "cursor is not one this server handed out")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        seq = int(base64.urlsafe_b64decode(padded.encode()).decode())
    except (ValueError, UnicodeError, binascii.Error):
        raise refused from None
    # Out of range it would reach SQLite and fail there (OverflowError), not here.
    if not 0 <= seq <= MAX_CURSOR_SEQ:
        raise refused
    return seq
