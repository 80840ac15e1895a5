"""Admission: staged inputs become a queued job, or Backlogged with a Retry-After estimate.

Admission is cluster-wide: the backlog bound counts every replica's queued jobs and the
free slots of every live replica, and the store checks and inserts as one step
(`JobStore.admit_job`). The wait a refused client is told comes from how long the jobs
this replica finished lately took. Whoever runs jobs listens for admitted ones
(`on_queued`); the scheduler does.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import Backlogged, BadInput
from orchestrator.jobs.limits import job_deadline_s
from orchestrator.jobs.store import JobRecord, JobStore
from orchestrator.settings import Settings
from orchestrator.storage import Storage

# Retry-After when no job has finished yet to estimate from.
DEFAULT_RETRY_AFTER_S = 5
MAX_RETRY_AFTER_S = 600
RECENT_JOBS = 20  # jobs whose durations estimate the wait


@dataclass(frozen=True)
class JobInputs:
    """Staged inputs of a new job; admission moves them into the job's directory."""

    audio: Path
    audio_seconds: float
    avatar_id: str
    video: Path  # the registered avatar's source, or a staged one-off video
    registered_avatar: bool
    client_code: str | None = None
    webhook_url: str | None = None
    audio_name: str | None = None  # the inputs as the client named them, for messages
    video_name: str | None = None
    watermark: bool = False
    restore_face: bool = False
    face: str = "largest"  # pipeline.faces.FaceChoice, as text


class Admission:
    def __init__(
        self, settings: Settings, store: JobStore, storage: Storage, lock: asyncio.Lock
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        # Held for check-then-insert of a job; Avatars and the scheduler hold it to
        # check-then-delete an avatar, so no job can be queued for one being removed.
        self.lock = lock
        self._recent_seconds: deque[float] = deque(maxlen=RECENT_JOBS)
        self._listeners: list[Callable[[JobRecord], Awaitable[None]]] = []

    def on_queued(self, listener: Callable[[JobRecord], Awaitable[None]]) -> None:
        """`await listener(job)` after each job is admitted."""
        self._listeners.append(listener)

    def job_took(self, seconds: float) -> None:
        """A job this replica ran succeeded after `seconds`: the wait estimate learns."""
        self._recent_seconds.append(seconds)

    async def submit(self, inputs: JobInputs) -> JobRecord:
        """Queues a job; Backlogged when the backlog is full (the caller discards inputs)."""
        async with self.lock:
            if inputs.registered_avatar and await self.store.get_avatar(inputs.avatar_id) is None:
                raise BadInput("request", f"no avatar with id '{inputs.avatar_id}'")
            job_id = uuid.uuid4().hex
            job_dir = self.storage.job_dir(job_id)
            audio = await self.storage.adopt(inputs.audio, job_dir / f"audio{inputs.audio.suffix}")
            video = inputs.video
            if not inputs.registered_avatar:
                video = await self.storage.adopt(video, job_dir / f"video{video.suffix}")
            job = JobRecord(
                id=job_id,
                created_at=time.time(),
                audio_path=str(audio),
                video_path=str(video),
                avatar_id=inputs.avatar_id,
                audio_seconds=inputs.audio_seconds,
                deadline_s=job_deadline_s(inputs.audio_seconds, self.settings),
                registered_avatar=inputs.registered_avatar,
                client_code=inputs.client_code,
                webhook_url=inputs.webhook_url,
                audio_name=inputs.audio_name,
                video_name=inputs.video_name,
                watermark=inputs.watermark,
                restore_face=inputs.restore_face,
                face=inputs.face,
            )
            try:
                admitted = await self.store.admit_job(job, self.settings.max_backlog)
            except BaseException:
                await self.storage.remove_job(job_id)
                raise
            if not admitted.accepted:
                await self.storage.remove_job(job_id)
                retry = self.retry_after_s(admitted.queued, admitted.capacity)
                raise Backlogged(
                    "admission",
                    f"the backlog is full ({admitted.queued} jobs queued, "
                    f"{admitted.running} running); try again in about {retry} s",
                    retry,
                )
        for listener in self._listeners:
            await listener(job)
        return job

    def retry_after_s(self, queued: int, capacity: int | None = None) -> int:
        if not self._recent_seconds:
            return DEFAULT_RETRY_AFTER_S
        mean = sum(self._recent_seconds) / len(self._recent_seconds)
        slots = max(1, capacity or self.settings.max_running_jobs)
        wait = mean * (queued + 1) / slots
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(wait))))
