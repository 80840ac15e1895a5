"""Drop-in routes of the HeyGem / Duix.Avatar video service: /easy/submit, /easy/query.

Its clients send JSON `{audio_url, video_url, code, chaofen, watermark_switch, pn}` and
poll `GET /easy/query?code=…`; answers carry a numeric `code` (10000 success, 10001 busy,
10002 bad parameters, 10004 no such task, 9999 system error) and, for a query, `data`
with `status` (1 running, 2 done, 3 failed), `progress` (0-100), `msg` and `result`.

Every answer under /easy is HTTP 200, whatever the outcome, as HeyGem's service answers:
its desktop app uses axios with default settings, which throws on any other status, and
a throw inside its polling loop ends the loop for good. So the outcome is only in
`code`, including refusals raised before a route runs (a missing API key, a missing
`code` query parameter) and unknown paths under /easy; `HeyGemRoute` turns them into
answers. A full backlog still sends Retry-After.

`audio_url` and `video_url` are URLs (fetched when allowed), names relative to the
`temp/` of HeyGem's data folder or `/code/data/…` container paths (with
DH_HEYGEM_DATA_DIR), paths in DH_LOCAL_INPUT_DIR, or (`video_url`) a registered avatar's
id. With DH_HEYGEM_DATA_DIR the result is written to `temp/<code>-r.mp4` there and
`result` is `/<code>-r.mp4`, which HeyGem's app joins onto that folder; without it,
`result` is this server's `/v1/jobs/<id>/result`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.api.answers import error_answer, status_answer
from orchestrator.api.deps import Service, ServiceDep
from orchestrator.api.documents import job_links
from orchestrator.api.fetch import StagedInput, stage_input
from orchestrator.api.heygem import (
    NOT_FOUND,
    SUCCESS,
    SYSTEM_ERROR,
    check_code,
    heygem_refusal,
    heygem_response,
    input_roots,
    result_reference,
)
from orchestrator.api.intake import face_choice, face_restore_unavailable, submit_job
from orchestrator.api.schemas import FACE_DESCRIPTION, FaceField
from orchestrator.errors import BadInput, Conflict, LimitExceeded, PipelineError
from orchestrator.jobs.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    SUCCEEDED,
    JobRecord,
)

log = logging.getLogger(__name__)

# HeyGem's task states in /easy/query.
RUNNING_STATUS, DONE_STATUS, FAILED_STATUS = 1, 2, 3
# Progress shown before the frame count is known (decode and avatar stages).
PREPARING_PERCENT = 5
MS = 1000
MAX_JSON_BYTES = 64 * 1024
SERVER_ERROR = 500
# chaofen asks for face restoration; where no face_restore model is served it is ignored
# (HeyGem's own service treats it as best effort too), and the messages say why.
CHAOFEN_IGNORED = "chaofen ignored"


# The shapes, for /openapi.json and for building the answers.


class SubmitRequest(BaseModel):
    """What HeyGem's app posts; other fields it sends (`pn`, …) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    audio_url: str = Field(
        description="URL, name in <DH_HEYGEM_DATA_DIR>/temp, /code/data/… path, or path "
        "in DH_LOCAL_INPUT_DIR"
    )
    video_url: str = Field(description="as audio_url, or the id of a registered avatar")
    code: str | int | None = Field(None, description="the task's id; a UUID if left out")
    chaofen: int = Field(
        0, ge=0, le=1, description="1: restore the face (face_restore model); ignored without one"
    )
    watermark_switch: int = Field(0, ge=0, le=1, description="1: a visible watermark")
    pn: int | None = Field(None, description="sent by HeyGem's app; not used")
    face: FaceField | None = Field(None, description=f"optional (not HeyGem's): {FACE_DESCRIPTION}")


class ErrorData(BaseModel):
    stage: str
    message: str
    retryable: bool = Field(False, description="whether the same request can succeed later")


class SubmitData(BaseModel):
    code: str
    job_id: str
    links: dict[str, str]


class QueryData(BaseModel):
    code: str
    job_id: str
    status: int = Field(description="1 running (or queued), 2 done, 3 failed")
    progress: int = Field(ge=0, le=100)
    msg: str
    result: str = Field(description="/<code>-r.mp4 with DH_HEYGEM_DATA_DIR, else a URL path")
    video_duration: int = Field(description="milliseconds of speech")
    width: int | None = None
    height: int | None = None
    cost: int | None = Field(None, description="milliseconds the render took")
    error: ErrorData | None = None


class SubmitAnswer(BaseModel):
    code: int = Field(description="10000 success, 10001 busy, 10002 bad parameters, 9999")
    success: bool
    msg: str
    data: SubmitData | ErrorData | dict[str, Any]


class QueryAnswer(BaseModel):
    code: int = Field(description="10000 success, 10002 bad parameters, 10004 no such task")
    success: bool
    msg: str
    data: QueryData | ErrorData | dict[str, Any]


def _refusal(error: BaseException) -> JSONResponse:
    answer = error_answer(error)
    if answer.status >= SERVER_ERROR:
        log.error("%s: %s", answer.stage, answer.message)
    return heygem_refusal(answer)


