"""Speech intake: raw PCM to the 16 kHz float samples the lipsync model hears, and the
session's audio timeline that the frame loop and the audio track both read.

The timeline is indexed by sample position from the session's start (position p plays at
`start + p / 16000`). Speech is written at the end of what is queued, never before
"now + latency" (so a frame's mel window is final once the clock reaches it, and nothing
already drawn changes); positions nobody wrote are silence.
"""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np

from orchestrator.errors import BadInput
from orchestrator.pipeline.mel import SAMPLE_RATE

STAGE = "speech"
# 16-bit PCM: two bytes per sample, full scale 32768.
PCM_BYTES = 2
PCM_FULL_SCALE = 32768.0
# Rates a client may announce: telephone to studio.
MIN_RATE, MAX_RATE = 8000, 192000
# Positions older than this behind "now" are dropped from memory: the mel window of a
# frame reaches only ~25 ms back (half an STFT window) before its own time.
KEEP_BEHIND_S = 1.0
# A chunk whose peak is below this (about -60 dBFS) is silence: it is kept as audio, but
# frames it drives show the avatar's own frames without inference (a muted microphone
# costs no model calls).
SILENCE_PEAK = 1e-3


def pcm_samples(message: bytes) -> np.ndarray:
    """A binary message of 16-bit little-endian mono PCM as float32 in [-1, 1)."""
    if len(message) % PCM_BYTES:
        raise BadInput(
            STAGE,
            f"a PCM message must hold whole 16-bit samples; got {len(message)} bytes (odd)",
        )
    return np.frombuffer(message, "<i2").astype(np.float32) / PCM_FULL_SCALE


def announced_rate(text: str) -> int:
    """The sample rate of a first text message: `{"sample_rate": 48000}` or `48000`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(STAGE, 'the text message must be {"sample_rate": N} or N') from exc
    if isinstance(value, dict):
        value = value.get("sample_rate")
    if not isinstance(value, int) or isinstance(value, bool) or not MIN_RATE <= value <= MAX_RATE:
        raise BadInput(
            STAGE, f"sample_rate must be a whole number of Hz from {MIN_RATE} to {MAX_RATE}"
        )
    return value


class Resampler:
    """Mono float chunks at `rate` to SAMPLE_RATE, keeping state between chunks (PyAV's
    resampler), so chunk edges do not click."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._pts = 0
        self._resampler = (
            None
            if rate == SAMPLE_RATE
            else av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        )

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self._resampler is None or samples.size == 0:
            return samples
        frame = av.AudioFrame.from_ndarray(samples[None].astype(np.float32), "flt", "mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.rate)
        self._pts += samples.size
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class Timeline:
    """The session's audio by sample position; speech intervals mark what needs the model."""

    def __init__(self, capacity_s: float) -> None:
        self._buffer = np.zeros(int(capacity_s * SAMPLE_RATE), np.float32)
        self._origin = 0  # position of _buffer[0]
        self.end = 0  # one past the last position written
        self._speech: list[tuple[int, int]] = []  # merged [start, end) intervals

    def write(self, samples: np.ndarray, position: int) -> tuple[int, int]:
        """Writes `samples` at `position` (not before what is written already: the caller
        places it) and returns the interval it took."""
        position = max(position, self.end)
        end = position + samples.size
        if end - self._origin > self._buffer.size:
            grown = np.zeros(max(2 * self._buffer.size, end - self._origin), np.float32)
            grown[: self._buffer.size] = self._buffer
            self._buffer = grown
        start = position - self._origin
        self._buffer[self.end - self._origin : start] = 0.0  # the gap is silence
        self._buffer[start : start + samples.size] = samples
        self.end = end
        if samples.size and float(np.abs(samples).max()) >= SILENCE_PEAK:
            self._mark(position, end)
        return position, end

    def _mark(self, start: int, end: int) -> None:
        if self._speech and self._speech[-1][1] >= start:
            self._speech[-1] = (self._speech[-1][0], end)
        else:
            self._speech.append((start, end))

    def read(self, start: int, count: int) -> np.ndarray:
        """`count` samples from `start`; silence where nothing was written or was dropped."""
        out = np.zeros(count, np.float32)
        first, last = max(start, self._origin), min(start + count, self.end)
        if last > first:
            out[first - start : last - start] = self._buffer[
                first - self._origin : last - self._origin
            ]
        return out

    def has_speech(self, start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in self._speech)

    def truncate(self, position: int) -> None:
        """Drops everything from `position` on (barge-in)."""
        if position >= self.end:
            return
        self.end = max(position, self._origin)
        self._speech = [(s, min(e, position)) for s, e in self._speech if s < position]

    def forget_before(self, position: int) -> None:
        """Frees what lies before `position` (already played)."""
        drop = min(position, self.end) - self._origin
        if drop < KEEP_BEHIND_S * SAMPLE_RATE:
            return  # compact in steps of a second or more: a move per chunk would be costly
        kept = self.end - self._origin - drop
        self._buffer[:kept] = self._buffer[drop : drop + kept]
        self._origin += drop
        self._speech = [(max(s, self._origin), e) for s, e in self._speech if e > self._origin]
