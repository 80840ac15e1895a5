"""The shapes of /v1/sessions: live sessions (orchestrator.live)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from orchestrator.jobs.store import SessionRecord
from orchestrator.live.frames import percentile
from orchestrator.live.session import Session, SessionState

MS = 1000.0


class SessionCreate(BaseModel):
    avatar_id: str = Field(description="a prepared avatar (GET /v1/avatars/{id} says ready)")


class SessionLinks(BaseModel):
    self: str
    webrtc: str = Field(description="POST the browser's SDP offer here; the answer comes back")
    audio: str = Field(description="WebSocket: binary messages of 16-bit little-endian mono PCM")
    speech: str = Field(description="POST an audio file (multipart field 'audio') to queue")
    interrupt: str = Field(description="POST: drop queued speech (barge-in)")


class SessionDocument(BaseModel):
    id: str
    avatar_id: str
    state: SessionState = Field(
        description="waiting (no WebRTC peer connected), streaming, or ended"
    )
    created_at: datetime
    fps: float = Field(description="frames per second of the video track: the avatar's")
    width: int
    height: int
    seconds_live: float = Field(description="seconds on the session's clock")
    frames_sent: int = Field(description="video frames handed to the WebRTC peer")
    late_frames: int = Field(
        description="frames whose lip-synced picture was not ready in time (an idle frame "
        "was shown instead)"
    )
    speech_queued_s: float = Field(description="seconds of speech queued ahead of what plays")
    latency_p50_ms: float | None = Field(
        description="median time from a frame's audio being final to its picture being ready; "
        "null before the first spoken frame"
    )
    latency_p95_ms: float | None = Field(description="95th percentile of the same")
    links: SessionLinks


class SessionPage(BaseModel):
    items: list[SessionDocument]


class SessionDescription(BaseModel):
    """A browser's RTCSessionDescription as JSON (`pc.localDescription.toJSON()`)."""

    sdp: str = Field(max_length=1_000_000)
    type: Literal["offer", "answer"]


def session_document(session: Session) -> SessionDocument:
    """A session this replica holds, as it is now."""
    latencies = [latency * MS for latency in session.stats.latencies_s]
    return SessionDocument(
        id=session.id,
        avatar_id=session.avatar.avatar_id,
        state=session.state,
        created_at=datetime.fromtimestamp(session.created_at, UTC),
        fps=float(session.fps),
        width=session.avatar.width,
        height=session.avatar.height,
        seconds_live=round(session.seconds_live, 3),
        frames_sent=session.stats.frames_sent,
        late_frames=session.stats.late_frames,
        speech_queued_s=round(session.speech_queued_s, 3),
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        links=_links(session.id),
    )


def record_document(record: SessionRecord) -> SessionDocument:
    """A session another replica holds, as its holder last wrote it (DH_LIVE_SNAPSHOT_S
    ago at most); the links lead to that replica's session (only it answers them)."""
    stats = record.snapshot
    return SessionDocument(
        id=record.id,
        avatar_id=record.avatar_id,
        state=SessionState(stats.state),
        created_at=datetime.fromtimestamp(record.created_at, UTC),
        fps=record.fps,
        width=record.width,
        height=record.height,
        seconds_live=stats.seconds_live,
        frames_sent=stats.frames_sent,
        late_frames=stats.late_frames,
        speech_queued_s=stats.speech_queued_s,
        latency_p50_ms=stats.latency_p50_ms,
        latency_p95_ms=stats.latency_p95_ms,
        links=_links(record.id),
    )


def any_document(found: Session | SessionRecord) -> SessionDocument:
    return session_document(found) if isinstance(found, Session) else record_document(found)


def _links(session_id: str) -> SessionLinks:
    base = f"/v1/sessions/{session_id}"
    return SessionLinks(
        self=base,
        webrtc=f"{base}/webrtc",
        audio=f"{base}/audio",
        speech=f"{base}/speech",
        interrupt=f"{base}/interrupt",
    )
