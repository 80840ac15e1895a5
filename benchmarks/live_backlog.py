"""benchmarks.live --batch-backlog: live sessions while batch jobs keep the lipsync
model's queue full, with DH_LIVE_PRIORITY on and off, and the same at Triton alone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import model_rate
from benchmarks.live_client import (
    AVATAR_FPS,
    live_round,
)
from benchmarks.live_figures import (
    percentile,
    render_row,
    step,
)
from benchmarks.live_servers import (
    POLL_S,
    READY_DEADLINE_S,
    register_avatar,
    serve,
)
from orchestrator.models import load_served_models
from orchestrator.settings import Settings
from orchestrator.triton import DEFAULT_PRIORITY, HIGHEST_PRIORITY, ModelSpec, TritonClient
from synthmedia.audio import continuous_speech, write_audio
from synthmedia.avatar import mouth_region

# Speech per batch job of --batch-backlog: longer than a round, so the jobs' lipsync
# requests queue at Triton for all of it (the JSON says how many still ran at its end).
BACKLOG_SPEECH_S = 60.0


def _job_states(client: httpx.Client, job_ids: list[str]) -> list[str]:
    return [str(client.get(f"/v1/jobs/{job_id}").json()["state"]) for job_id in job_ids]


@contextlib.contextmanager
def batch_backlog(
    base: str, api_key: str, avatar_id: str, audio: Path, jobs: int
) -> Iterator[Callable[[], int]]:
    """`jobs` batch jobs on the avatar, submitted and rendering (all running) when this
    enters; yields a function counting those still running; cancels them on leaving."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base, headers=headers, timeout=60.0) as client:
        job_ids = []
        for _ in range(jobs):
            reply = client.post(
                "/v1/jobs",
                files={"audio": (audio.name, audio.read_bytes())},
                data={"avatar_id": avatar_id},
            )
            reply.raise_for_status()
            job_ids.append(str(reply.json()["id"]))
        deadline = time.monotonic() + READY_DEADLINE_S
        while (states := _job_states(client, job_ids)).count("running") < jobs:
            if any(state not in ("queued", "running") for state in states):
                raise SystemExit(f"a backlog job stopped before the round: {states}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the backlog jobs did not all start: {states}")
            time.sleep(POLL_S)
        try:
            yield lambda: _job_states(client, job_ids).count("running")
        finally:
            for job_id in job_ids:
                with contextlib.suppress(httpx.HTTPError):
                    client.delete(f"/v1/jobs/{job_id}")


async def live_requests_behind_backlog(
    settings: Settings, frames_per_request: int, seconds: float
) -> dict[str, Any]:
    """Triton alone: the round trip of a live session's lipsync requests (one every
    `frames_per_request` frame periods) while a batch client keeps its requests of
    DH_LIPSYNC_BATCH_SIZE frames queued at the model (DH_TRITON_MAX_IN_FLIGHT of them), with
    the live requests at Triton's highest priority and at the default. No orchestrator and
    no codec: what the priority does to the model's queue, apart from CPU shared with them."""
    async with TritonClient(settings.triton_url) as probe:
        served = await load_served_models(probe, settings)
    figures: dict[str, Any] = {"live_request_frames": frames_per_request}
    for label, priority in (("on", HIGHEST_PRIORITY), ("off", DEFAULT_PRIORITY)):
        round_trips = await _round_trips_behind_backlog(
            settings, served.lipsync, served.face_size, frames_per_request, priority, seconds
        )
        figures[f"live_request_p50_s_priority_{label}"] = percentile(round_trips, 50)
        figures[f"live_request_p95_s_priority_{label}"] = percentile(round_trips, 95)
    return figures


async def _round_trips_behind_backlog(
    settings: Settings,
    lipsync: ModelSpec,
    face_size: int,
    frames_per_request: int,
    priority: int,
    seconds: float,
) -> list[float]:
    batch_inputs = model_rate.lipsync_inputs(
        min(settings.lipsync_batch_size, lipsync.max_batch_size), face_size
    )
    live_inputs = model_rate.lipsync_inputs(frames_per_request, face_size)
    period_s = frames_per_request / AVATAR_FPS
    in_flight = settings.triton_max_in_flight
    stop, flowing = asyncio.Event(), asyncio.Event()
    round_trips: list[float] = []
    async with (
        TritonClient(settings.triton_url, max_in_flight=in_flight) as bulk,
        TritonClient(settings.triton_url, priority=priority) as live,
    ):

        async def backlog() -> None:
            while not stop.is_set():
                await bulk.infer(lipsync.name, batch_inputs, ["pred"])
                flowing.set()

        async def one() -> None:
            started = time.perf_counter()
            await live.infer(lipsync.name, live_inputs, ["pred"])
            round_trips.append(time.perf_counter() - started)

        async with asyncio.TaskGroup() as group:
            for _ in range(in_flight):
                group.create_task(backlog())
            await flowing.wait()  # a batch answered: the queue holds the rest behind it
            begin = time.perf_counter()
            for index in range(int(seconds / period_s)):
                # The live requests leave on the clock, as a session's planner sends them.
                await asyncio.sleep(max(0.0, begin + index * period_s - time.perf_counter()))
                group.create_task(one())
            stop.set()
    return round_trips


def backlog_rounds(
    size: int,
    jobs: int,
    repeats: int,
    env: dict[str, str],
    work: Path,
    video: Path,
    pcm: np.ndarray,
    n: int,
    out: Callable[[str], None],
) -> dict[str, Any]:
    """N sessions (avatar `video`, `size` px) while `jobs` batch jobs render, `repeats`
    rounds with DH_LIVE_PRIORITY on and as many off (a fresh `dh serve` each, on the same
    Triton)."""
    audio = work / "backlog.wav"
    write_audio(audio, continuous_speech(BACKLOG_SPEECH_S, seed=1))
    region = mouth_region((size, size))
    rounds: dict[str, Any] = {"jobs": jobs, "sessions": n}
    for priority in (True, False):
        label = "on" if priority else "off"
        settings = {
            **env,
            "DH_LIVE_PRIORITY": str(priority).lower(),
            # Every job renders at once: the backlog is at Triton, not in the job queue.
            "DH_MAX_RUNNING_JOBS": str(max(1, jobs)),
            "DH_MAX_SESSIONS": str(n),
            "DH_DATA_DIR": str(work / f"server-data-priority-{label}"),
        }
        with serve(settings, work / f"serve-priority-{label}.log") as base:
            avatar_id = register_avatar(base, video)
            results, still = [], []
            for _ in range(repeats):
                step(f"{n} live session(s), {jobs} batch job(s), priority {label}")
                with batch_backlog(base, "", avatar_id, audio, jobs) as running:
                    result = asyncio.run(live_round([(base, avatar_id)], "", pcm, n, region))
                    still.append(running())
                out(
                    f"{render_row('backlog', result)}  priority {label}, "
                    f"{still[-1]} job(s) still running"
                )
                results.append(result)
        rounds[f"late_priority_{label}"] = float(np.mean([r.late for r in results]))
        rounds[f"rounds_priority_{label}"] = [asdict(r) for r in results]
        # Fewer than J at a round's end: the backlog did not cover all of that round.
        rounds[f"jobs_running_after_priority_{label}"] = still
    return rounds
