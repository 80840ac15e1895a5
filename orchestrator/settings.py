"""The one settings object: environment variables prefixed DH_, read once at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
