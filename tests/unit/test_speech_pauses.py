"""synthmedia's speech for live sessions: continuous (no pause over 0.2 s, the benchmark's
steady load) and with pauses (the browser test's microphone, silences to rest in)."""

from __future__ import annotations

import numpy as np

from synthmedia.audio import SPEECH_RATE, continuous_speech, speech_with_pauses, voiced_speech

BLOCK = SPEECH_RATE // 100  # 10 ms


def _block_rms(samples: np.ndarray) -> np.ndarray:
    blocks = samples[: samples.size // BLOCK * BLOCK].reshape(-1, BLOCK)
    rms: np.ndarray = np.sqrt((blocks.astype(np.float64) ** 2).mean(axis=1))
    return rms


def _longest_quiet_s(samples: np.ndarray, floor: float) -> float:
    longest = run = 0
    for quiet in _block_rms(samples) < floor:
        run = run + 1 if quiet else 0
        longest = max(longest, run)
    return longest * BLOCK / SPEECH_RATE


def test_continuous_speech_never_pauses_longer_than_0_2_s() -> None:
    speech = continuous_speech(20.0)
    assert speech.dtype == np.float32 and speech.size == 20 * SPEECH_RATE
    floor = 0.05 * _block_rms(speech).max()
    assert _longest_quiet_s(speech, floor) < 0.2
    # The read speech it is made from does pause between phrases.
    assert _longest_quiet_s(voiced_speech(20.0), floor) > 0.25


def test_speech_with_pauses_alternates_speech_and_silence() -> None:
    samples = speech_with_pauses(3, speech_s=1.0, pause_s=1.5)
    assert samples.size == round(3 * 2.5 * SPEECH_RATE)
    for phrase in range(3):
        start = round(phrase * 2.5 * SPEECH_RATE)
        spoken = samples[start : start + SPEECH_RATE]
        silent = samples[start + SPEECH_RATE : start + round(2.5 * SPEECH_RATE)]
        assert _block_rms(spoken).mean() > 0.05
        assert not silent.any()
