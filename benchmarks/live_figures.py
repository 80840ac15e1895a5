"""benchmarks.live's pure parts: when a frame is late, the onset latency, the search over
N sessions, the limit and the summary."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# A frame is late when it arrives later than this after its schedule: the schedule is the
# frame's timestamp anchored at the fastest deliveries (5th percentile), and this is the
# jitter a browser's buffer absorbs without a visible stall.
LATE_S = 0.1


def step(message: str) -> None:
    """A progress line on stderr (stdout carries the figures)."""
    print(f"[live] {message}", file=sys.stderr, flush=True)


ANCHOR_PERCENTILE = 5


# A frame timestamp gap over this many frame periods means frames never came: late too.
GAP_PERIODS = 1.5


# N passes while fewer than this fraction of its frames are late.
LATE_LIMIT = 0.01


# The mouth must change within this long of the speech's start: the onset's search.
MAX_LAG_S = 3.0


# The onset of speech: the first block this loud against the loudest. The mouth's change
# in speech must exceed its change at rest (codec noise) this many times over, and this
# many grey levels, to count.
ONSET_FRACTION, ONSET_MARGIN, MIN_CHANGE = 0.1, 2.0, 0.5


def late_fraction(arrival_s: np.ndarray, due_s: np.ndarray, period_s: float) -> float:
    """Fraction of frames late: arriving over LATE_S after their schedule (`due_s`, in any
    clock, anchored here at the fastest deliveries), or missing (gaps in `due_s`)."""
    arrival_s, due_s = np.asarray(arrival_s, float), np.asarray(due_s, float)
    if arrival_s.size == 0:
        return 1.0
    offset = arrival_s - due_s
    late = int((offset - np.percentile(offset, ANCHOR_PERCENTILE) > LATE_S).sum())
    gaps = np.diff(np.sort(due_s)) / period_s
    missing = int(np.clip(np.round(gaps[gaps > GAP_PERIODS]) - 1, 0, None).sum())
    return (late + missing) / (arrival_s.size + missing)


def onset_delay(
    level_t: np.ndarray, level: np.ndarray, frame_t: np.ndarray, mouth: np.ndarray
) -> float | None:
    """Seconds from the first loud audio sent (at `level_t`, loudness `level`) to the first
    frame (arrived at `frame_t`) whose mouth region (mean luma `mouth`) has changed from its
    look at rest by more than half its typical change in speech, and by more than any frame
    before the speech; None when speech changes it no more than rest does.

    A session is silent until its speech starts and the benchmark's avatar is still, so the
    onset is unambiguous, and it holds for any model that changes the mouth with speech (a
    correlation with loudness would hold only for a model that darkens it with loudness,
    and speech's loudness rises and falls with its syllables nearly periodically, so the
    best delay can be a syllable off)."""
    level_t, level = np.asarray(level_t, float), np.asarray(level, float)
    frame_t, mouth = np.asarray(frame_t, float), np.asarray(mouth, float)
    if level.size == 0:
        return None
    loud = np.flatnonzero(level >= ONSET_FRACTION * level.max())
    if loud.size == 0:
        return None
    first = level_t[loud[0]]
    before = frame_t < first
    after = (frame_t >= first) & (frame_t <= first + MAX_LAG_S)
    if before.sum() < 3 or not after.any():
        return None
    change = np.abs(mouth - float(np.median(mouth[before])))
    rest, speaking = float(change[before].max()), float(np.percentile(change[after], 90))
    if speaking <= ONSET_MARGIN * rest + MIN_CHANGE:
        return None
    crossed = np.flatnonzero(after & (change > max(rest, speaking / 2)))
    return float(frame_t[crossed[0]] - first) if crossed.size else None


def frame_latencies(delay_s: float, arrival_s: np.ndarray, due_s: np.ndarray) -> np.ndarray:
    """Each frame's latency: the session's delay (the typical frame's) plus how much later
    or sooner than typical the frame arrived against its own timestamp."""
    offset = np.asarray(arrival_s, float) - np.asarray(due_s, float)
    latencies: np.ndarray = delay_s + offset - float(np.median(offset))
    return latencies


def percentile(values: list[float] | np.ndarray, q: float) -> float | None:
    values = np.asarray(values, float)
    return float(np.percentile(values, q)) if values.size else None


@dataclass(frozen=True)
class Round:
    """N sessions at once: frames per second of all together, the late fraction, latency
    percentiles, and the CPU seconds per frame received spent in the servers' processes and
    this client over the same frames (None where unmeasured: a server not started here)."""

    sessions: int
    fps: float
    late: float
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    cpu_s_per_frame: float | None = None

    @property
    def passed(self) -> bool:
        return self.late < LATE_LIMIT


def next_count(rounds: dict[int, Round], ceiling: int) -> int | None:
    """The next N to try: doubling from 1 while N passes, then halving the interval between
    the largest passing and the smallest failing N; None when that interval is closed (or
    the ceiling passes)."""
    if not rounds:
        return 1
    passing = [n for n, r in rounds.items() if r.passed]
    failing = [n for n, r in rounds.items() if not r.passed]
    good = max(passing, default=0)
    bad = min((n for n in failing if n > good), default=None)
    if bad is None:
        if good >= ceiling:
            return None
        return min(good * 2, ceiling)
    if bad - good <= 1:
        return None
    return (good + bad) // 2


def largest_passing(rounds: dict[int, Round]) -> int:
    """The largest N with < 1 % late frames below which every N tried passed too (0: none)."""
    largest = 0
    for n in sorted(rounds):
        if not rounds[n].passed:
            break
        largest = n
    return largest


def search(measure: Callable[[int], Round], ceiling: int) -> dict[int, Round]:
    rounds: dict[int, Round] = {}
    while (n := next_count(rounds, ceiling)) is not None:
        rounds[n] = measure(n)
    return rounds


def limit_fps(model: float, codec: float) -> float:
    """Model and codec sharing one machine's CPU: their rates combined as serial work."""
    return 1.0 / (1.0 / model + 1.0 / codec)


def summary(
    live: dict[int, Round], naive: dict[int, Round], model_fps: float, codec_fps: float
) -> dict[str, Any]:
    """Every figure of the run; the issue's four first."""
    best = largest_passing(live)
    sustained = live[best] if best else None
    limit = limit_fps(model_fps, codec_fps)
    return {
        "live_sessions_max": best,
        "live_sessions_naive": largest_passing(naive),
        "live_latency_p95_s": sustained.latency_p95_s if sustained else None,
        "live_ratio_limit": sustained.fps / limit if sustained else 0.0,
        "live_latency_p50_s": sustained.latency_p50_s if sustained else None,
        "live_fps": sustained.fps if sustained else 0.0,
        "limit_fps": limit,
        "model_triton_fps": model_fps,
        "codec_fps": codec_fps,
        "rounds": [asdict(r) for r in live.values()],
        "naive_rounds": [asdict(r) for r in naive.values()],
    }


def render_row(kind: str, r: Round) -> str:
    def seconds(value: float | None) -> str:
        return "   –  " if value is None else f"{value:6.3f}"

    cpu = "" if r.cpu_s_per_frame is None else f"  cpu {1000 * r.cpu_s_per_frame:5.2f} ms/frame"
    return (
        f"{kind:6} N={r.sessions:3}  {r.fps:7.1f} fps  late {100 * r.late:5.1f} %  "
        f"latency p50 {seconds(r.latency_p50_s)} s  p95 {seconds(r.latency_p95_s)} s"
        f"  {'ok' if r.passed else 'LATE'}{cpu}"
    )
