"""The one settings object: environment variables prefixed DH_, read once at start-up."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SHORT_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: object) -> object:
    """Short durations (90, 30m, 12h, 7d) as seconds; others (ISO-8601 P7D) go to pydantic."""
    if isinstance(value, str) and (short := _SHORT_DURATION.fullmatch(value.strip())):
        return float(short.group(1)) * _UNIT_S[short.group(2).lower()]
    return value


class IceServer(BaseModel):
    """One STUN or TURN server, as a browser's RTCIceServer writes it."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DH_", env_file=None, extra="ignore")

    # Triton
    triton_url: str = Field(
        "127.0.0.1:8001",
        description="Triton gRPC address: host:port, dns:///name:port (every address of a DNS "
        "name, e.g. a Kubernetes headless service) or a list ip:port,ip:port; requests are "
        "spread over the servers by gRPC's round_robin (orchestrator/triton_url.py)",
    )
    triton_metrics_url: str = Field(
        "http://127.0.0.1:8002/metrics",
        description="Triton's Prometheus endpoint, read for GET /v1/system",
    )
    lipsync_model: str = Field("lipsync", description="name of the lip-sync model on Triton")
    detector_model: str = Field(
        "face_detector", description="name of the face detector model on Triton"
    )
    face_restore_model: str = Field(
        "face_restore", description="optional: jobs may ask for it (restore_face, chaofen)"
    )
    triton_ready_timeout_s: float = Field(120.0, gt=0, description="wait for READY at start-up")
    triton_request_timeout_s: float = Field(60.0, gt=0, description="deadline of one request")
    triton_retry_deadline_s: float = Field(
        10.0, ge=0, description="how long UNAVAILABLE is retried before the call fails"
    )
    triton_max_in_flight: int = Field(8, ge=1, description="requests in flight per client")
    dependency_check_timeout_s: float = Field(
        1.5,
        gt=0,
        description="deadline of one readiness check of Triton, object storage or the job "
        "store: a dependency that answers later counts as down (orchestrator/dependencies.py)",
    )

    # Pipeline
    data_dir: Path = Field(
        Path("data"),
        description="prepared avatars, the SQLite job store (unless DH_DATABASE_URL), and "
        "uploads and results (unless DH_STORAGE_URL: then scratch only)",
    )
    lipsync_batch_size: int = Field(
        32, ge=1, description="frames per lipsync request, capped by the model's max_batch_size"
    )
    # Each batch in flight holds its frames, its tensors and gRPC's copies of them
    # (~35 MB at 32 frames): this bounds a job's memory, not just its concurrency.
    lipsync_batches_in_flight: int = Field(
        4, ge=1, description="lipsync requests one job keeps in flight (bounds its memory)"
    )
    avatar_frame_codec: Literal["jpeg", "raw"] = Field(
        "jpeg",
        description="how prepared avatars keep their frames (raw: exact, ~6 MB a 1080p frame)",
    )
    avatar_jpeg_quality: int = Field(95, ge=50, le=100, description="JPEG quality of stored frames")
    detector_batch_size: int = Field(
        2,
        ge=1,
        description="frames per face_detector request (batching buys nothing on a CPU; small "
        "batches let rendering start sooner)",
    )
    detect_every: int = Field(
        4,
        ge=1,
        description="densest detection stride: where the face moves (neighbouring detections "
        "disagree), every k-th frame is detected; frames between are interpolated",
    )
    detect_max_side: int = Field(
        256,
        ge=64,
        description="frames are shrunk to this longest side for detection (S3FD finds a face "
        "that fills a good part of the frame as well at 256 px, 3x faster than at 480)",
    )
    # S3FD post-processing: the values that reproduce the reference detector's boxes.
    face_score_threshold: float = Field(
        0.8, gt=0, lt=1, description="S3FD score above which a box is a face"
    )
    face_nms_iou: float = Field(
        0.1, gt=0, lt=1, description="S3FD non-maximum suppression: IoU above which boxes merge"
    )
    # Avatar preparation: the adaptive detection stride (orchestrator/pipeline/keyframes.py),
    # chosen by `python -m benchmarks.avatar_prep` (docs/performance.md).
    detect_stride_max: int = Field(
        16,
        ge=1,
        description="sparsest detection stride: while neighbouring detections agree, every "
        "k-th frame (and always the first and last); equal to DH_DETECT_EVERY: a fixed stride",
    )
    detect_agree_iou: float = Field(
        0.9, gt=0, le=1, description="IoU at which two detections count as the same box"
    )
    # Triton's dynamic batcher merges every queued request: more than one in flight makes
    # the frames that rendering waits for wait behind later ones.
    detect_in_flight: int = Field(
        1, ge=1, description="face_detector requests one avatar preparation keeps in flight"
    )
    output_fps: float | None = Field(
        None, gt=0, description="output frame rate; unset: the avatar's"
    )
    video_encoder: str = Field("libx264", description="libx264, or h264_nvenc where usable")
    # Encoder: libx264's settings, chosen by measurement (docs/performance.md, "Encoder";
    # `python -m benchmarks.encoder` prints the table). h264_nvenc ignores them.
    x264_preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"
    ] = Field(
        "superfast",
        description="libx264 preset: speed against bits for one quality (chosen by measurement: "
        'docs/performance.md, "Encoder")',
    )
    x264_crf: float = Field(
        20.0, ge=0, le=51, description="libx264 constant rate factor: lower is better, bigger"
    )
    encode_threads: int = Field(
        0, ge=0, description="libx264 threads per job; 0: libx264's own choice (1.5 per core)"
    )
    work_threads: int = Field(
        4, ge=1, description="threads per job for decode, resize, blend and encode"
    )
    require_gpu: bool = Field(
        False, description="fail at start-up unless NVML sees a GPU (set on GPU hosts)"
    )

    # Service (REST API, job store, scheduler)
    host: str = Field("127.0.0.1", description="address `dh serve`, `dh api`, `dh worker` bind to")
    port: int = Field(8080, ge=0, le=65535, description="port `dh serve` and `dh api` bind to")
    worker_port: int = Field(
        8081,
        ge=0,
        le=65535,
        description="port of `dh worker`'s probe server (/healthz, /readyz, /metrics only)",
    )
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
        256,
        ge=1,
        description="requests answered at once beyond which `dh serve` answers 503 "
        "(a connection counts while it has a request in flight; /healthz and /readyz never)",
    )
    keep_alive_s: int = Field(5, ge=1, description="how long an idle connection is kept")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a connection that has not sent a complete request head this long after "
        "it opened (or after its last answer) is closed",
    )
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
        3600.0, gt=0, description="how often expired jobs and orphaned files are looked for"
    )
    orphan_grace_s: float = Field(
        3600.0,
        gt=0,
        description="files and bucket objects that no job or avatar row owns are removed once "
        "unchanged this long (one replica sweeps at a time)",
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

    # Fleet: object storage (orchestrator/storage/s3.py). Unset: everything on local disk.
    storage_url: str | None = Field(
        None,
        description="s3://bucket/prefix: uploads, prepared avatars and results in an "
        "S3-compatible store (scratch stays local); unset: the data directory",
    )
    s3_endpoint_url: str | None = Field(
        None, description="the S3 API's URL (MinIO, SeaweedFS, ...); unset: AWS's own"
    )
    s3_region: str | None = Field(None, description="the bucket's region; unset: AWS's chain")
    # Secrets: pydantic masks them in repr and logs; unset: the standard AWS variables,
    # shared credentials file or instance role (boto3's credential chain).
    s3_access_key_id: SecretStr | None = Field(
        None,
        description="the store's access key; unset: boto3's chain (AWS_* variables, shared "
        "files, instance role)",
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, description="the store's secret key; unset: boto3's chain, as for the key id"
    )
    s3_result_delivery: Literal["stream", "redirect"] = Field(
        "stream",
        description="GET /v1/jobs/{id}/result: stream through the service (Range passed to "
        "S3), or redirect (307) to a presigned URL the client fetches from the store",
    )
    s3_presign_expiry_s: int = Field(
        900, ge=1, le=7 * 86400, description="lifetime of a presigned result URL"
    )
    s3_timeout_s: float = Field(
        10.0, gt=0, description="connect and read timeout of one S3 request"
    )
    s3_retry_deadline_s: float = Field(
        60.0,
        ge=0,
        description="an S3 call that meets an outage is tried again, with backoff, for this "
        "long from its first failure (uploads, avatar fetches, results); an outage shorter than "
        "this fails no job",
    )

    # Fleet: job store and leases (orchestrator/jobs/store, orchestrator/jobs/leases.py).
    database_url: SecretStr | None = Field(
        None,
        description="postgresql://user:password@host:port/db: the job store shared by every "
        "replica; unset: SQLite in the data directory (one host)",
    )
    store_timeout_s: float = Field(
        1.5,
        gt=0,
        description="a PostgreSQL call not answered within this is an outage: the request "
        "answers 503 at once rather than waiting on a frozen server",
    )
    replica_id: str | None = Field(
        None,
        description="this replica's stable name; a restart under the same name takes back its "
        "own running jobs at once. Unset: host name and data directory",
    )
    lease_s: float = Field(
        20.0, gt=0, description="how long a running job stays this replica's without a heartbeat"
    )
    lease_heartbeat_s: float = Field(
        5.0,
        gt=0,
        description="how often leases are renewed, progress written and expired leases swept "
        "(must be below DH_LEASE_S); a dead replica's job runs again within about both added",
    )

    # Live sessions (orchestrator/live): a prepared avatar streamed over WebRTC from speech.
    max_sessions: int = Field(
        6,
        ge=0,
        description="live sessions this replica holds at once; past it POST /v1/sessions "
        "answers 429 with Retry-After (each session runs a clock, a frame loop and a peer)",
    )
    live_latency_s: float = Field(
        0.4,
        ge=0.3,
        le=5.0,
        description="speech heard now moves the mouth this much later: the lipsync model "
        "looks 0.2 s ahead, the rest is the time a frame has to be inferred and composited",
    )
    live_max_queued_s: float = Field(
        30.0,
        gt=0,
        description="seconds of speech a session holds ahead of what is playing; a WebSocket "
        "client sending faster is held back (the server stops reading; one message larger "
        "than this closes it, code 1008), POST .../speech answers 429",
    )
    live_peer_wait_s: float = Field(
        60.0,
        gt=0,
        description="a session without a connected WebRTC peer for this long ends by itself",
    )
    live_snapshot_s: float = Field(
        1.0,
        gt=0,
        le=10.0,
        description="how often the replica holding a live session writes its stats to the "
        "store (any replica's GET answers from them) and reads a DELETE sent to another "
        "replica; a session not written for 3 times this plus 2 s is taken as ended",
    )
    live_priority: bool = Field(
        True,
        description="live sessions' lipsync requests ask Triton for its highest priority, so "
        "a batch backlog queued at the model does not make a live face stutter (the lipsync "
        "config's priority_levels; batch jobs take its default, lower level)",
    )
    live_frames_per_request: int = Field(
        2,
        ge=1,
        le=16,
        description="consecutive frames a live session sends in one lipsync request (fewer "
        "Triton requests per frame); a request waits for its last frame's audio, so fewer go "
        "together where that wait would take over half the render time DH_LIVE_LATENCY_S "
        "leaves its first frame, and never more than the model's max_batch_size",
    )
    live_frame_cache_mb: int = Field(
        512,
        ge=0,
        description="MiB of decoded avatar pictures the live sessions of this replica keep "
        "in memory, shared by the sessions of an avatar (a 256 px frame is 0.19 MiB, a "
        "1080p one 5.9 MiB); frames past it are read and decoded each time they play",
    )
    ice_servers: list[IceServer] = Field(
        default_factory=list,
        description='STUN/TURN servers offered to WebRTC peers, as JSON: [{"urls": '
        '"turn:turn.example.com:3478", "username": "u", "credential": "p"}]; a fleet behind '
        "NAT needs a TURN server (docs/api.md)",
    )
    ice_host_addresses: list[str] = Field(
        default_factory=list,
        description="the addresses this replica offers as ICE host candidates, e.g. "
        '["10.0.0.5"] or ["127.0.0.1"]; empty: every interface but loopback (aioice\'s default)',
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.lease_heartbeat_s >= self.lease_s:
            raise ValueError(
                f"DH_LEASE_HEARTBEAT_S ({self.lease_heartbeat_s:g}) must be below DH_LEASE_S "
                f"({self.lease_s:g}): leases would expire between heartbeats"
            )
        return self
