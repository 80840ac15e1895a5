"""Live sessions at scale: how many talk at once in real time, against a naive loop.

    python -m benchmarks.live [--quick] [--triton-url HOST:PORT] [--lipsync-model NAME]
                              [--seconds S] [--size PX] [--max-sessions N]
                              [--server-url URL [--avatar-id ID] [--api-key KEY]]
                              [--batch-backlog J [--backlog-sessions N] [--backlog-repeats R]]
                              [--frames-per-request K] [--replicas R]

One run, one local Triton (started here unless --triton-url names one), and `dh serve`
processes started here against it, one per core by default (--replicas): one process's
interpreter carries the Python half of every session it holds (aiortc's RTP and SRTP, its
event loop, the gRPC client) on one core at most, so a host is served as a fleet on one
machine serves it, sessions spread round robin. For N sessions at once, each streams
continuous speech (no pause over 0.2 s) in real time up its WebSocket as 16 kHz PCM and
receives its frames over WebRTC with an aiortc client. For each N it prints the aggregate
frames per second, the late-frame percentage and the latency from audio in to frame out
(p50, p95); then the largest N with < 1 % late frames, the same for the naive architecture
(benchmarks/naive_live.py: a server whose sessions are each a thread calling onnxruntime
in process at batch 1, with the same WebSocket in and WebRTC out, measured by the same
client), and the ratio of the frames per second the sessions sustain to the limit
1/(1/model + 1/codec): model is the lip-sync model alone at saturation on Triton; codec is
the live path's own per-frame work alone, no model: the cores over the CPU seconds per
frame it spent in the round of the largest passing N, counted in the server's process
(frame read, mel window, composite, the WebRTC video and audio encoders, RTP and SRTP, its
gRPC client) and in the receiving side's transport, which shares this machine (Triton's
process, the model's side, is not counted). At that load, because a session's fixed costs
(its clock, its tasks, packets per second) weigh per frame by how many share the machine:
taken at fewer sessions, the limit would be one this load never had, and the ratio could
pass 1. Both are measured in this run. (An encoder-only rate, composite and VP8 on
identical frames, is reported as codec_encoder_fps: VP8 all but skips a picture that does
not change, so it bounds nothing.) Then the whole machine's CPU per frame of each
architecture at the same CODEC_SESSIONS sessions, Triton's processes included for the live
path: the steadier comparison, since near capacity a single stall of the machine decides
whether a round passes. The last line is one JSON object with every figure.

With --batch-backlog J, N sessions (--backlog-sessions, default the largest passing N, at
least 1) run R more times (--backlog-repeats) on each of two fresh `dh serve`s while J
batch jobs (BACKLOG_SPEECH_S of speech each, all rendering at once, submitted anew each
round) keep the lipsync model's queue full: one with DH_LIVE_PRIORITY on (live frames ask
Triton for its highest priority), one with it off; the mean late-frame fraction of each
goes into the JSON under "backlog", with the round trip of live requests behind a batch
client's backlog at Triton alone (no orchestrator, no codec), priority on and off.
--frames-per-request sets the servers' DH_LIVE_FRAMES_PER_REQUEST (default: theirs).
--replicas R sets how many `dh serve` processes share the live sessions on the one Triton
(default: the cores; 1 with --server-url). The naive server stays one process, as that
architecture runs (its sessions' threads spend their time in onnxruntime, outside the
interpreter's lock), and the CPU-per-frame round uses the first server.

Latency is read from the pictures: a session is silent until its speech starts and the
avatar is still, so the delay from the first loud block sent to the first frame whose
mouth changes is the constant part, and each frame's arrival jitter the rest. A model
whose mouth does not change with speech leaves the latency unmeasured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import model_rate
from benchmarks.codec_rate import fixed_face
from benchmarks.common import REPO, WAV2LIP_MODEL, triton_for_benchmark, wav2lip_onnx
from benchmarks.live_backlog import (
    backlog_rounds,
    live_requests_behind_backlog,
)
from benchmarks.live_client import (
    AVATAR_FPS,
    CODEC_SESSIONS,
    CpuPerFrame,
    cpu_per_frame,
    live_round,
)
from benchmarks.live_figures import (
    LATE_LIMIT,
    Round,
    largest_passing,
    render_row,
    search,
    step,
    summary,
)
from benchmarks.live_servers import (
    model_side_pids,
    register_avatar,
    serve,
    serve_naive,
)
from orchestrator.live.tracks import video_frame
from orchestrator.pipeline.avatar_cache import Avatar
from orchestrator.pipeline.composite import composite_frame
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from synthmedia.audio import continuous_speech
from synthmedia.avatar import mouth_region, write_avatar_video

AVATAR_SECONDS = 4.0
DEFAULT_SIZE = 256
# Speech streamed per session; quick: a smoke run.
DEFAULT_SECONDS, QUICK_SECONDS = 12.0, 4.0
DEFAULT_MAX_SESSIONS = 32
EXIT_REFUSED = 2


def codec_rate(
    live_rounds: dict[int, Round], live_cpu: CpuPerFrame | None, encoder_fps: float
) -> float:
    """The live path's rate alone: the machine's cores over its CPU seconds per frame, at
    the load of the largest passing N (fixed costs per session, per second and per packet
    spread over that many frames, as in the round the ratio is taken of); at
    CODEC_SESSIONS sessions where no round passed or none was measured; the encoder's
    rate where neither was."""
    best = live_rounds.get(largest_passing(live_rounds))
    cores = os.cpu_count() or 1
    if best is not None and best.cpu_s_per_frame:
        return cores / best.cpu_s_per_frame
    return cores / live_cpu.path if live_cpu else encoder_fps


def _encoder() -> Any:
    from aiortc.codecs.vpx import Vp8Encoder  # what aiortc negotiates with browsers first

    return Vp8Encoder()


def _box(avatar: Avatar, index: int) -> tuple[int, int, int, int] | None:
    row = avatar.boxes[index]
    return None if row[0] < 0 else (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def codec_fps(avatar: Avatar, face_size: int, frames: int, threads: int) -> float:
    """Frames/s of the encoder part of the live path alone: an avatar frame, a generated
    face composited in, the frame through the WebRTC video encoder; one encoder per thread
    (per session), `threads` at once as sessions would run. On a still avatar and a fixed
    face every frame is the same picture, which VP8 all but skips: an upper bound, kept as
    `codec_encoder_fps`; the limit takes the live path's measured CPU per frame."""
    face = fixed_face(face_size)

    def work(count: int) -> None:
        encoder = _encoder()
        with avatar.open_frames() as store:
            for index in range(count):
                at = index % avatar.frame_count
                frame = store.read(at)
                box = _box(avatar, at)
                if box is not None:
                    frame = composite_frame(frame, box, face)
                encoder.encode(video_frame(frame, index, Fraction(AVATAR_FPS)))

    each = max(1, frames // threads)
    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(each,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return each * threads / (time.perf_counter() - started)


@dataclass(frozen=True)
class Plan:
    seconds: float
    size: int
    lipsync_model: str
    max_sessions: int
    model_frames: int
    # A running service to measure instead of a `dh serve` started here, and its avatar
    # (the astronaut avatar of --size, prepared there) and key.
    server_url: str | None = None
    avatar_id: str | None = None
    api_key: str = ""
    # Batch jobs rendering during the backlog rounds (0: none run), the sessions then
    # (None: the largest passing N) and the rounds of each priority setting.
    batch_backlog: int = 0
    backlog_sessions: int | None = None
    backlog_repeats: int = 1
    # The servers' DH_LIVE_FRAMES_PER_REQUEST (None: their default).
    frames_per_request: int | None = None
    # `dh serve` processes on the one Triton that the live sessions are spread over.
    replicas: int = 1


def _onnx_file(model: str) -> Path:
    if model == WAV2LIP_MODEL:
        return wav2lip_onnx()
    return REPO / "model_repository" / model / "1" / "model.onnx"


def run(plan: Plan, triton_url: str | None, out: Callable[[str], None]) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dh-live-") as scratch:
        work = Path(scratch)
        video = work / "avatar.mp4"
        size = (plan.size, plan.size)
        # Still: the avatar's own motion would move the mouth region as much as speech.
        write_avatar_video(video, seconds=AVATAR_SECONDS, fps=AVATAR_FPS, size=size, still=True)
        speech = continuous_speech(plan.seconds)
        pcm = np.round(np.clip(speech, -1, 1) * 32767).astype(np.int16)
        with triton_for_benchmark(work, triton_url, wav2lip=True) as (grpc_url, _):
            settings = Settings(
                triton_url=grpc_url, lipsync_model=plan.lipsync_model, data_dir=work / "data"
            )
            step("model alone at saturation, codec alone, avatar prepared in process")
            model_fps, encoder_fps, avatar, mode = asyncio.run(_alone(settings, video, plan))
            env = {
                "DH_TRITON_URL": grpc_url,
                "DH_LIPSYNC_MODEL": plan.lipsync_model,
                "DH_DATA_DIR": str(work / "server-data"),
                # The search goes up to --max-sessions: the server must take that many.
                "DH_MAX_SESSIONS": str(plan.max_sessions),
            }
            if plan.frames_per_request is not None:
                env["DH_LIVE_FRAMES_PER_REQUEST"] = str(plan.frames_per_request)
            with contextlib.ExitStack() as stack:
                base = plan.server_url or stack.enter_context(serve(env, work / "serve.log"))
                # More processes on the one Triton: each its own data directory and avatar.
                others = [
                    stack.enter_context(
                        serve(
                            {**env, "DH_DATA_DIR": str(work / f"server-data-{r}")},
                            work / f"serve-{r}.log",
                        )
                    )
                    for r in range(1, plan.replicas)
                ]
                headers = {"Authorization": f"Bearer {plan.api_key}"} if plan.api_key else {}
                with httpx.Client(base_url=base, headers=headers, timeout=10.0) as probe:
                    if "/v1/sessions" not in probe.get("/openapi.json").json()["paths"]:
                        print(
                            f"benchmarks.live: refused: {base} has no /v1/sessions",
                            file=sys.stderr,
                        )
                        return EXIT_REFUSED
                avatar_id = plan.avatar_id or register_avatar(base, video, plan.api_key)
                targets = [(base, avatar_id)]
                targets += [(url, register_avatar(url, video, plan.api_key)) for url in others]
                region = mouth_region(size)

                def live(n: int) -> Round:
                    step(f"{n} live session(s) on {len(targets)} server process(es)")
                    result = asyncio.run(live_round(targets, plan.api_key, pcm, n, region))
                    out(render_row("live", result))
                    return result

                live_rounds = search(live, plan.max_sessions)
                step("CPU per frame of the live path, outside the model and in all")
                live_cpu = cpu_per_frame(
                    base, plan.api_key, avatar_id, pcm, region, model_side_pids()
                )
            codec = codec_rate(live_rounds, live_cpu, encoder_fps)

            backlog = None
            if plan.batch_backlog and plan.server_url:
                step("--batch-backlog needs the dh serve started here (it sets its settings)")
            elif plan.batch_backlog:
                n = plan.backlog_sessions or max(1, largest_passing(live_rounds))
                backlog = backlog_rounds(
                    plan.size,
                    plan.batch_backlog,
                    plan.backlog_repeats,
                    env,
                    work,
                    video,
                    pcm,
                    n,
                    out,
                )
                step("live requests behind a batch backlog at Triton alone")
                alone = asyncio.run(
                    live_requests_behind_backlog(
                        settings,
                        plan.frames_per_request or settings.live_frames_per_request,
                        plan.seconds,
                    )
                )
                out(
                    "Triton alone, live request round trip behind a batch backlog: p95 "
                    f"{alone['live_request_p95_s_priority_on']:.3f} s priority on, "
                    f"{alone['live_request_p95_s_priority_off']:.3f} s off"
                )
                backlog.update(alone)

            onnx_file = _onnx_file(plan.lipsync_model)
            with serve_naive(onnx_file, avatar, mode, work / "naive.log") as naive_base:

                def naive(n: int) -> Round:
                    step(f"{n} naive session thread(s)")
                    result = asyncio.run(live_round([(naive_base, "naive")], "", pcm, n, region))
                    out(render_row("naive", result))
                    return result

                naive_rounds = search(naive, plan.max_sessions)
                step("CPU per frame of the naive server, its model included")
                naive_cpu = cpu_per_frame(naive_base, "", "naive", pcm, region, [])
    figures = summary(live_rounds, naive_rounds, model_fps, codec)
    figures["live_cpu_ms_per_frame"] = 1000 * live_cpu.path if live_cpu else None
    # The two architectures' whole cost per frame at the same load: steadier than the
    # largest N, which a single stall of the machine decides near capacity.
    figures["live_total_cpu_ms_per_frame"] = 1000 * live_cpu.whole if live_cpu else None
    figures["naive_total_cpu_ms_per_frame"] = 1000 * naive_cpu.whole if naive_cpu else None
    figures["codec_encoder_fps"] = encoder_fps
    figures["bench_seconds"] = time.perf_counter() - started
    figures["lipsync_model"] = plan.lipsync_model
    figures["replicas"] = plan.replicas
    if plan.frames_per_request is not None:
        figures["frames_per_request"] = plan.frames_per_request
    if backlog is not None:
        figures["backlog"] = backlog
    out(
        f"largest N with < {100 * LATE_LIMIT:g} % late frames: "
        f"live {figures['live_sessions_max']}, "
        f"naive {figures['live_sessions_naive']}; sustained {figures['live_fps']:.1f} fps = "
        f"{figures['live_ratio_limit']:.2f} of the limit {figures['limit_fps']:.1f} fps "
        f"(model {model_fps:.1f}, codec {codec:.1f})"
    )
    if live_cpu and naive_cpu:
        out(
            f"CPU per frame, {CODEC_SESSIONS} sessions, everything on this machine: live "
            f"{1000 * live_cpu.whole:.2f} ms (outside the model {1000 * live_cpu.path:.2f}), "
            f"naive {1000 * naive_cpu.whole:.2f} ms"
        )
    out(json.dumps(figures))
    return 0


async def _alone(settings: Settings, video: Path, plan: Plan) -> tuple[float, float, Avatar, str]:
    """The model alone, the codec alone, the avatar prepared and the model's composite."""
    async with Engine(settings) as engine:
        served = engine.served
        batch = min(settings.lipsync_batch_size, served.lipsync.max_batch_size)
        model_fps = await model_rate.triton_saturated_fps(
            engine.client,
            served.lipsync.name,
            served.face_size,
            batch,
            settings.triton_max_in_flight,
            plan.model_frames,
        )
        avatar = await engine.prepare_avatar(video)
        codec = await asyncio.to_thread(
            codec_fps, avatar, served.face_size, plan.model_frames, os.cpu_count() or 1
        )
    return model_fps, codec, avatar, str(served.composite)


def default_replicas() -> int:
    """`dh serve` processes for the live sessions: one per core. One process carried 8-9
    sessions on these two cores while the machine was 55-75 % busy (its interpreter holds
    every session's Python work, on one core at most); two carried 10-12 with it 90 % busy
    (2026-12-03)."""
    return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.live", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short speech: a smoke run")
    parser.add_argument("--triton-url", help="measure against this Triton instead of one here")
    parser.add_argument(
        "--lipsync-model",
        default="lipsync",
        help="the lip-sync model (default: the reference model, whose mouth follows "
        f"loudness, so latency is measured; {WAV2LIP_MODEL}: Wav2Lip-96's compute)",
    )
    parser.add_argument("--seconds", type=float, help="speech streamed per session")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="avatar side in pixels")
    parser.add_argument("--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS)
    parser.add_argument(
        "--server-url", help="measure this running service instead of a dh serve started here"
    )
    parser.add_argument("--avatar-id", help="its prepared avatar (default: upload ours)")
    parser.add_argument("--api-key", default="", help="its API key, if it asks for one")
    parser.add_argument(
        "--batch-backlog",
        type=int,
        default=0,
        metavar="J",
        help="then run the largest passing N again while J batch jobs render, with the live "
        "priority (DH_LIVE_PRIORITY) on and off",
    )
    parser.add_argument(
        "--backlog-sessions",
        type=int,
        metavar="N",
        help="sessions of the backlog rounds (default: the largest passing N, at least 1)",
    )
    parser.add_argument(
        "--backlog-repeats", type=int, default=1, metavar="R", help="backlog rounds per setting"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        metavar="R",
        help="spread the live sessions over R dh serve processes on the one Triton "
        "(default: one per core, 1 with --server-url; the naive server stays one process)",
    )
    parser.add_argument(
        "--frames-per-request",
        type=int,
        metavar="K",
        help="the servers' DH_LIVE_FRAMES_PER_REQUEST (default: theirs)",
    )
    args = parser.parse_args(argv)
    plan = Plan(
        seconds=args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS),
        size=args.size,
        lipsync_model=args.lipsync_model,
        max_sessions=args.max_sessions,
        model_frames=64 if args.quick else 320,
        server_url=args.server_url,
        avatar_id=args.avatar_id,
        api_key=args.api_key,
        batch_backlog=args.batch_backlog,
        backlog_sessions=args.backlog_sessions,
        backlog_repeats=args.backlog_repeats,
        frames_per_request=args.frames_per_request,
        replicas=args.replicas
        if args.replicas is not None
        else (1 if args.server_url else default_replicas()),
    )
    if plan.replicas < 1 or (plan.replicas > 1 and args.server_url):
        parser.error("--replicas is 1 or more, and 1 with --server-url")
    return run(plan, args.triton_url, lambda line: print(line, flush=True))


if __name__ == "__main__":
    raise SystemExit(main())
