"""How close a job comes to the hardware's limit, and to the architecture it replaces.

    python -m benchmarks.limits [--quick] [--triton-url HOST:PORT] [--lipsync-model NAME]

One run, one avatar (the generated astronaut) and one speech track, at 512x512 and at
1920x1080. It measures the lip-sync model alone (Triton at saturation, onnxruntime in this
process at batch 1), the codec alone (frame store, composite, encode), their combined
limit, whole jobs through Engine, the naive sequential loop, 1, 2 and 4 jobs at once, and
avatar preparation. It prints a table, then one JSON line with every figure.

Without --triton-url it starts a local CPU Triton serving the production models plus the
Wav2Lip-96 architecture with random weights (the real model's compute). A Triton whose
models break the pipeline's contracts is refused (exit 2); a failed job ends the run with
its stage and message and no figure (exit 1). DH_* settings apply (batch size, in-flight
requests, work threads, encoder), as they would to the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import codec_rate, job_rate, model_rate
from benchmarks.common import WAV2LIP_MODEL, triton_for_benchmark, wav2lip_onnx
from benchmarks.report import Figures, render_table
from orchestrator.errors import ContractMismatch, PipelineError
from orchestrator.pipeline.encode import VideoEncoder
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video

# The avatar's own size and the common HD size (width, height).
SIZES = {"512": (512, 512), "1080": (1920, 1080)}
AVATAR_FPS = 25
# Default run: a 10 s avatar (the first-frame case) and 8 s of speech, so that
# the whole run stays near 10 minutes on two cores. --quick: a smoke run of seconds.
DEFAULT_AVATAR_SECONDS, DEFAULT_AUDIO_SECONDS = 10.0, 8.0
QUICK_AVATAR_SECONDS, QUICK_AUDIO_SECONDS = 1.0, 1.0
# Model only, default run: ten batches of 32, enough for every instance to be busy a while.
DEFAULT_MODEL_FRAMES = 320
DEFAULT_ROUNDS = 2
CONCURRENCY = (1, 2, 4)
# A remote Triton that does not become ready within this is reported, not waited for.
DEFAULT_READY_TIMEOUT_S = 60.0
GPU_KIND = "KIND_GPU"
# The stage of errors raised while the engine checks Triton and its models.
STARTUP = "startup"
EXIT_FAILED_JOB, EXIT_REFUSED = 1, 2


@dataclass(frozen=True)
class Plan:
    avatar_seconds: float
    audio_seconds: float
    lipsync_model: str
    gpu_host: bool | None  # None: detected from the model's instance kind
    model_frames: int  # frames sent in the model-only measurement; 0: as many as a job has
    # Rounds of the throughput figures; each figure is the best of its rounds, the usual
    # defence of a benchmark against bursts of load from other processes.
    rounds: int = 1
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S


def limit_fps(model: float, codec: float, gpu: bool) -> float:
    """What model and codec allow together: the slower of the two where the model has a
    GPU of its own, else their rates combined as work sharing one CPU."""
    return min(model, codec) if gpu else 1.0 / (1.0 / model + 1.0 / codec)


def _step(message: str) -> None:
    print(f"[limits] {message}", file=sys.stderr, flush=True)


async def measure(settings: Settings, work: Path, plan: Plan) -> Figures:
    """Every figure of one run against the Triton `settings` name; raises ContractMismatch
    for a Triton off contract and PipelineError for any failed job."""
    audio = work / "speech.wav"
    write_audio(audio, voiced_speech(plan.audio_seconds), 16000)
    videos = {}
    for label, size in SIZES.items():
        videos[label] = work / f"avatar-{label}.mp4"
        write_avatar_video(videos[label], seconds=plan.avatar_seconds, fps=AVATAR_FPS, size=size)
    figures = Figures()
    encoder = VideoEncoder.from_settings(settings)
    async with Engine(settings) as engine:
        served = engine.served
        kinds = {group.kind for group in served.lipsync.instance_groups}
        gpu = plan.gpu_host if plan.gpu_host is not None else GPU_KIND in kinds
        figures.describe(
            lipsync_model=served.lipsync.name,
            lipsync_architecture=(
                "Wav2Lip-96, random weights"
                if served.lipsync.name == WAV2LIP_MODEL
                else f"as served ({served.lipsync.platform})"
            ),
            instance_kinds=",".join(sorted(kinds)) or "unknown",
            limit_assumes="model on GPU: min(model, codec)"
            if gpu
            else "model and codec share the CPU: 1/(1/model + 1/codec)",
            encoder=f"{encoder.codec} {encoder.preset} crf {encoder.crf:g}",
        )
        batch = min(settings.lipsync_batch_size, served.lipsync.max_batch_size)
        frames = round(plan.audio_seconds * AVATAR_FPS)
        figures.add(frames=frames, lipsync_batch_size=batch)

        onnx_file = wav2lip_onnx()
        _step("model only: onnxruntime in-process, batch 1")
        figures.add(
            model_ort_batch1_fps=await asyncio.to_thread(
                model_rate.ort_batch1_fps, onnx_file, frames
            ),
            model_in_flight=settings.triton_max_in_flight,
        )
        avatars = {}
        for label, video in videos.items():
            _step(f"avatar preparation {label}: new")
            fps, _ = await job_rate.preparation_fps(engine, video)
            figures.add(**{f"avatar_prep_fps_{label}": fps})
            avatars[label] = await engine.prepare_avatar(video)
        _step("avatar preparation 512: reused")
        reused, _ = await job_rate.preparation_fps(engine, videos["512"])
        figures.add(avatar_prep_fps=figures["avatar_prep_fps_512"], avatar_reused_fps=reused)

        for round_ in range(plan.rounds):
            _step(f"round {round_ + 1} of {plan.rounds}: model only, Triton at saturation")
            figures.best(
                model_triton_fps=await model_rate.triton_saturated_fps(
                    engine.client,
                    served.lipsync.name,
                    served.face_size,
                    batch,
                    settings.triton_max_in_flight,
                    plan.model_frames or frames,
                )
            )
            for label, video in videos.items():
                _step(f"round {round_ + 1}: codec only, e2e and naive at {label}")
                codec = await asyncio.to_thread(
                    codec_rate.codec_fps,
                    avatars[label],
                    audio,
                    work / f"codec-{label}.mp4",
                    frames,
                    served.face_size,
                    encoder,
                    settings.work_threads,
                )
                e2e = await job_rate.jobs_rate(engine, video, audio, work / f"e2e-{label}", 1)
                naive = await asyncio.to_thread(
                    codec_rate.naive_fps,
                    video,
                    avatars[label],
                    audio,
                    work / f"naive-{label}.mp4",
                    frames,
                    onnx_file,
                    encoder,
                )
                figures.best(**{f"codec_fps_{label}": codec, f"naive_fps_{label}": naive})
                figures.best_with(
                    f"e2e_fps_{label}", e2e.fps, {f"e2e_triton_batch_{label}": e2e.triton_batch}
                )
            # Alternate the order so that a burst of load elsewhere does not always land on
            # the same count.
            order = CONCURRENCY if round_ % 2 == 0 else tuple(reversed(CONCURRENCY))
            for jobs in order:
                _step(f"round {round_ + 1}: {jobs} simultaneous job(s) at 512")
                rate = await job_rate.jobs_rate(
                    engine, videos["512"], audio, work / f"concurrent-{jobs}", jobs
                )
                figures.best_with(
                    f"concurrency_{jobs}_fps",
                    rate.fps,
                    {f"concurrency_{jobs}_batch": rate.triton_batch},
                )

        for label in videos:
            limit = limit_fps(figures["model_triton_fps"], figures[f"codec_fps_{label}"], gpu)
            e2e_fps = figures[f"e2e_fps_{label}"]
            figures.add(
                **{
                    f"limit_fps_{label}": limit,
                    f"ratio_limit_{label}": e2e_fps / limit,
                    f"ratio_naive_{label}": e2e_fps / figures[f"naive_fps_{label}"],
                }
            )
        for jobs in CONCURRENCY[1:]:
            ratio = figures[f"concurrency_{jobs}_fps"] / figures["concurrency_1_fps"]
            figures.add(**{f"ratio_concurrency_{jobs}": ratio})

    _step("first encoded frame, new avatar at 512")
    fresh = settings.model_copy(update={"data_dir": work / "data-first-frame"})
    async with Engine(fresh) as engine:
        figures.add(
            first_frame_s=await job_rate.first_frame_seconds(
                engine, videos["512"], audio, work / "first-frame.mp4"
            )
        )
    return figures


def run(
    plan: Plan, triton_url: str | None, ort_threads: int | None, out: Callable[[str], None]
) -> int:
    """The whole bench; returns the exit status. `out` receives the table and the JSON line."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dh-limits-") as scratch:
        work = Path(scratch)
        with triton_for_benchmark(work, triton_url, wav2lip=True, ort_threads=ort_threads) as (
            grpc_url,
            _,
        ):
            settings = Settings(
                triton_url=grpc_url,
                lipsync_model=plan.lipsync_model,
                data_dir=work / "data",
                triton_ready_timeout_s=plan.ready_timeout_s,
            )
            try:
                figures = asyncio.run(measure(settings, work, plan))
            except ContractMismatch as exc:
                print(
                    f"benchmarks.limits: refused: this Triton serves different model "
                    f"contracts: {exc.message}",
                    file=sys.stderr,
                )
                return EXIT_REFUSED
            except PipelineError as exc:
                if exc.stage == STARTUP:
                    print(f"benchmarks.limits: refused: {exc.message}", file=sys.stderr)
                    return EXIT_REFUSED
                print(
                    f"benchmarks.limits: a job failed in stage '{exc.stage}': {exc.message}; "
                    "no figures are reported from this run",
                    file=sys.stderr,
                )
                return EXIT_FAILED_JOB
    figures.add(bench_seconds=time.perf_counter() - started)
    out(render_table(figures))
    out(json.dumps(figures.as_json()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.limits", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s clips: a smoke run")
    parser.add_argument("--triton-url", help="measure this Triton instead of starting one")
    parser.add_argument(
        "--lipsync-model",
        default=WAV2LIP_MODEL,
        help=f"the lip-sync model to measure (default {WAV2LIP_MODEL}, served beside the "
        "production models by the local Triton; on a remote server, the name it serves)",
    )
    host = parser.add_mutually_exclusive_group()
    host.add_argument(
        "--gpu-host",
        dest="gpu_host",
        action="store_const",
        const=True,
        help="assume the model runs on a GPU: limit = min(model, codec)",
    )
    host.add_argument(
        "--cpu-host",
        dest="gpu_host",
        action="store_const",
        const=False,
        help="assume model and codec share the CPU",
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds of throughput figures, best kept (default 2, quick 1)"
    )
    parser.add_argument("--avatar-seconds", type=float, help="length of the avatar video")
    parser.add_argument("--audio-seconds", type=float, help="length of the speech track")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT_S,
        help="seconds to wait for Triton and the models to be ready",
    )
    parser.add_argument("--ort-threads", type=int, help="onnxruntime threads per local instance")
    args = parser.parse_args(argv)
    quick = args.quick
    plan = Plan(
        avatar_seconds=args.avatar_seconds
        or (QUICK_AVATAR_SECONDS if quick else DEFAULT_AVATAR_SECONDS),
        audio_seconds=args.audio_seconds
        or (QUICK_AUDIO_SECONDS if quick else DEFAULT_AUDIO_SECONDS),
        lipsync_model=args.lipsync_model,
        gpu_host=args.gpu_host,
        model_frames=0 if quick else DEFAULT_MODEL_FRAMES,
        rounds=args.rounds or (1 if quick else DEFAULT_ROUNDS),
        ready_timeout_s=args.ready_timeout,
    )
    return run(plan, args.triton_url, args.ort_threads, lambda line: print(line, flush=True))


if __name__ == "__main__":
    raise SystemExit(main())
