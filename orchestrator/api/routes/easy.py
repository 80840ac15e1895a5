"""Drop-in routes of the HeyGem / Duix.Avatar video service: /easy/submit, /easy/query.

Its clients send JSON `{audio_url, video_url, code, chaofen, watermark_switch, pn}` and
poll `GET /easy/query?code=…`; answers carry a numeric `code` (10000 success, 10001 busy,
10002 bad parameters, 10004 no such task, 9999 system error) and, for a query, `data`
with `status` (1 running, 2 done, 3 failed), `progress` (0-100), `msg` and `result`.
`audio_url` and `video_url` are URLs (fetched when allowed) or paths in the allowed
input directory, as HeyGem reads paths in its container; `video_url` may also be the id
of a registered avatar. `result` is the path of the MP4 on this server. The HTTP status
is the real one (4xx for bad input, 429 when busy); the body is HeyGem's.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from orchestrator.api.deps import Service, ServiceDep
from orchestrator.api.fetch import StagedInput, stage_input
from orchestrator.api.intake import submit_job
from orchestrator.errors import (
    Backlogged,
    BadInput,
    Conflict,
    LimitExceeded,
    PipelineError,
)
from orchestrator.jobs.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    SUCCEEDED,
    JobRecord,
)
from orchestrator.jobs.views import job_links

router = APIRouter(prefix="/easy", tags=["heygem"])

# HeyGem's response codes (ResponseCode in its app_local.py).
SUCCESS, BUSY, BAD_PARAM, NOT_FOUND, SYSTEM_ERROR = 10000, 10001, 10002, 10004, 9999
# HeyGem's task states in /easy/query.
RUNNING_STATUS, DONE_STATUS, FAILED_STATUS = 1, 2, 3
# Progress shown before the frame count is known (decode and avatar stages).
PREPARING_PERCENT = 5
MS = 1000
MAX_JSON_BYTES = 64 * 1024


def _answer(
    code: int,
    msg: str,
    data: dict[str, Any] | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"code": code, "success": code == SUCCESS, "msg": msg, "data": data or {}}
    return JSONResponse(body, status_code=status, headers=headers)


def _refusal(error: PipelineError) -> JSONResponse:
    detail = error.as_record()
    message = f"{error.stage}: {error.message}"
    if isinstance(error, Backlogged):
        return _answer(BUSY, message, detail, 429, {"Retry-After": str(error.retry_after_s)})
    if isinstance(error, LimitExceeded):
        headers = {"Connection": "close"} if error.status == 413 else None
        return _answer(BAD_PARAM, message, detail, error.status, headers)
    if isinstance(error, Conflict):
        return _answer(BAD_PARAM, message, detail, 409)
    if isinstance(error, BadInput):
        return _answer(BAD_PARAM, message, detail, 422)
    return _answer(SYSTEM_ERROR, message, detail, 500)


@router.post("/submit", summary="HeyGem-compatible submit: audio_url, video_url, code")
async def submit(request: Request, service: ServiceDep) -> JSONResponse:
    try:
        body = await _json_body(request)
        code = str(body.get("code") or uuid.uuid4())
        audio_url, video_url = body.get("audio_url"), body.get("video_url")
        if not isinstance(audio_url, str) or not isinstance(video_url, str):
            raise BadInput("request", "audio_url and video_url are required strings")
        if await service.store.job_by_code(code) is not None:
            raise Conflict("request", f"a task with code '{code}' exists already")
        job = await _submit(service, code, audio_url, video_url)
    except PipelineError as exc:
        return _refusal(exc)
    return _answer(SUCCESS, "success", {"code": code, "job_id": job.id, "links": job_links(job.id)})


async def _json_body(request: Request) -> dict[str, Any]:
    """The JSON object of the request, read with a size bound (no upload comes here)."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BYTES:
            raise LimitExceeded(
                "request", f"the JSON body is longer than {MAX_JSON_BYTES} bytes", 413
            )
    try:
        body = json.loads(bytes(raw) or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput("request", f"the body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadInput("request", "the body must be a JSON object")
    return body


async def _submit(service: Service, code: str, audio_url: str, video_url: str) -> JobRecord:
    staged: list[StagedInput] = []
    try:
        audio = await stage_input(audio_url, "audio_url", service)
        staged.append(audio)
        avatar = await service.store.get_avatar(video_url.strip())
        if avatar is not None:
            return await submit_job(
                service,
                audio=audio.path,
                video=None,
                video_content_id=None,
                avatar_id=avatar.id,
                client_code=code,
            )
        video = await stage_input(video_url, "video_url", service)
        staged.append(video)
        return await submit_job(
            service,
            audio=audio.path,
            video=video.path,
            video_content_id=video.content_id,
            avatar_id=None,
            client_code=code,
        )
    except BaseException:
        for item in staged:
            await service.storage.discard(item.path)
        raise


@router.get("/query", summary="HeyGem-compatible progress query by code")
async def query(code: str, service: ServiceDep) -> JSONResponse:
    job = await service.store.job_by_code(code)
    if job is None:
        return _answer(NOT_FOUND, f"no task with code '{code}'", status=404)
    live = service.scheduler.live_progress(job.id)
    data: dict[str, Any] = {
        "code": code,
        "job_id": job.id,
        "status": _status(job),
        "progress": _percent(
            job, live.frames_done if live else None, live.frames_total if live else None
        ),
        "msg": _message(job, live.stage if live else None),
        "result": job_links(job.id)["result"] if job.state == SUCCEEDED else "",
        "video_duration": round(job.audio_seconds * MS),
    }
    if job.result:
        data["width"], data["height"] = job.result["width"], job.result["height"]
    if job.started_at and job.finished_at:
        data["cost"] = round((job.finished_at - job.started_at) * MS)
    if job.error:
        data["error"] = job.error
    return _answer(SUCCESS, "success", data)


def _status(job: JobRecord) -> int:
    if job.state == SUCCEEDED:
        return DONE_STATUS
    if job.state in (FAILED, CANCELLED):
        return FAILED_STATUS
    return RUNNING_STATUS  # HeyGem has no "queued": a waiting task is in progress


def _percent(job: JobRecord, done: int | None, total: int | None) -> int:
    if job.state == SUCCEEDED:
        return 100
    if job.state == QUEUED:
        return 0
    done = job.frames_done if done is None else done
    total = job.frames_total if total is None else total
    if not total:
        return PREPARING_PERCENT if job.started_at else 0
    return min(99, PREPARING_PERCENT + int((100 - PREPARING_PERCENT) * done / total))


def _message(job: JobRecord, live_stage: str | None) -> str:
    if job.error:
        return f"{job.error['stage']}: {job.error['message']}"
    if job.state == SUCCEEDED:
        return "done"
    if job.state == QUEUED:
        return "queued"
    return live_stage or job.stage or "running"
