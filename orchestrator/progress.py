"""A one-line progress bar for the terminal (frames, frames/s, ETA) and the stage summary."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from orchestrator.pipeline.runner import JobResult, Progress

BAR_WIDTH = 28
# Redraw at most this often: a bar updated per frame would cost more than the frame.
REDRAW_S = 0.1


class ProgressBar:
    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self._drawn = 0.0
        self._live = stream.isatty()

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        last = progress.frames_total and progress.frames_done == progress.frames_total
        if now - self._drawn < REDRAW_S and not last:
            return
        self._drawn = now
        if progress.frames_total == 0:
            line = f"{progress.stage}: preparing…"
            if progress.avatar_frames:
                line += f" {progress.avatar_frames} avatar frames decoded, faces being detected"
        else:
            done = progress.frames_done / progress.frames_total
            filled = round(done * BAR_WIDTH)
            eta = progress.eta_seconds
            line = (
                f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {progress.frames_done}/"
                f"{progress.frames_total} frames  {progress.frames_per_second:5.1f} fps  "
                f"ETA {'--' if eta is None else f'{eta:4.0f} s'}"
            )
        if self._live:
            self.stream.write("\r" + line.ljust(79))
        elif last or (progress.frames_total == 0 and not progress.avatar_frames):
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._live:
            self.stream.write("\n")
            self.stream.flush()


def summary(result: JobResult) -> str:
    stages = "  ".join(f"{name} {seconds:.2f}s" for name, seconds in result.stage_seconds.items())
    return (
        f"wrote {result.output} — {result.frames} frames at {float(result.fps):.2f} fps, "
        f"{result.audio_seconds:.2f} s of audio, {result.frames_without_face} frames without a "
        f"face, {result.wall_seconds:.1f} s wall ({result.frames / result.wall_seconds:.1f} fps)\n"
        f"time per stage (busy): {stages}"
    )
