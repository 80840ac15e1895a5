"""What the store keeps: a job and an avatar as records, with the job's typed error and
result, and a live session's record. The states are orchestrator.jobs.states', the moves
between them orchestrator.jobs.lifecycle's; a session's are orchestrator.live.session's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from orchestrator.errors import PipelineError
from orchestrator.jobs.states import AvatarState, JobState

# The states' names as this module exported them before the enums; same members.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = JobState
JOB_STATES = tuple(JobState)
PREPARING, READY = AvatarState.PREPARING, AvatarState.READY
AVATAR_STATES = tuple(AvatarState)


@dataclass
class JobError:
    """Why a job failed, was cancelled, or waits in the queue again."""

    stage: str
    message: str
    retryable: bool = False  # whether the same request may succeed later, unchanged

    @classmethod
    def from_exception(cls, error: PipelineError) -> JobError:
        return cls(error.stage, error.message, error.retryable)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobError:
        # Rows written before `retryable` existed load as not retryable.
        return cls(str(data["stage"]), str(data["message"]), bool(data.get("retryable", False)))


@dataclass
class JobResult:
    """What a succeeded job produced."""

    frames: int
    fps: float
    width: int
    height: int
    audio_seconds: float
    frames_without_face: int
    wall_seconds: float
    bytes: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class JobRecord:
    id: str
    created_at: float
    audio_path: str
    video_path: str
    avatar_id: str  # content id of the video: the avatar cache it uses
    audio_seconds: float
    deadline_s: float
    registered_avatar: bool  # False: a one-off video whose cache goes with the job
    state: JobState = JobState.QUEUED
    client_code: str | None = None  # HeyGem's `code`, unique when set
    webhook_url: str | None = None
    audio_name: str | None = None  # the inputs as the client named them, for messages
    video_name: str | None = None
    watermark: bool = False  # draw the visible watermark (HeyGem's watermark_switch)
    restore_face: bool = False  # asked (restore_face, chaofen); done where face_restore is served
    face: str = "largest"  # the face to animate (pipeline.faces.FaceChoice, as text)
    attempts: int = 0  # how many times the job was started
    started_at: float | None = None
    finished_at: float | None = None
    stage: str | None = None
    frames_done: int = 0
    frames_total: int = 0
    frames_per_second: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    result: JobResult | None = None
    error: JobError | None = None
    webhook: dict[str, Any] | None = None
    replica: str | None = None  # the replica that started the latest attempt
    seq: int = 0  # insertion order, assigned by the store; the paging cursor
    # Columns beside the JSON body, read back with it (never taken from the body).
    lease_owner: str | None = None  # the replica holding the job while it runs
    cancel_requested: bool = False  # a DELETE asked the replica running it to stop


@dataclass
class AvatarRecord:
    id: str  # content id of the video
    created_at: float
    source_path: str
    source_name: str
    state: AvatarState = AvatarState.PREPARING
    frames_seen: int = 0
    frames: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    frames_with_face: int | None = None
    detected_frames: int | None = None
    # Faces of the first frame with faces, left to right: {index, frame, box: [x1, y1, x2, y2]}.
    faces: list[dict[str, Any]] | None = None
    error: dict[str, str] | None = None
    finished_at: float | None = None
    seq: int = 0


@dataclass(frozen=True)
class JobProgress:
    """What a heartbeat writes to a running job's row, so any replica can report it."""

    stage: str
    frames_done: int
    frames_total: int
    frames_per_second: float


@dataclass(frozen=True)
class Admission:
    """The outcome of admitting a job against the cluster-wide backlog bound."""

    accepted: bool
    queued: int  # jobs queued before this one, every replica's
    running: int
    capacity: int  # jobs every live replica may run at once


# A live session's state once it has ended (orchestrator.live.session.SessionState.ENDED).
SESSION_ENDED = "ended"


