"""/v1/sessions: live sessions. REST opens, inspects and ends them; speech comes in over a
WebSocket, as uploaded files or as the WebRTC peer's microphone; video and the speech go
out over WebRTC (orchestrator.live).

In a fleet a session lives on the replica that answered its POST (it holds the peer).
Every replica answers GET, the list and DELETE through the store; the peer, speech and
interrupt routes only on the holder: elsewhere 409 (WebSocket: closed with 4409)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request, Response, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from orchestrator.api.auth import check_api_key
from orchestrator.api.deps import Service, ServiceDep
from orchestrator.api.intake import audio_check
from orchestrator.api.schemas import error_responses
from orchestrator.api.session_schemas import (
    SessionCreate,
    SessionDescription,
    SessionDocument,
    SessionPage,
    any_document,
    session_document,
)
from orchestrator.api.uploads import receive_form
from orchestrator.blocking import run_blocking
from orchestrator.errors import Backlogged, BadInput, PipelineError
from orchestrator.live.session import Session, SessionEnded
from orchestrator.live.speech import Resampler, announced_rate, pcm_samples
from orchestrator.pipeline.decode import decode_audio
from orchestrator.pipeline.mel import SAMPLE_RATE

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
# FastAPI's HTTP dependencies (the API key) do not run on WebSocket routes: this one checks
# the key itself.
socket_router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
STAGE = "sessions"

# WebSocket close codes: RFC 6455's where one fits, 4000 + the HTTP status otherwise.
CLOSE_ENDED = 1000  # the session ended (DELETE, or its peer went away for good)
CLOSE_BAD_DATA = 1007  # malformed PCM or sample-rate message
CLOSE_TOO_MUCH = 1008  # one message larger than DH_LIVE_MAX_QUEUED_S
# A close frame's reason is at most 123 bytes (RFC 6455, 5.5: 125 less the code).
REASON_BYTES = 123


@router.post(
    "",
    status_code=201,
    response_model=SessionDocument,
    summary="Open a live session on a prepared avatar (409 while it is not prepared)",
    responses=error_responses(400, 404, 409, 422, 429, 503),
)
async def open_session(
    body: SessionCreate, response: Response, service: ServiceDep
) -> SessionDocument:
    session = await service.sessions.open(body.avatar_id)
    response.headers["Location"] = f"/v1/sessions/{session.id}"
    return session_document(session)


@router.get(
    "",
    response_model=SessionPage,
    summary="Every replica's open live sessions, newest first",
    responses=error_responses(503),
)
async def list_sessions(service: ServiceDep) -> SessionPage:
    return SessionPage(items=[any_document(s) for s in await service.sessions.list_fleet()])


@router.get(
    "/{session_id}",
    response_model=SessionDocument,
    summary="State, seconds live, frames sent and late, speech queued, latency (asked of "
    "another replica: as its holder wrote them, DH_LIVE_SNAPSHOT_S ago at most)",
    responses=error_responses(404, 503),
)
async def get_session(session_id: str, service: ServiceDep) -> SessionDocument:
    return any_document(await service.sessions.find(session_id))


@router.delete(
    "/{session_id}",
    status_code=204,
    response_class=Response,
    summary="End the session: its peer, clock and queued speech are freed (202: held by "
    "another replica, asked to end it, not confirmed yet)",
    responses={
        **error_responses(404, 503),
        202: {"description": "the holding replica was asked and ends it shortly"},
    },
)
async def end_session(session_id: str, service: ServiceDep) -> Response:
    ended = await service.sessions.end_anywhere(session_id)
    return Response(status_code=204 if ended else 202)


@router.post(
    "/{session_id}/webrtc",
    response_model=SessionDescription,
    summary="SDP offer in, answer out: the session's video and speech over WebRTC",
    responses=error_responses(400, 404, 409, 422),
)
async def connect(
    session_id: str, offer: SessionDescription, service: ServiceDep
) -> SessionDescription:
    await service.sessions.held(session_id)  # 409 on a replica that does not hold it
    answer = await service.sessions.connect(session_id, offer.sdp, offer.type)
    return SessionDescription(sdp=answer.sdp, type="answer")


@router.post(
    "/{session_id}/speech",
    status_code=202,
    response_model=SessionDocument,
    summary="Queue an audio file (multipart field 'audio', any format jobs take) after "
    "what is playing",
    responses=error_responses(404, 409, 413, 422, 429),
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["audio"],
                        "properties": {"audio": {"type": "string", "format": "binary"}},
                    }
                }
            },
            "required": True,
        }
    },
)
async def queue_speech(session_id: str, request: Request, service: ServiceDep) -> SessionDocument:
    session = await service.sessions.held(session_id)
    form = await receive_form(
        request,
        storage=service.storage,
        pool=service.io_pool,
        max_bytes=service.settings.max_upload_bytes,
        checks={"audio": audio_check(service)},
    )
    audio = form.files.get("audio")
    try:
        if audio is None:
            raise BadInput("request", "the form needs an 'audio' file")
        samples = await run_blocking(service.io_pool, decode_audio, audio.path, audio.filename)
    finally:
        for received in form.files.values():
            await service.storage.discard(received.path)
    session.queue_speech(samples)  # SessionEnded (404) if it ended meanwhile
    return session_document(session)


@router.post(
    "/{session_id}/interrupt",
    response_model=SessionDocument,
    summary="Drop queued speech (barge-in): the mouth is at rest within 3 frames",
    responses=error_responses(404, 409),
)
async def interrupt(session_id: str, service: ServiceDep) -> SessionDocument:
    session = await service.sessions.held(session_id)
    session.interrupt()
    return session_document(session)


@socket_router.websocket("/{session_id}/audio")
async def speech_stream(websocket: WebSocket, session_id: str) -> None:
    """Binary messages: 16-bit little-endian mono PCM, 16 kHz unless a first text message
    announces another rate ({"sample_rate": 48000}); any number of samples per message.
    The API key comes as `Authorization: Bearer` or, from a browser (which cannot set
    headers on a WebSocket), as the `api_key` query parameter."""
    service: Service = websocket.app.state.service
    await websocket.accept()
    try:
        key = websocket.query_params.get("api_key")
        check_api_key(
            service.settings.api_key,
            f"Bearer {key}" if key else websocket.headers.get("authorization", ""),
        )
        session = await service.sessions.held(session_id)
    except PipelineError as exc:
        # 4401 (the key), 4404 (no such session), 4409 (another replica holds it), 4503.
        await _close(websocket, 4000 + exc.http_status, exc.message)
        return
    closer = asyncio.create_task(_close_when_ended(websocket, session))
    try:
        await _receive_speech(websocket, session)
    except WebSocketDisconnect:
        pass
    except BadInput as exc:
        await _close(websocket, CLOSE_BAD_DATA, exc.message)
    except Backlogged as exc:
        await _close(websocket, CLOSE_TOO_MUCH, exc.message)
    except SessionEnded:
        await _close(websocket, CLOSE_ENDED, "the session ended")
    finally:
        closer.cancel()
        await asyncio.wait({closer})


async def _receive_speech(websocket: WebSocket, session: Session) -> None:
    resampler = Resampler(SAMPLE_RATE)
    first = True
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text, data = message.get("text"), message.get("bytes")
        if text is not None:
            if not first:
                raise BadInput(STAGE, "the sample rate is announced in the first message only")
            resampler = Resampler(announced_rate(text))
        elif data is not None:
            samples = resampler(pcm_samples(data))
            if samples.size > session.max_queued_samples:
                raise Backlogged(
                    STAGE,
                    "one message holds more speech than DH_LIVE_MAX_QUEUED_S; send less at once",
                    retry_after_s=1,
                )
            # Back-pressure: a client sending faster than real time waits here (and, once
            # the server's buffers are full, in its own send) until the queue has room.
            await session.wait_for_room(samples.size)
            session.queue_speech(samples)
        first = False


async def _close_when_ended(websocket: WebSocket, session: Session) -> None:
    await session.wait_ended()
    await _close(websocket, CLOSE_ENDED, "the session ended")


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    encoded = reason.encode()[:REASON_BYTES].decode(errors="ignore")
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=code, reason=encoded)
