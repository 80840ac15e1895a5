"""Frames per second of whole jobs: batched and pipelined against frame-by-frame.

    python -m benchmarks.throughput [--seconds 8] [--triton-url HOST:PORT]

The baseline sends one frame per request and waits for each answer, as the service this
replaces did; the pipeline batches frames and keeps several requests in flight so Triton's
dynamic batcher can merge them. Both run in this process, on the same avatar (prepared
once), for the reference model and for the Wav2Lip-96 architecture; the ratio is what
batching buys on this machine. On a GPU the gap is much wider.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from benchmarks.common import WAV2LIP_MODEL, triton_for_benchmark
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video

BASELINE = {"lipsync_batch_size": 1, "lipsync_batches_in_flight": 1}
PIPELINED: dict[str, int] = {}  # the defaults


async def _measure(settings: Settings, avatar: Path, audio: Path, out: Path) -> tuple[float, float]:
    """(frames per second, average batch Triton executed) for one job."""
    async with Engine(settings) as engine, TritonClient(settings.triton_url) as stats:
        await engine.prepare_avatar(avatar)
        before = await stats.statistics(settings.lipsync_model)
        result = await engine.generate(avatar, audio, out)
        after = await stats.statistics(settings.lipsync_model)
    executions = max(after.execution_count - before.execution_count, 1)
    batch = (after.inference_count - before.inference_count) / executions
    return result.frames / result.wall_seconds, batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="speech per job")
    parser.add_argument("--triton-url", help="use this Triton instead of starting one")
    parser.add_argument(
        "--ort-threads", type=int, help="onnxruntime threads per local model instance"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dh-bench-") as scratch:
        work = Path(scratch)
        avatar, audio = work / "avatar.mp4", work / "speech.wav"
        write_avatar_video(avatar, seconds=4, size=(320, 320))
        write_audio(audio, voiced_speech(args.seconds), 16000)
        with triton_for_benchmark(
            work, args.triton_url, wav2lip=True, ort_threads=args.ort_threads
        ) as (grpc_url, _):
            for model in ("lipsync", WAV2LIP_MODEL):
                figures = {}
                for label, overrides in (("frame by frame", BASELINE), ("pipelined", PIPELINED)):
                    settings = Settings(
                        triton_url=grpc_url,
                        lipsync_model=model,
                        data_dir=work / "data",
                        **overrides,  # type: ignore[arg-type]
                    )
                    fps, batch = asyncio.run(_measure(settings, avatar, audio, work / "out.mp4"))
                    figures[label] = fps
                    print(
                        f"{model:16s} {label:15s} {fps:7.1f} fps  "
                        f"(Triton ran batches of {batch:5.1f} frames on average)",
                        flush=True,
                    )
                ratio = figures["pipelined"] / figures["frame by frame"]
                print(f"{model:16s} speed-up of the pipeline over frame by frame: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
