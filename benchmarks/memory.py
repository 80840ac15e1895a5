"""Peak memory of a job does not grow with the length of the audio.

    python -m benchmarks.memory [--long-seconds 600] [--triton-url HOST:PORT]

Runs the same avatar with 30 s and with 10 min of speech, each job in a fresh process, and
prints every peak RSS and the ratio of the highest peaks (the target is at most 1.25).
Peaks vary by tens of MiB from run to run with thread timing, hence the repeats.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.common import run_job_process, triton_for_benchmark
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video

TARGET_RATIO = 1.25


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-seconds", type=float, default=30.0)
    parser.add_argument("--long-seconds", type=float, default=600.0)
    parser.add_argument("--avatar-seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per length; peaks compared")
    parser.add_argument("--triton-url", help="use this Triton instead of starting one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dh-bench-") as scratch:
        work = Path(scratch)
        avatar = work / "avatar.mp4"
        write_avatar_video(avatar, seconds=args.avatar_seconds, size=(320, 320))
        with triton_for_benchmark(work, args.triton_url) as (grpc_url, _):
            env = {**os.environ, "DH_TRITON_URL": grpc_url, "DH_DATA_DIR": str(work / "data")}
            # The first job after Triton starts meets cold models: slow answers fill every
            # queue to its bound. One warm-up job keeps that out of the comparison.
            warmup = work / "warmup.wav"
            write_audio(warmup, voiced_speech(5.0), 16000)
            run_job_process(env, avatar, warmup, work / "warmup.mp4")
            peaks = {}
            for label, seconds in (("short", args.short_seconds), ("long", args.long_seconds)):
                audio = work / f"{label}.wav"
                write_audio(audio, voiced_speech(seconds), 16000)
                runs = [
                    run_job_process(env, avatar, audio, work / f"{label}.mp4")
                    for _ in range(args.repeats)
                ]
                for f in runs:
                    print(
                        f"{seconds:6.0f} s of audio: {f['frames']:6.0f} frames, "
                        f"{f['wall_seconds']:7.1f} s wall, {f['fps']:6.1f} fps, "
                        f"peak RSS {f['peak_rss_mib']:7.1f} MiB",
                        flush=True,
                    )
                peaks[label] = max(f["peak_rss_mib"] for f in runs)
    ratio = peaks["long"] / peaks["short"]
    verdict = "ok" if ratio <= TARGET_RATIO else f"OVER the {TARGET_RATIO} target"
    print(f"peak RSS ratio long/short: {ratio:.3f} ({verdict})")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