class HeyGemRoute(APIRoute):
    """A route whose every outcome is an HTTP 200 answer in HeyGem's codes, including
    errors raised while its dependencies (the API key) and parameters are resolved."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer_in_heygem_codes(request: Request) -> Response:
            try:
                return await handler(request)
            except PipelineError as exc:
                return _refusal(exc)
            except RequestValidationError as exc:
                return heygem_refusal(status_answer(422, "request", _problems(exc.errors())))
            except Exception as exc:  # still an answer the client can read, naming no path
                log.exception("unhandled error on %s", request.url.path)
                return heygem_refusal(error_answer(exc))

        return answer_in_heygem_codes


def _problems(errors: Any) -> str:
    found = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors]
    return "; ".join(found) or "the request is not valid"


router = APIRouter(prefix="/easy", tags=["heygem"], route_class=HeyGemRoute)


@router.post(
    "/submit",
    summary="HeyGem-compatible submit: audio_url, video_url, code",
    response_model=SubmitAnswer,
    # The body is read by the route with a size bound, not by FastAPI; this documents it.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": SubmitRequest.model_json_schema()}},
        }
    },
)
async def submit(request: Request, service: ServiceDep) -> JSONResponse:
    wanted = _submit_request(await _json_body(request))
    code = str(wanted.code or uuid.uuid4())
    # It names the result file in HeyGem's folder, and is echoed in every answer.
    check_code(code)
    if await service.store.job_by_code(code) is not None:
        raise Conflict("request", f"a task with code '{code}' exists already")
    job = await _submit(service, code, wanted)
    message = _with_chaofen_note("success", bool(wanted.chaofen), service)
    return heygem_response(
        SUCCESS, message, SubmitData(code=code, job_id=job.id, links=job_links(job.id))
    )


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
    except ValueError:  # an integer of more digits than Python converts (4300)
        raise BadInput("request", "the body holds a number too long to read") from None
    except RecursionError:
        raise BadInput("request", "the JSON body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadInput("request", "the body must be a JSON object")
    return body


def _submit_request(body: dict[str, Any]) -> SubmitRequest:
    try:
        return SubmitRequest.model_validate(body)
    except ValidationError as exc:
        raise BadInput("request", _problems(exc.errors())) from None
    except RecursionError:  # a deeply nested value in an extra field
        raise BadInput("request", "the JSON body is nested too deeply") from None


async def _submit(service: Service, code: str, wanted: SubmitRequest) -> JobRecord:
    roots = input_roots(service.settings)
    options: dict[str, Any] = {
        "client_code": code,
        "watermark": bool(wanted.watermark_switch),
        "restore_face": bool(wanted.chaofen),
        "face": face_choice(wanted.face),
    }
    staged: list[StagedInput] = []
    try:
        audio = await stage_input(wanted.audio_url, "audio_url", service, roots)
        staged.append(audio)
        avatar = await service.store.get_avatar(wanted.video_url.strip())
        if avatar is not None:
            return await submit_job(
                service,
                audio=audio.path,
                video=None,
                video_content_id=None,
                avatar_id=avatar.id,
                **options,
            )
        video = await stage_input(wanted.video_url, "video_url", service, roots)
        staged.append(video)
        return await submit_job(
            service,
            audio=audio.path,
            video=video.path,
            video_content_id=video.content_id,
            avatar_id=None,
            **options,
        )
    except BaseException:
        for item in staged:
            await service.storage.discard(item.path)
        raise


@router.get(
    "/query",
    summary="HeyGem-compatible progress query by code",
    response_model=QueryAnswer,
)
async def query(code: str, service: ServiceDep) -> JSONResponse:
    job = await service.store.job_by_code(code)
    if job is None:
        return heygem_response(NOT_FOUND, f"no task with code '{code}'")
    live = service.scheduler.live_progress(job.id)
    data = QueryData(
        code=code,
        job_id=job.id,
        status=_status(job),
        progress=_percent(
            job, live.frames_done if live else None, live.frames_total if live else None
        ),
        msg=_with_chaofen_note(
            _message(job, live.stage if live else None), job.restore_face, service
        ),
        result=_result(service, job) if job.state == SUCCEEDED else "",
        video_duration=round(job.audio_seconds * MS),
    )
    if job.result:
        data.width, data.height = job.result.width, job.result.height
    if job.started_at and job.finished_at:
        data.cost = round((job.finished_at - job.started_at) * MS)
    if job.error:
        data.error = ErrorData(
            stage=job.error.stage, message=job.error.message, retryable=job.error.retryable
        )
    return heygem_response(SUCCESS, "success", data)


@router.api_route(
    "/{rest:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    include_in_schema=False,
)
async def elsewhere(rest: str, request: Request) -> JSONResponse:
    """Anything else under /easy (an unknown path, GET on /easy/submit): still HTTP 200."""
    return heygem_response(SYSTEM_ERROR, f"request: no route {request.method} /easy/{rest}")


def _result(service: Service, job: JobRecord) -> str:
    if service.settings.heygem_data_dir is not None and job.client_code is not None:
        return result_reference(job.client_code)
    return job_links(job.id)["result"]


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
        return f"{job.error.stage}: {job.error.message}"
    if job.state == SUCCEEDED:
        message = "done"
    elif job.state == QUEUED:
        message = "queued"
    else:
        message = live_stage or job.stage or "running"
    return message


def _with_chaofen_note(message: str, chaofen: bool, service: Service) -> str:
    """`message`, saying why when chaofen was asked for and this server cannot do it."""
    reason = face_restore_unavailable(service) if chaofen else None
    return f"{message} ({CHAOFEN_IGNORED}: {reason})" if reason else message
