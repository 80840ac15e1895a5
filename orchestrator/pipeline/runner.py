"""runner: one job's path, decode → avatar → drive → infer → composite → encode.

The streaming stages run as tasks of one TaskGroup connected by bounded queues: a slow
stage slows its producer, memory does not grow with the audio, and the first failure
cancels everything else and is reported with the stage it came from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from orchestrator.blocking import run_blocking
from orchestrator.errors import BadInput, PipelineError, unwrap
from orchestrator.gpu import GpuCensus, GpuProbe, gpu_problems, nvml_census
from orchestrator.gpu import guard as gpu_guard
from orchestrator.models import ServedModels, load_served_models
from orchestrator.pipeline.avatar import Preparations
from orchestrator.pipeline.avatar_cache import Avatar, avatars_dir
from orchestrator.pipeline.avatar_prefix import AvatarPrefix
from orchestrator.pipeline.composite import composite
from orchestrator.pipeline.decode import decode_audio, require_input
from orchestrator.pipeline.drive import drive, output_fps, output_frame_count, pingpong
from orchestrator.pipeline.encode import Mp4Writer, VideoEncoder, Watermark, encode
from orchestrator.pipeline.faces import DEFAULT_CHOICE, FaceChoice, NoSuchFace, chosen_track
from orchestrator.pipeline.infer import BatchTask, FaceRestorer, infer
from orchestrator.pipeline.mel import SAMPLE_RATE, mel_spectrogram
from orchestrator.pipeline.stages import FRAME_QUEUE_DEPTH, DrivenFrame, StageClock, guarded
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient

STAGES = ("decode", "avatar", "drive", "infer", "composite", "encode")


@dataclass
class Progress:
    """What a job has done so far; handed to the progress callback after every frame."""

    stage: str = "decode"
    avatar_frames: int = 0  # avatar frames decoded so far while it is being prepared
    frames_done: int = 0
    frames_total: int = 0
    started: float = field(default_factory=time.monotonic)
    frames_started: float | None = None

    @property
    def frames_per_second(self) -> float:
        if self.frames_started is None or self.frames_done == 0:
            return 0.0
        return self.frames_done / max(time.monotonic() - self.frames_started, 1e-6)

    @property
    def eta_seconds(self) -> float | None:
        rate = self.frames_per_second
        if rate <= 0 or self.frames_total == 0:
            return None
        return (self.frames_total - self.frames_done) / rate


@dataclass(frozen=True)
class JobResult:
    output: Path
    frames: int
    fps: Fraction
    audio_seconds: float
    avatar: Avatar
    frames_without_face: int
    stage_seconds: dict[str, float]
    wall_seconds: float


ProgressCallback = Callable[[Progress], None]


class Engine:
    """The pipeline bound to a Triton client; one per process, shared by every job."""

    def __init__(self, settings: Settings, gpu_probe: GpuProbe = nvml_census) -> None:
        self.settings = settings
        self.gpu_probe = gpu_probe
        self.gpus = GpuCensus((), "not probed yet")
        self.client = TritonClient(
            settings.triton_url,
            request_timeout_s=settings.triton_request_timeout_s,
            retry_deadline_s=settings.triton_retry_deadline_s,
            max_in_flight=settings.triton_max_in_flight,
        )
        self._served: ServedModels | None = None
        # NVML probes (start-up, every readiness check) get a thread of their own: the
        # loop's default executor grows with concurrent callers and never shrinks.
        self._probes = ThreadPoolExecutor(1, thread_name_prefix="dh-probe")
        self.video_codec = VideoEncoder.from_settings(settings)
        self.preparations = Preparations(self.avatars_dir, self.client, settings)

    @property
    def avatars_dir(self) -> Path:
        return avatars_dir(self.settings.data_dir)

    @property
    def served(self) -> ServedModels:
        if self._served is None:
            raise PipelineError("startup", "Engine.start() has not run")
        return self._served

    async def start(self) -> ServedModels:
        """Waits for Triton, checks both models' contracts and where they run against the
        GPUs this host has: any mismatch is a loud start-up failure."""
        served = await load_served_models(self.client, self.settings)
        self.gpus = await self.probe_gpus()
        gpu_guard(self.gpus, served.specs, require_gpu=self.settings.require_gpu)
        self._served = served
        return served

    async def readiness_problems(
        self, census: GpuCensus | None = None, ready_timeout_s: float = 2.0
    ) -> list[str]:
        """Why this engine should not take jobs now ([] when ready): Triton or a model not
        ready, a model's tensors off contract, or a model on the CPU beside idle GPUs.
        `census` saves a second NVML probe when the caller has one; a refused connection
        is retried for `ready_timeout_s`."""
        try:
            served = await load_served_models(
                self.client, self.settings, ready_timeout_s=ready_timeout_s
            )
        except PipelineError as exc:
            return [exc.message]
        if census is None:
            census = await self.probe_gpus()
        return gpu_problems(census, served.specs, require_gpu=self.settings.require_gpu)

    async def probe_gpus(self) -> GpuCensus:
        return await run_blocking(self._probes, self.gpu_probe)

    async def close(self) -> None:
        await self.client.close()
        self._probes.shutdown(wait=True)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @contextmanager
    def _pool(self) -> Iterator[ThreadPoolExecutor]:
        """One pool per job, shut down with it (queued work dropped, running work waited
        for): a cancelled or failed job leaves no thread behind."""
        pool = ThreadPoolExecutor(self.settings.work_threads, thread_name_prefix="dh-job")
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    async def prepare_avatar(
        self,
        video: Path,
        on_frame: Callable[[int], None] | None = None,
        name: str | None = None,
    ) -> Avatar:
        """`name`: the video as its owner knows it (an upload's filename), for messages."""
        with self._pool() as pool:
            return await guarded("avatar", self.preparations.prepare(video, pool, on_frame, name))

    async def generate(
        self,
        avatar_video: Path,
        audio: Path,
        out: Path,
        on_progress: ProgressCallback | None = None,
        watermark: Watermark | None = None,
        *,
        audio_name: str | None = None,
        avatar_name: str | None = None,
        restore_face: bool = False,
        face: FaceChoice = DEFAULT_CHOICE,
    ) -> JobResult:
        """Renders `out` (an MP4) from an avatar video and a speech track; `watermark` is
        drawn on every frame of this job's output. The names are the inputs as the user
        knows them (an upload's filename): messages use them, never the server's paths.
        `restore_face`: the generated faces go through the face_restore model, where one is
        served; without one the job renders unrestored (the API refuses /v1 jobs that ask
        while none is served, so only HeyGem's best-effort `chaofen` gets here).
        `face`: which face to animate; the default (the largest) renders while the avatar is
        still being prepared, another choice once every face of it is known."""
        progress = Progress()
        report = on_progress or (lambda _: None)
        clock = StageClock()
        started = time.monotonic()
        with self._pool() as pool:
            # Both inputs are checked before any work, so a missing avatar is not found
            # only after the audio has been decoded.
            for path, what, name in (
                (audio, "audio", audio_name),
                (avatar_video, "avatar", avatar_name),
            ):
                await guarded("decode", clock.run("decode", pool, require_input, path, what, name))
            report(progress)
            samples = await guarded(
                "decode", clock.run("decode", pool, decode_audio, audio, audio_name)
            )
            progress.stage = "avatar"
            report(progress)
            joined = time.perf_counter()
            async with AsyncExitStack() as stack:
                prepared = await guarded(
                    "avatar",
                    stack.enter_async_context(
                        self.preparations.join(avatar_video, pool, avatar_name)
                    ),
                )
                listener = _avatar_listener(progress, report, clock, joined)
                stack.callback(prepared.listen(listener))
                if prepared.done:
                    listener(prepared)
                source = prepared
                if not face.is_default:
                    # Following a chosen face takes every keyframe's faces: all of them.
                    whole = await guarded("avatar", prepared.result())
                    track = await guarded(
                        "avatar", clock.run("avatar", pool, _chosen_track, whole, face)
                    )
                    source = AvatarPrefix.of(whole, track)
                # Rendering starts now; drive waits for each avatar frame it needs.
                mel = await guarded("drive", clock.run("drive", pool, mel_spectrogram, samples))
                fps = output_fps(prepared.fps, self.settings.output_fps)
                total = output_frame_count(samples.size, fps)
                audio_seconds = samples.size / SAMPLE_RATE
                del samples  # the mel is all that is needed from here on
                progress.frames_total = total
                if progress.stage == "drive":
                    progress.stage = "infer"
                progress.frames_started = time.monotonic()
                report(progress)
                try:
                    output = await self._stream(
                        source,
                        mel,
                        fps,
                        total,
                        audio,
                        out,
                        pool,
                        clock,
                        progress,
                        report,
                        watermark,
                        restore_face,
                    )
                except PipelineError:
                    # A failed preparation is the root cause of whatever rendering then hit.
                    if prepared.error is not None:
                        raise prepared.error from None
                    raise
                avatar = await prepared.result()
        return JobResult(
            output=output,
            frames=total,
            fps=fps,
            audio_seconds=audio_seconds,
            avatar=avatar,
            frames_without_face=_frames_without_face(source, avatar.frame_count, total),
            stage_seconds={stage: clock.seconds.get(stage, 0.0) for stage in STAGES},
            wall_seconds=time.monotonic() - started,
        )

    async def _stream(
        self,
        avatar: AvatarPrefix,
        mel: np.ndarray,
        fps: Fraction,
        total: int,
        audio: Path,
        out: Path,
        pool: ThreadPoolExecutor,
        clock: StageClock,
        progress: Progress,
        report: ProgressCallback,
        watermark: Watermark | None = None,
        restore_face: bool = False,
    ) -> Path:
        """drive → infer → composite → encode, streaming, as one task group."""
        served = self.served
        restorer = None
        if restore_face and served.face_restore is not None:
            restorer = FaceRestorer(
                served.face_restore.name, served.restore_size, served.face_restore.max_batch_size
            )
        batch_size = min(self.settings.lipsync_batch_size, served.lipsync.max_batch_size)
        driven: asyncio.Queue[DrivenFrame | None] = asyncio.Queue(FRAME_QUEUE_DEPTH)
        # Its size is the number of lipsync batches in flight.
        batches: asyncio.Queue[BatchTask | None] = asyncio.Queue(
            self.settings.lipsync_batches_in_flight
        )
        composed: asyncio.Queue[np.ndarray | None] = asyncio.Queue(FRAME_QUEUE_DEPTH)

        def on_frame(done: int) -> None:
            progress.frames_done = done
            report(progress)

        out.parent.mkdir(parents=True, exist_ok=True)
        writer = await guarded(
            "encode",
            clock.run(
                "encode",
                pool,
                Mp4Writer,
                out,
                avatar.width,
                avatar.height,
                fps,
                audio,
                self.video_codec,
                watermark,
            ),
        )
        try:
            with avatar.open_frames() as frames:
                async with asyncio.TaskGroup() as group:
                    group.create_task(
                        guarded(
                            "drive", drive(avatar, frames, mel, fps, total, driven, pool, clock)
                        )
                    )
                    group.create_task(
                        guarded(
                            "infer",
                            infer(
                                driven,
                                batches,
                                group,
                                self.client,
                                served.lipsync.name,
                                served.face_size,
                                batch_size,
                                pool,
                                clock,
                                restorer,
                            ),
                        )
                    )
                    group.create_task(
                        guarded(
                            "composite",
                            composite(batches, composed, pool, clock, served.composite),
                        )
                    )
                    encoded = group.create_task(
                        guarded("encode", encode(composed, writer, pool, clock, on_frame))
                    )
            return encoded.result()
        except BaseExceptionGroup as group_error:
            _abort(writer, pool)
            raise unwrap(group_error, "pipeline") from None
        except BaseException:
            _abort(writer, pool)
            raise


def _abort(writer: Mp4Writer, pool: ThreadPoolExecutor) -> None:
    """Closes the writer once no pool thread can still be inside it: a cancelled await does
    not stop its thread, and closing the containers under a running mux or audio decode
    crashes libavformat (a segfault, seen when a job is cancelled mid-encode)."""
    pool.shutdown(wait=True, cancel_futures=True)
    writer.abort()


def _avatar_listener(
    progress: Progress, report: ProgressCallback, clock: StageClock, started: float
) -> Callable[[AvatarPrefix], None]:
    """Reports the avatar's preparation in the job's progress; the job's stage stays
    "avatar" until preparation ends, though frames may be rendered meanwhile."""

    def listener(prefix: AvatarPrefix) -> None:
        progress.avatar_frames = prefix.frames_decoded
        if prefix.avatar is not None and progress.stage == "avatar":
            clock.add("avatar", time.perf_counter() - started)
            progress.stage = "infer" if progress.frames_total else "drive"
        report(progress)

    return listener


def _chosen_track(avatar: Avatar, face: FaceChoice) -> np.ndarray:
    """The per-frame boxes of the face a job chose; a choice naming none is bad input."""
    try:
        return chosen_track(avatar.faces, face, avatar.frame_count, avatar.width, avatar.height)
    except NoSuchFace as exc:
        raise BadInput("avatar", f"face {face} names no face of the avatar: {exc}") from None


def _frames_without_face(source: AvatarPrefix, frame_count: int, total: int) -> int:
    """Output frames showing an avatar frame where the face rendered (the default or the
    chosen one) is not there: passed through unchanged."""
    faces = [source.box(i) is not None for i in range(frame_count)]
    return sum(1 for i in range(total) if not faces[pingpong(i, frame_count)])