@dataclass(frozen=True)
class SessionSnapshot:
    """What the replica holding a live session writes to its row every tick, so any
    replica can answer its GET (orchestrator.live.sessions)."""

    state: str  # waiting, streaming or ended (orchestrator.live.session.SessionState)
    seconds_live: float = 0.0
    frames_sent: int = 0
    late_frames: int = 0
    speech_queued_s: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None


@dataclass
class SessionRecord:
    """A live session as the store keeps it: written by the replica that holds its
    WebRTC peer (and only that one), read by every replica."""

    id: str
    avatar_id: str
    replica: str  # the holding process: its lease owner name, "<name>#<incarnation>"
    created_at: float
    fps: float
    width: int
    height: int
    snapshot: SessionSnapshot
    end_requested: bool = False  # a DELETE on another replica asked the holder to end it
    # Seconds since the holder last wrote the row, by the store's clock (read back only):
    # a holder that died stops writing, so an old snapshot means the session is gone.
    age_s: float = 0.0


# The two record types the store reads back; both are dataclasses with a `seq`.
RecordT = TypeVar("RecordT", JobRecord, AvatarRecord)
_COLUMN_FIELDS = ("lease_owner", "cancel_requested")


def body_json(record: JobRecord | AvatarRecord) -> dict[str, Any]:
    """The record as the JSON body of its row (without the columns kept beside it)."""
    body = asdict(record)  # JobError and JobResult become plain objects
    for name in _COLUMN_FIELDS:
        body.pop(name, None)
    return body


def from_body(cls: type[RecordT], body: str | dict[str, Any], seq: int) -> RecordT:
    data = json.loads(body) if isinstance(body, str) else body
    known = {f.name for f in fields(cls)} - set(_COLUMN_FIELDS)
    record = cls(**{k: v for k, v in data.items() if k in known})
    record.seq = seq
    if isinstance(record, JobRecord):
        record.state = JobState(record.state)
        error, result = data.get("error"), data.get("result")
        record.error = None if error is None else JobError.from_json(error)
        record.result = None if result is None else JobResult.from_json(result)
    else:
        record.state = AvatarState(record.state)
    return record


def job_from_row(
    body: str | dict[str, Any], seq: int, lease_owner: str | None, cancel_requested: object
) -> JobRecord:
    job = from_body(JobRecord, body, seq)
    job.lease_owner = lease_owner
    job.cancel_requested = bool(cancel_requested)
    return job


# A session row's columns in SessionRecord's order, less its age (computed on read).
SESSION_COLUMNS = (
    "id, avatar_id, replica, created_at, fps, width, height, state, seconds_live, "
    "frames_sent, late_frames, speech_queued_s, latency_p50_ms, latency_p95_ms, end_requested"
)

# add_session writes the whole row, also over one that is there (the holder writing again
# a row deleted or ended under a session that is still alive).
SESSION_UPSERT = "ON CONFLICT (id) DO UPDATE SET " + ", ".join(
    f"{column}=excluded.{column}" for column in [*SESSION_COLUMNS.split(", ")[1:], "updated_at"]
)


def session_from_row(row: tuple[Any, ...]) -> SessionRecord:
    """A row of SESSION_COLUMNS followed by its age in seconds."""
    (sid, avatar_id, replica, created_at, fps, width, height, *snapshot, end, age) = row
    return SessionRecord(
        id=sid,
        avatar_id=avatar_id,
        replica=replica,
        created_at=float(created_at),
        fps=float(fps),
        width=int(width),
        height=int(height),
        snapshot=SessionSnapshot(*snapshot),
        end_requested=bool(end),
        age_s=max(0.0, float(age)),
    )


def snapshot_values(snapshot: SessionSnapshot) -> tuple[object, ...]:
    """The snapshot in SESSION_COLUMNS' order (state to latency_p95_ms)."""
    return (
        snapshot.state,
        snapshot.seconds_live,
        snapshot.frames_sent,
        snapshot.late_frames,
        snapshot.speech_queued_s,
        snapshot.latency_p50_ms,
        snapshot.latency_p95_ms,
    )
