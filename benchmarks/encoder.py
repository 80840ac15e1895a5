"""libx264's settings by measurement: frames/s and fidelity of each preset, CRF and threads.

    python -m benchmarks.encoder [--seconds 2] [--presets ultrafast,...] [--crfs 18,20,23]

Encodes the same 1080p avatar frames through the service's own writer (Mp4Writer: colour
conversion, x264, the MP4 muxer, the audio track) and prints, per setting, frames/s, the
bitrate and the PSNR of the decoded output against the input *outside the face*: the
pixels the service must pass through untouched, where every difference is the encoder's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from orchestrator.pipeline.decode import read_video_frames
from orchestrator.pipeline.encode import Mp4Writer, VideoEncoder
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import mouth_region, write_avatar_video

SIZE = (1920, 1080)
FPS = 25
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")
CRFS = (18, 20, 23, 26)
# Thread counts tried at the default preset and CRF; 0 is libx264's own choice.
THREADS = (1, 2, 0)
# The astronaut's face around her mouth, in mouth-region units (synthmedia.avatar): from
# the photo, the face spans 53 px left to 37 px right of the mouth's centre and 94 px
# above to 16 px below it, on a 72x52 px mouth region; 10 % added all round.
FACE_LEFT, FACE_RIGHT, FACE_UP, FACE_DOWN = 53 / 72, 37 / 72, 94 / 52, 16 / 52
FACE_MARGIN = 1.1
PSNR_PEAK = 255.0


@dataclass(frozen=True)
class EncoderFigures:
    encoder: VideoEncoder
    fps: float
    kbit_per_s: float
    psnr_outside_face_db: float


def face_mask(width: int, height: int) -> np.ndarray:
    """[h, w] bool: True over the astronaut's face, whose pixels the service replaces."""
    x, y, w, h = mouth_region((width, height))
    cx, cy = x + w / 2, y + h / 2
    left = cx - FACE_LEFT * w * FACE_MARGIN
    right = cx + FACE_RIGHT * w * FACE_MARGIN
    top = cy - FACE_UP * h * FACE_MARGIN
    bottom = cy + FACE_DOWN * h * FACE_MARGIN
    mask = np.zeros((height, width), bool)
    mask[max(0, round(top)) : round(bottom), max(0, round(left)) : round(right)] = True
    return mask


def psnr_outside(frames: list[np.ndarray], video: Path, mask: np.ndarray) -> float:
    """PSNR (dB) of `video`'s frames against `frames`, over the pixels outside `mask`."""
    squared, count = 0.0, 0
    keep = ~mask
    with av.open(str(video)) as container:
        decoded = container.decode(container.streams.video[0])
        for original, frame in zip(frames, decoded, strict=False):
            out = frame.to_ndarray(format="bgr24")[: original.shape[0], : original.shape[1]]
            diff = out[keep].astype(np.float32) - original[keep].astype(np.float32)
            squared += float(np.square(diff).sum())
            count += diff.size
    mse = squared / max(count, 1)
    return float("inf") if mse == 0 else 10 * np.log10(PSNR_PEAK**2 / mse)


def measure(
    encoder: VideoEncoder, frames: list[np.ndarray], audio: Path, out: Path, mask: np.ndarray
) -> EncoderFigures:
    height, width = frames[0].shape[:2]
    started = time.perf_counter()
    writer = Mp4Writer(out, width, height, Fraction(FPS), audio, encoder)
    try:
        for frame in frames:
            writer.write(frame)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - started
    kbit_per_s = out.stat().st_size * 8 / 1000 / (len(frames) / FPS)
    return EncoderFigures(
        encoder, len(frames) / seconds, kbit_per_s, psnr_outside(frames, out, mask)
    )


def settings_to_try(
    presets: list[str], crfs: list[float], default: VideoEncoder
) -> list[VideoEncoder]:
    grid = [VideoEncoder(preset=p, crf=c) for p in presets for c in crfs]
    threads = [VideoEncoder(preset=default.preset, crf=default.crf, threads=t) for t in THREADS]
    return grid + [e for e in threads if e not in grid]


def table(rows: list[EncoderFigures]) -> str:
    lines = [
        "| preset | CRF | threads | frames/s | kbit/s | PSNR outside the face (dB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        e = row.encoder
        lines.append(
            f"| {e.preset} | {e.crf:g} | {e.threads or 'auto'} | {row.fps:.1f} | "
            f"{row.kbit_per_s:.0f} | {row.psnr_outside_face_db:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.encoder", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of the clip")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--crfs", default=",".join(str(c) for c in CRFS))
    args = parser.parse_args(argv)
    default = VideoEncoder()
    encoders = settings_to_try(
        args.presets.split(","), [float(c) for c in args.crfs.split(",")], default
    )
    with tempfile.TemporaryDirectory(prefix="dh-encoder-") as scratch:
        work = Path(scratch)
        video, audio = work / "avatar.mp4", work / "speech.wav"
        write_avatar_video(video, seconds=args.seconds, fps=FPS, size=SIZE)
        write_audio(audio, voiced_speech(args.seconds), 16000)
        frames = list(read_video_frames(video, FPS))
        mask = face_mask(*SIZE)
        rows = []
        for encoder in encoders:
            rows.append(measure(encoder, frames, audio, work / "out.mp4", mask))
            print(
                f"[encoder] {encoder.preset} crf {encoder.crf:g} threads {encoder.threads}: "
                f"{rows[-1].fps:.1f} fps",
                flush=True,
            )
    print(f"1920x1080, {len(frames)} frames; default: {default.preset} crf {default.crf:g}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
