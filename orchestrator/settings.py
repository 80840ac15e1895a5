"""The one settings object: environment variables prefixed DH_, read once at start-up."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_SHORT_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: object) -> object:
    """Short durations (90, 30m, 12h, 7d) as seconds; others (ISO-8601 P7D) go to pydantic."""
    if isinstance(value, str) and (short := _SHORT_DURATION.fullmatch(value.strip())):
        return float(short.group(1)) * _UNIT_S[short.group(2).lower()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DH_", env_file=None, extra="ignore")

    # Triton
    triton_url: str = Field("127.0.0.1:8001", description="Triton gRPC address host:port")
    triton_metrics_url: str = Field("http://127.0.0.1:8002/metrics")
    lipsync_model: str = "lipsync"
    detector_model: str = "face_detector"
    triton_ready_timeout_s: float = Field(120.0, gt=0, description="wait for READY at start-up")
    triton_request_timeout_s: float = Field(60.0, gt=0, description="deadline of one request")
    triton_retry_deadline_s: float = Field(
        10.0, ge=0, description="how long UNAVAILABLE is retried before the call fails"
    )
    triton_max_in_flight: int = Field(8, ge=1, description="requests in flight per client")

    # Pipeline
    data_dir: Path = Path("data")
    lipsync_batch_size: int = Field(32, ge=1, description="frames per lipsync request")
    # Each batch in flight holds its frames, its tensors and gRPC's copies of them
    # (~35 MB at 32 frames): this bounds a job's memory, not just its concurrency.
    lipsync_batches_in_flight: int = Field(
        4, ge=1, description="lipsync requests one job keeps in flight"
    )
    avatar_frame_codec: Literal["jpeg", "raw"] = Field(
        "jpeg",
        description="how prepared avatars keep their frames (raw: exact, ~6 MB a 1080p frame)",
    )
    avatar_jpeg_quality: int = Field(95, ge=50, le=100, description="JPEG quality of stored frames")
    detector_batch_size: int = Field(8, ge=1, description="frames per face_detector request")
    detect_every: int = Field(5, ge=1, description="run detection on every k-th avatar frame")
    detect_max_side: int = Field(
        480, ge=64, description="longest side of a frame as the detector sees it"
    )
    face_score_threshold: float = Field(0.8, gt=0, lt=1)
    face_nms_iou: float = Field(0.1, gt=0, lt=1)
    output_fps: float | None = Field(None, gt=0, description="default: the avatar's rate")
    video_encoder: str = Field("libx264", description="libx264 or h264_nvenc")
    work_threads: int = Field(4, ge=1, description="threads for decode, resize and encode")
    require_gpu: bool = Field(
        False, description="fail at start-up unless NVML sees a GPU (set on GPU hosts)"
    )

    # Service (REST API, job store, scheduler)
    host: str = Field("127.0.0.1", description="address `dh serve` binds to")
    port: int = Field(8080, ge=0, le=65535, description="port `dh serve` binds to")
    api_key: str | None = Field(
        None, description="Bearer key every route needs except /healthz, /readyz, /metrics"
    )
    max_running_jobs: int = Field(2, ge=1, description="jobs rendering at the same time")
    max_backlog: int = Field(32, ge=0, description="queued jobs beyond which POST answers 429")
    max_preparing_avatars: int = Field(1, ge=1, description="avatars prepared at the same time")
    max_upload_bytes: int = Field(512 * 1024**2, ge=1, description="largest request body")
    max_audio_seconds: float = Field(600.0, gt=0, description="longest speech track")
    max_video_seconds: float = Field(600.0, gt=0, description="longest avatar video")
    max_video_width: int = Field(3840, ge=16, description="widest avatar video (upright)")
    max_video_height: int = Field(3840, ge=16, description="tallest avatar video (upright)")
    max_video_pixels: int = Field(3840 * 2160, ge=256, description="largest width × height")
    job_deadline_base_s: float = Field(120.0, gt=0, description="deadline of a job, fixed part")
    job_deadline_per_audio_s: float = Field(
        10.0, ge=0, description="deadline of a job, seconds added per second of audio"
    )
    max_attempts: int = Field(
        3, ge=1, description="starts of one job (restarts included) before it fails"
    )
    webhook_attempts: int = Field(5, ge=1, description="deliveries tried per webhook")
    webhook_backoff_s: float = Field(1.0, gt=0, description="first retry delay, doubled each time")
    webhook_timeout_s: float = Field(10.0, gt=0, description="deadline of one webhook POST")
    # Outbound requests (orchestrator/outbound.py): http(s) only, and never to a loopback,
    # link-local, private, CGNAT, multicast or reserved address unless the host is listed.
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="hosts webhooks may go to, trusted whatever they resolve to; "
        'empty or "*": any host with public addresses',
    )
    url_fetch_allowed_schemes: list[str] = Field(
        default_factory=lambda: ["https"],
        description="schemes of input URLs that are fetched (http and https at most)",
    )
    url_fetch_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="hosts input URLs may name, trusted whatever they resolve to; "
        '"*": any host with public addresses; empty: no URL is fetched',
    )
    url_fetch_max_bytes: int = Field(512 * 1024**2, ge=1, description="largest fetched input")
    url_fetch_timeout_s: float = Field(
        60.0, gt=0, description="deadline of one whole input fetch (not per read)"
    )
    # Uploads: Apache mod_reqtimeout's rule. The body may take `upload_rate_grace_s` plus
    # one second per `upload_min_bytes_per_s` bytes received, never more than
    # `upload_deadline_s` in all (15 min: DH_MAX_UPLOAD_BYTES' 512 MiB at ~5 Mbit/s).
    upload_deadline_s: float = Field(900.0, gt=0, description="longest time one upload may take")
    upload_min_bytes_per_s: int = Field(
        16 * 1024, ge=1, description="slowest average upload rate kept after the grace period"
    )
    upload_rate_grace_s: float = Field(
        10.0, ge=0, description="seconds an upload may send nothing before the rate counts"
    )
    # Every other body is at most 64 KiB (orchestrator/api/limits_middleware.py).
    request_body_timeout_s: float = Field(
        10.0, gt=0, description="deadline for the body of a non-upload request (answers 408)"
    )
    # uvicorn
    max_connections: int = Field(
        256, ge=1, description="open connections and requests beyond which `dh serve` answers 503"
    )
    keep_alive_s: int = Field(5, ge=1, description="how long an idle connection is kept")
    shutdown_grace_s: int = Field(
        30, ge=1, description="on SIGTERM, how long open requests may finish before cut off"
    )
    trusted_network: bool = Field(
        False,
        description="let `dh serve` listen on a non-loopback DH_HOST without DH_API_KEY",
    )
    # Retention (orchestrator/jobs/retention.py)
    result_ttl: Annotated[timedelta, BeforeValidator(_duration)] = Field(
        timedelta(days=7),
        gt=timedelta(0),
        description="how long a finished job (row and result) is kept: seconds, 30m, 12h, 7d "
        "or ISO-8601 (P7D, PT12H)",
    )
    retention_sweep_s: float = Field(
        3600.0, gt=0, description="how often expired jobs are looked for"
    )
    local_input_dir: Path | None = Field(
        None, description="the only directory server-side input paths may point into"
    )
    io_threads: int = Field(2, ge=1, description="threads for upload writes, hashing, probing")
    log_json: bool = Field(False, description="log JSON lines (each with the job id)")

    # HeyGem drop-in (/easy/*)
    heygem_data_dir: Path | None = Field(
        None,
        description="HeyGem's data folder (its containers mount it at /code/data): /easy "
        "inputs may be named inside its temp/ and results are written there as <code>-r.mp4",
    )
    watermark_text: str = Field(
        "AI generated", description="watermark drawn when /easy/submit sets watermark_switch"
    )
    watermark_image: Path | None = Field(
        None, description="a PNG (alpha respected) drawn instead of watermark_text"
    )
    watermark_position: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = Field(
        "bottom-right", description="the corner the watermark sits in"
    )
