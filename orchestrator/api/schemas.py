"""The shapes the REST API answers with: every route's `response_model`, and so the
contract `/openapi.json` publishes (the fuzz in tests/api/test_fuzz.py holds the server
to it, and tests/api/test_openapi_docs.py holds docs/api.md to it).

Job and avatar states are the jobs layer's own enums (orchestrator.jobs.lifecycle), so
the schema lists exactly the states the store keeps.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.jobs.lifecycle import AvatarState, JobState

__all__ = ["AvatarState", "JobState"]  # re-exported: the routes' query parameters use them


# How a request names the face to animate (orchestrator.pipeline.faces.FaceChoice).
FACE_PATTERN = r"^\s*(largest|[0-9]+|[0-9]+(\.[0-9]+)?\s*,\s*[0-9]+(\.[0-9]+)?)\s*$"
FACE_DESCRIPTION = (
    "the face to animate, in the first frame where faces are found: 'largest' (the "
    "default), an index K (faces counted from 0 left to right, as GET /v1/avatars/{id} "
    "lists them) or a point 'X,Y' in pixels (the face whose box holds it, else the nearest); "
    "a choice naming no face is a 422 listing the faces there are"
)
FaceField = Annotated[str, Field(pattern=FACE_PATTERN, description=FACE_DESCRIPTION)]


class ErrorDetail(BaseModel):
    stage: str = Field(description="the part of the service that refused or failed")
    message: str = Field(description="why, for a human; never empty")
    retryable: bool = Field(
        False,
        description="true when the same request can succeed later unchanged (a dependency "
        "outage, a full backlog: wait for Retry-After); false when it needs changing first",
    )


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the /v1 routes."""

    error: ErrorDetail


class Progress(BaseModel):
    stage: str | None = Field(description="decode, avatar, drive, infer, composite or encode")
    frames_done: int
    frames_total: int = Field(description="0 until the audio's length is known")
    frames_per_second: float
    eta_seconds: float | None = Field(description="null while unknown; 0 once succeeded")


class JobLinks(BaseModel):
    self: str
    result: str = Field(description="the MP4, once the job has succeeded")


class JobResult(BaseModel):
    # The scheduler writes this record; extra keys it may add later pass through.
    model_config = ConfigDict(extra="allow")

    frames: int
    fps: float
    width: int
    height: int
    audio_seconds: float
    frames_without_face: int
    wall_seconds: float
    bytes: int


class WebhookOutcome(BaseModel):
    """How the completion webhook went; written once its deliveries are over."""

    model_config = ConfigDict(extra="allow")

    url: str
    delivered: bool
    attempts: int
    status_code: int | None = Field(None, description="the receiver's last HTTP status")
    error: str | None = Field(None, description="why the last delivery failed")
    at: float | None = Field(None, description="epoch seconds of the last attempt")


class JobDocument(BaseModel):
    """A job, as GET /v1/jobs/{id} answers and as its webhook posts it."""

    id: str
    state: JobState
    avatar_id: str | None = Field(description="the registered avatar; null for a one-off video")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int = Field(description="how many times the job was started")
    audio_seconds: float
    deadline_seconds: float
    progress: Progress
    stage_seconds: dict[str, float] = Field(description="busy seconds per pipeline stage")
    result: JobResult | None
    error: ErrorDetail | None
    webhook: WebhookOutcome | None
    client_code: str | None = Field(description="HeyGem's task code, for jobs from /easy")
    face: str = Field("largest", description="the face the job animates, as it was asked for")
    links: JobLinks


class JobPage(BaseModel):
    items: list[JobDocument]
    next_cursor: str | None = Field(description="the cursor of the next page; null on the last")


class AvatarLinks(BaseModel):
    self: str


class FaceBox(BaseModel):
    """One face a job may choose: its index (left to right) and its box in pixels."""

    index: int = Field(description="what a job's `face` field names it by")
    frame: int = Field(description="the first frame where faces are found")
    x1: float
    y1: float
    x2: float
    y2: float


class AvatarDocument(BaseModel):
    id: str = Field(description="content hash of the video")
    state: AvatarState
    name: str = Field(description="file name of the upload")
    created_at: datetime
    finished_at: datetime | None
    frames: int | None
    frames_decoded: int
    fps: float | None
    width: int | None
    height: int | None
    frames_with_face: int | None
    detected_frames: int | None
    faces: list[FaceBox] | None = Field(
        None,
        description="once ready: the faces of the first frame where faces are found, left "
        "to right; a job's `face` chooses among them",
    )
    error: ErrorDetail | None
    links: AvatarLinks


class AvatarPage(BaseModel):
    items: list[AvatarDocument]


class Healthz(BaseModel):
    status: Literal["ok"]


class ModelServing(BaseModel):
    max_batch_size: int
    instances: list[str] = Field(description="instance groups as COUNTxKIND")
    face_size: int | None = Field(None, description="lipsync only: the face crop's side")


class Readiness(BaseModel):
    ready: Literal[True]
    models: dict[str, ModelServing] = Field(
        description="how each model is served; empty where this process renders nothing"
    )
    role: str | None = Field(None, description='"api", "worker" or "api+worker" (dh serve)')
    needs: list[str] = Field(
        default_factory=list, description="what this role needs: triton, store, storage"
    )


class NotReady(BaseModel):
    ready: Literal[False]
    problems: list[str] = Field(description="'<dependency>: <why>' for every problem")
    down: dict[str, list[str]] = Field(
        default_factory=dict,
        description="each dependency that is down (triton, storage, store) and why",
    )
    error: ErrorDetail
    role: str | None = None
    needs: list[str] = Field(default_factory=list)


class GpuReport(BaseModel):
    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_percent: int


class TritonReport(BaseModel):
    url: str
    version: str | None


class InstanceGroupReport(BaseModel):
    kind: str
    count: int
    gpus: list[int]


class DynamicBatchingReport(BaseModel):
    preferred_batch_sizes: list[int]
    max_queue_delay_us: int
    max_queue_size: int


class ModelReport(BaseModel):
    name: str
    platform: str
    versions: list[str]
    max_batch_size: int
    instance_groups: list[InstanceGroupReport]
    dynamic_batching: DynamicBatchingReport
    inputs: dict[str, str] = Field(description="tensor name: datatype and shape")
    outputs: dict[str, str]


class SystemReport(BaseModel):
    gpus: list[GpuReport]
    nvml: str = Field(description="'ok', or NVML's reason for seeing no GPU")
    triton: TritonReport
    models: list[ModelReport]
    triton_metrics: dict[str, dict[str, float]] = Field(description="per model, from :8002")
    triton_metrics_error: str | None
    readiness_problems: list[str]
    job_store: str = Field(description="the job store's engine and where it is, no credentials")
    storage: dict[str, str] = Field(
        description="where files are kept: kind 'local', or 's3' with bucket, prefix, endpoint"
    )


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry of a route for the error statuses it can answer."""
    return {status: {"model": ErrorBody} for status in statuses}
