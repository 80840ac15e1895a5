"""Whole jobs through Engine, the service's pipeline: frames/s, Triton's executed batch,
avatar preparation and the time to the first encoded frame."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import unwrap
from orchestrator.pipeline.runner import Engine, JobResult, Progress


@dataclass(frozen=True)
class JobsRate:
    jobs: int
    frames: int  # all jobs together
    wall_seconds: float
    triton_batch: float  # frames per execution Triton ran meanwhile (lipsync model)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_seconds


async def jobs_rate(
    engine: Engine, avatar: Path, audio: Path, out_dir: Path, jobs: int
) -> JobsRate:
    """`jobs` jobs on the same avatar and audio, started together; aggregate frames/s.
    A failed job fails the measurement with its own stage and message."""
    model = engine.served.lipsync.name
    before = await engine.client.statistics(model)
    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(engine.generate(avatar, audio, out_dir / f"job-{jobs}-{i}.mp4"))
                for i in range(jobs)
            ]
    except BaseExceptionGroup as failed:
        raise unwrap(failed, "pipeline") from None
    wall = time.perf_counter() - started
    after = await engine.client.statistics(model)
    results: list[JobResult] = [task.result() for task in tasks]
    executions = max(after.execution_count - before.execution_count, 1)
    batch = (after.inference_count - before.inference_count) / executions
    return JobsRate(jobs, sum(r.frames for r in results), wall, batch)


async def preparation_fps(engine: Engine, video: Path) -> tuple[float, int]:
    """(frames/s of preparing `video`, its frame count): a new avatar unless the engine's
    data directory already holds it, then it is the reused (cached) figure."""
    started = time.perf_counter()
    prepared = await engine.prepare_avatar(video)
    return prepared.frame_count / (time.perf_counter() - started), prepared.frame_count


async def first_frame_seconds(engine: Engine, avatar: Path, audio: Path, out: Path) -> float:
    """Seconds from the call to generate to the first encoded frame (frames_done ≥ 1)."""
    first: list[float] = []

    def on_progress(progress: Progress) -> None:
        if progress.frames_done >= 1 and not first:
            first.append(time.perf_counter())

    started = time.perf_counter()
    await engine.generate(avatar, audio, out, on_progress)
    return first[0] - started
