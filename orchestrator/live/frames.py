"""What one live frame is made of: the pure maths of the frame loop.

Frame i of a session plays at `i / fps` on the session's clock and takes the same mel
window as in batch (pipeline/mel.py: 16 mel frames from int(i * 80 / fps)). The window is
computed from a short slice of the session's audio around it, a few mel frames wider on
the left so that its first frame has its whole STFT window and preemphasis history (the
values then equal the batch spectrogram's away from the audio's very start).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from orchestrator.pipeline.drive import pingpong
from orchestrator.pipeline.mel import (
    HOP,
    MEL_FRAMES_PER_SECOND,
    MEL_WINDOW,
    N_FFT,
    SAMPLE_RATE,
    mel_spectrogram,
)

# Mel frames computed before the window's first one: 2 for the reflection pad a slice's
# start gets (half an n_fft window is 2 hops), 1 more for the preemphasis history.
LOOKBACK_FRAMES = 3
# A lipsync request of several frames is sent once its last frame's audio is final; the
# wait may take at most this share of the first frame's render time (from its audio being
# final to the moment it plays), the rest is left for inference and the composite.
GROUP_WAIT_SHARE = 0.5


def window_span(index: int, fps: Fraction) -> tuple[int, int]:
    """The audio samples [start, end) on the session's timeline that frame `index`'s mel
    window is computed from; the frame can be drawn once audio up to `end` is final."""
    first = int(index * MEL_FRAMES_PER_SECOND / float(fps))  # mel.mel_window's rule
    start = (first - LOOKBACK_FRAMES) * HOP
    end = (first + MEL_WINDOW - 1) * HOP + N_FFT // 2
    return start, end


def frame_mel_window(segment: np.ndarray) -> np.ndarray:
    """The [80, 16] mel window of a frame from the samples of its `window_span`."""
    mel = mel_spectrogram(segment)
    return np.ascontiguousarray(mel[:, LOOKBACK_FRAMES : LOOKBACK_FRAMES + MEL_WINDOW])


def due_at(index: int, fps: Fraction) -> float:
    """Seconds from the session's start at which frame `index` plays."""
    return float(index / fps)


def final_at(index: int, fps: Fraction, latency_s: float) -> float:
    """Seconds from the session's start after which frame `index`'s audio cannot change:
    speech is never placed before "now + latency", so the window is final once the clock
    is `latency_s` before the window's end."""
    return window_span(index, fps)[1] / SAMPLE_RATE - latency_s


def group_size(index: int, frames_per_request: int, fps: Fraction, latency_s: float) -> int:
    """How many frames from `index` on go in one lipsync request: up to
    `frames_per_request`, as long as waiting for the last one's audio (final in frame
    order, 1/fps apart) takes at most GROUP_WAIT_SHARE of frame `index`'s render time."""
    first_final = final_at(index, fps, latency_s)
    budget = GROUP_WAIT_SHARE * (due_at(index, fps) - first_final)
    size = 1
    while (
        size < frames_per_request and final_at(index + size, fps, latency_s) - first_final <= budget
    ):
        size += 1
    return size


def avatar_index(index: int, frame_count: int) -> int:
    """The avatar frame shown at session frame `index`: walked forwards and backwards."""
    return pingpong(index, frame_count)


def face_box(boxes: np.ndarray, index: int) -> tuple[int, int, int, int] | None:
    """The avatar's face box at `index`, or None where no face was found (avatar_prefix's
    rule: an empty box)."""
    x1, y1, x2, y2 = (int(v) for v in boxes[index])
    return (x1, y1, x2, y2) if x2 > x1 else None


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile of `values` (None when empty)."""
    return float(np.percentile(values, q)) if values else None
