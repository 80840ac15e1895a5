"""The browser for tests/live/test_browser.py: Debian's Chromium driven by Playwright, with
a fake microphone that plays a speech file with pauses; and the pure analysis of what the
page saw (loudness sent against the mouth seen), kept apart so it is tested on its own.

Chromium comes from the system (scripts/setup installs it as root; otherwise
`sudo apt-get install chromium`): Playwright's own browser download is not used.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthmedia.audio import SPEECH_RATE, speech_with_pauses, write_audio

CHROMIUM = "/usr/bin/chromium"
# The fake microphone: phrases of speech and silences long enough that the mouth must come
# to rest in each (the mel window looks 0.2 s ahead; the encoder and jitter buffer smear a
# few frames more).
PHRASES, PHRASE_S, PAUSE_S = 4, 1.6, 1.6
# Flags: no sandbox (root in a container); WebRTC over loopback (the test's server is on
# 127.0.0.1, which Chromium leaves out of ICE otherwise); a fake camera and microphone,
# the microphone playing our file, and no permission prompt.
FLAGS = (
    "--no-sandbox",
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
)
# Analysis: the grid both signals are compared on, and the delays searched for the one at
# which the mouth follows the voice (audio in to frame shown, loopback, any machine).
GRID_S = 0.04
MAX_LAG_S = 3.0
LAG_STEP_S = 0.02
# A frame is in a silence when no voice is within this of it (after the delay): the mel
# window looks 0.2 s ahead and the video path smears a frame or two.
SILENCE_MARGIN_S = 0.3
# Loudness below this fraction of the loudest block is silence.
QUIET_FRACTION = 0.05


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return CHROMIUM if Path(CHROMIUM).exists() else None


@dataclass(frozen=True)
class FakeMicrophone:
    path: Path
    samples: np.ndarray


@pytest.fixture(scope="session")
def fake_microphone(tmp_path_factory: pytest.TempPathFactory) -> FakeMicrophone:
    """A 16 kHz WAV of speech with pauses that Chromium plays as the microphone (looped)."""
    samples = speech_with_pauses(PHRASES, PHRASE_S, PAUSE_S)
    path = tmp_path_factory.mktemp("fake-mic") / "speech-with-pauses.wav"
    write_audio(path, samples, SPEECH_RATE)
    return FakeMicrophone(path, samples)


@pytest.fixture
def browser(fake_microphone: FakeMicrophone) -> Iterator[Any]:
    """Chromium under Playwright; skipped (with the reason) only where there is none.

    One per test (a launch takes a second): Playwright's sync API runs an event loop of its
    own while it lives, and the suite's async fixtures (a prepared avatar) must be set up
    while none runs: pytest sets up the session's fixtures before this one."""
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "no Chromium: scripts/setup installs it as root; otherwise "
            "`sudo apt-get install chromium`"
        )
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is in the dev extras: pip install -e '.[dev]'"
    )
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable,
            args=[*FLAGS, f"--use-file-for-fake-audio-capture={fake_microphone.path}"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


# --- analysis -------------------------------------------------------------------------


@dataclass(frozen=True)
class Following:
    """How the mouth followed the voice: the delay that fits best, the correlation there,
    and how much the mouth moved in silences against how much it moved in speech."""

    lag_s: float
    correlation: float
    silence_motion: float
    speech_motion: float


def _spread(values: np.ndarray) -> float:
    """The 5th-95th percentile range: the motion of a signal, deaf to a stray frame."""
    if values.size == 0:
        return 0.0
    low, high = np.percentile(values, [5, 95])
    return float(high - low)


def mouth_follows_voice(
    level_t: np.ndarray, level: np.ndarray, mouth_t: np.ndarray, darkness: np.ndarray
) -> Following:
    """`level` (loudness of each microphone block sent, at times `level_t`, seconds) against
    `darkness` (how dark the mouth region of each video frame is, at `mouth_t`): the delay
    in [0, MAX_LAG_S] at which they correlate best, the correlation there, and the mouth's
    motion in silences and in speech at that delay."""
    level_t, level = np.asarray(level_t, float), np.asarray(level, float)
    mouth_t, darkness = np.asarray(mouth_t, float), np.asarray(darkness, float)
    start, stop = max(level_t[0], mouth_t[0]), mouth_t[-1]
    grid = np.arange(start, stop, GRID_S)
    mouth = np.interp(grid, mouth_t, darkness)
    best = (-2.0, 0.0)
    for lag in np.arange(0.0, MAX_LAG_S + LAG_STEP_S / 2, LAG_STEP_S):
        voice = np.interp(grid - lag, level_t, level)
        inside = grid - lag >= level_t[0]
        if inside.sum() < 2 or voice[inside].std() == 0 or mouth[inside].std() == 0:
            continue
        correlation = float(np.corrcoef(voice[inside], mouth[inside])[0, 1])
        if correlation > best[0]:
            best = (correlation, float(lag))
    correlation, lag = best
    # Silent frames: no block within SILENCE_MARGIN_S of the frame's audio time is loud.
    quiet = level < QUIET_FRACTION * level.max()
    loud_t = level_t[~quiet]
    audio_t = grid - lag
    nearest = np.abs(audio_t[:, None] - loud_t[None, :]).min(axis=1) if loud_t.size else None
    valid = audio_t >= level_t[0]
    silent = valid & (nearest > SILENCE_MARGIN_S) if nearest is not None else valid
    speaking = valid & ~silent
    return Following(
        lag_s=lag,
        correlation=correlation,
        silence_motion=_spread(mouth[silent]),
        speech_motion=_spread(mouth[speaking]),
    )
