"""In-memory stand-ins for the scheduler's collaborators, for unit tests of the job life
cycle: a job store (the JobStore calls the scheduler, leases and recorder make), an
engine whose render the test drives with events, and small recorders for storage,
dependencies, metrics, webhooks and admission. Nothing here starts Triton or a database.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from orchestrator.errors import DependencyUnavailable
from orchestrator.jobs.lifecycle import JobState, transition
from orchestrator.jobs.store import (
    AvatarRecord,
    JobProgress,
    JobRecord,
    StoreFull,
    StoreUnavailable,
)
from orchestrator.pipeline.runner import Progress
from orchestrator.storage.base import JobFiles

# How long a test waits for a state before it fails (the states come at once; this only
# bounds a broken test).
WAIT_S = 5.0


class MemoryStore:
    """The parts of JobStore the scheduler uses, on dicts. Reads and writes copy records,
    as a real store does (a caller's record is never the stored one). While `down` (a test
    calls `go_down()` / `come_back()`), every call raises StoreUnavailable, as a real store
    that cannot be reached does; `calls_while_down` counts the refused calls."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.lease_expires: dict[str, float] = {}
        self.replicas: dict[str, int] = {}
        self.events: list[str] = []
        self._listeners: list[Callable[[str], None]] = []
        self._changed = asyncio.Condition()
        self._seq = 0
        self.down, self._full = False, False
        self.calls_while_down = 0
        self._refused = asyncio.Event()

    where = "memory"

    def go_down(self, full: bool = False) -> None:
        """Unreachable from now on; `full`: its disk is full (StoreFull, HTTP 507)."""
        self.down, self._full = True, full

    def come_back(self) -> None:
        self.down = False

    async def refused(self) -> None:
        """Returns once another call was refused while the store is down."""
        self._refused.clear()
        async with asyncio.timeout(WAIT_S):
            await self._refused.wait()

    def _reachable(self) -> None:
        if self.down:
            self.calls_while_down += 1
            self._refused.set()
            if self._full:
                raise StoreFull("store", "disk full: memory cannot write")
            raise StoreUnavailable("store", "memory is unavailable: the test took it down")

    async def _touch(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, job_id: str, check: Callable[[JobRecord], bool]) -> JobRecord:
        """The stored job once `check` holds for it."""
        async with asyncio.timeout(WAIT_S):
            async with self._changed:
                await self._changed.wait_for(
                    lambda: job_id in self.jobs and check(self.jobs[job_id])
                )
        return copy.deepcopy(self.jobs[job_id])

    async def wait_state(self, job_id: str, state: JobState) -> JobRecord:
        return await self.wait_for(job_id, lambda job: job.state is state)

    # jobs

    async def add_job(self, job: JobRecord) -> JobRecord:
        self._reachable()
        self._seq += 1
        job.seq = self._seq
        self.jobs[job.id] = copy.deepcopy(job)
        await self._touch()
        return job

    async def save_job(self, job: JobRecord) -> None:
        self._reachable()
        self._put(job)
        await self._touch()

    def _put(self, job: JobRecord) -> None:
        stored = copy.deepcopy(job)
        if stored.state is not JobState.RUNNING:  # leaving "running" ends the lease
            stored.lease_owner, stored.cancel_requested = None, False
            self.lease_expires.pop(job.id, None)
        self.jobs[job.id] = stored

    async def update_job(
        self, job: JobRecord, was: JobState, owner: str | None = None, attempt: int | None = None
    ) -> bool:
        self._reachable()
        stored = self.jobs.get(job.id)
        if stored is None or stored.state is not was:
            return False
        if not _fenced(stored, owner, attempt):
            return False
        self._put(job)
        await self._touch()
        return True

    async def get_job(self, job_id: str) -> JobRecord | None:
        self._reachable()
        job = self.jobs.get(job_id)
        return copy.deepcopy(job) if job else None

    async def set_job_stage(
        self, job_id: str, stage: str, owner: str | None = None, attempt: int | None = None
    ) -> None:
        self._reachable()
        job = self.jobs.get(job_id)
        if job is not None and job.state is JobState.RUNNING and _fenced(job, owner, attempt):
            job.stage = stage

    async def jobs_in(self, states: tuple[JobState, ...]) -> list[JobRecord]:
        self._reachable()
        found = sorted((j for j in self.jobs.values() if j.state in states), key=lambda j: j.seq)
        return copy.deepcopy(found)

    async def avatar_in_use(self, avatar_id: str) -> bool:
        self._reachable()
        return any(
            job.avatar_id == avatar_id and job.state in (JobState.QUEUED, JobState.RUNNING)
            for job in self.jobs.values()
        )

    async def get_avatar(self, avatar_id: str) -> AvatarRecord | None:
        self._reachable()
        return None

    # leases

    async def claim_job(self, owner: str, lease_s: float) -> JobRecord | None:
        self._reachable()
        queued = await self.jobs_in((JobState.QUEUED,))
        if not queued:
            return None
        job = queued[0]
        transition(job, JobState.RUNNING, None)  # the claim, as the SQL makes it
        job.lease_owner, job.replica, job.stage = owner, owner, "decode"
        job.frames_done, job.frames_per_second, job.cancel_requested = 0, 0.0, False
        self.jobs[job.id] = copy.deepcopy(job)
        self.lease_expires[job.id] = time.monotonic() + lease_s
        await self._touch()
        return job

    async def heartbeat(
        self,
        job_id: str,
        owner: str,
        lease_s: float,
        progress: JobProgress | None,
        attempt: int | None = None,
    ) -> bool | None:
        self._reachable()
        job = self.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING or not _fenced(job, owner, attempt):
            return None
        self.lease_expires[job_id] = time.monotonic() + lease_s
        if progress is not None:
            job.stage, job.frames_done = progress.stage, progress.frames_done
        return job.cancel_requested

    def _stale(self, job: JobRecord, previous: str | None) -> bool:
        if job.state is not JobState.RUNNING:
            return False
        expired = self.lease_expires.get(job.id, 0.0) < time.monotonic()
        return expired or (previous is not None and (job.lease_owner or "").startswith(previous))

    async def stale_jobs(self, previous: str | None) -> list[JobRecord]:
        self._reachable()
        return copy.deepcopy([j for j in self.jobs.values() if self._stale(j, previous)])

    async def update_stale(self, job: JobRecord, previous: str | None) -> bool:
        self._reachable()
        stored = self.jobs.get(job.id)
        if stored is None or not self._stale(stored, previous):
            return False
        if stored.lease_owner != job.lease_owner:
            return False
        self._put(job)
        await self._touch()
        return True

    async def request_cancel(self, job_id: str) -> bool:
        self._reachable()
        job = self.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING:
            return False
        job.cancel_requested = True
        return True

    async def register_replica(self, owner: str, slots: int, ttl_s: float) -> None:
        self._reachable()
        self.replicas[owner] = slots

    async def drop_replica(self, owner: str) -> None:
        self._reachable()
        self.replicas.pop(owner, None)

    async def notify(self, event: str) -> None:
        self._reachable()
        self.events.append(event)
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.call_soon(listener, event)

    def subscribe(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    # what a test does to the store behind the scheduler's back

    def take_over(self, job_id: str, owner: str) -> None:
        """Another replica holds the job's lease now."""
        self.jobs[job_id].lease_owner = owner

    def claim_again(self, job_id: str, owner: str) -> None:
        """The job's lease expired and another replica swept and claimed it: a new
        attempt under `owner`."""
        job = self.jobs[job_id]
        job.lease_owner, job.replica, job.attempts = owner, owner, job.attempts + 1
        self.lease_expires[job_id] = time.monotonic() + 60.0

    def expire_lease(self, job_id: str, owner: str) -> None:
        """The job was running on `owner`, which died: its lease has expired."""
        self.jobs[job_id].lease_owner = owner
        self.lease_expires[job_id] = 0.0


def _fenced(stored: JobRecord, owner: str | None, attempt: int | None) -> bool:
    """Whether a write about a running job may land: still `owner`'s, on `attempt`."""
    if owner is not None and stored.lease_owner != owner:
        return False
    return attempt is None or stored.attempts == attempt


@dataclass
class FakeRender:
    """One call of FakeEngine.generate: the test lets it end (or fail) through `finish`."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False


class FakeEngine:
    """`generate` reports progress (stage "infer", 3 of 10 frames), signals `started`, then
    waits until the test calls `finish()` (optionally with an error to raise) or the render
    is cancelled."""

    def __init__(self) -> None:
        self.renders: list[FakeRender] = []
        self.error: BaseException | None = None
        self._finish = asyncio.Event()
        self.started = asyncio.Event()

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self._finish.set()

    def again(self) -> None:
        """The next render waits for its own `finish()`."""
        self.error = None
        self._finish = asyncio.Event()
        self.started = asyncio.Event()

    async def generate(
        self,
        avatar_video: Path,
        audio: Path,
        out: Path,
        on_progress: Callable[[Progress], None] | None = None,
        watermark: object = None,
        *,
        audio_name: str | None = None,
        avatar_name: str | None = None,
        restore_face: bool = False,
        face: object = None,
    ) -> Any:
        render = FakeRender()
        self.renders.append(render)
        if on_progress is not None:
            on_progress(Progress(stage="infer", frames_done=3, frames_total=10))
        self.started.set()
        try:
            await self._finish.wait()
        except asyncio.CancelledError:
            render.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        out.write_bytes(b"\0" * 100)
        return SimpleNamespace(
            output=out,
            frames=10,
            fps=Fraction(25),
            audio_seconds=0.4,
            avatar=SimpleNamespace(width=64, height=48),
            frames_without_face=0,
            stage_seconds={"infer": 0.1},
            wall_seconds=0.2,
        )


class FakeStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.removed: list[tuple[str, str]] = []
        self.available = True

    @asynccontextmanager
    async def job_files(self, job: JobRecord) -> AsyncIterator[JobFiles]:
        folder = self.root / job.id
        folder.mkdir(parents=True, exist_ok=True)
        yield JobFiles(folder / "audio.wav", folder / "video.mp4", folder / "result.mp4")

    async def remove_job(self, job_id: str) -> None:
        self.removed.append(("job", job_id))

    async def remove_job_inputs(self, job_id: str) -> None:
        self.removed.append(("inputs", job_id))

    async def remove_avatar_cache(self, avatar_id: str) -> None:
        self.removed.append(("avatar", avatar_id))


class FakeDependencies:
    """Dependencies' interface: `ready`, `problems()`, `on_ready`, `wait_ready`,
    `report_down`; a reported outage closes it until the test calls `back()`."""

    def __init__(self, ready: bool = True) -> None:
        self.ready = ready
        self.reported: list[DependencyUnavailable] = []
        self._listeners: list[Callable[[], None]] = []

    def problems(self) -> dict[str, list[str]]:
        return {} if self.ready else {"triton": [e.message for e in self.reported]}

    def on_ready(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    async def wait_ready(self) -> None:
        raise NotImplementedError

    def report_down(self, error: DependencyUnavailable) -> None:
        self.reported.append(error)
        self.ready = False

    def back(self) -> None:
        self.ready = True
        for listener in self._listeners:
            listener()


class FakeAvatars:
    async def wait_prepared(self, avatar_id: str) -> None:
        return None


class FakeMetrics:
    def __init__(self) -> None:
        self.finished: list[str] = []
        self.frames = 0

    def job_finished(self, state: str, seconds: float, stage_seconds: dict[str, float]) -> None:
        self.finished.append(str(state))

    def frames_rendered(self, count: int) -> None:
        self.frames += count


class FakeWebhooks:
    def __init__(self) -> None:
        self.sent: list[JobRecord] = []

    def send(self, job: JobRecord) -> None:
        self.sent.append(copy.deepcopy(job))


class FakeAdmission:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.lock = asyncio.Lock()
        self.took: list[float] = []
        self._listeners: list[Callable[[JobRecord], Awaitable[None]]] = []

    def on_queued(self, listener: Callable[[JobRecord], Awaitable[None]]) -> None:
        self._listeners.append(listener)

    def job_took(self, seconds: float) -> None:
        self.took.append(seconds)

    async def submit(self, job: JobRecord) -> JobRecord:
        await self.store.add_job(job)
        for listener in self._listeners:
            await listener(job)
        return job


def new_job(job_id: str = "j1", deadline_s: float = 60.0, **overrides: Any) -> JobRecord:
    return JobRecord(
        id=job_id,
        created_at=time.time(),
        audio_path="audio.wav",
        video_path="video.mp4",
        avatar_id=f"avatar-{job_id}",
        audio_seconds=0.4,
        deadline_s=deadline_s,
        registered_avatar=False,
        **overrides,
    )
