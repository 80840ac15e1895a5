"""What the store keeps: a job and an avatar as records, with the job's typed error and
result. The states are orchestrator.jobs.states', the moves between them
orchestrator.jobs.lifecycle's."""

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
