"""The service's numpy mel against librosa computed the way Wav2Lip was trained."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
import scipy.signal

from orchestrator.pipeline.mel import (
    HOP,
    MEL_BANDS,
    MEL_FRAMES_PER_SECOND,
    MEL_WINDOW,
    SAMPLE_RATE,
    mel_spectrogram,
    mel_window,
)
from synthmedia.audio import voiced_speech

# On the normalised [-4, 4] scale; float32 STFT against librosa's gives ~1e-5.
MAX_DIFF_VS_LIBROSA = 1e-3
# Extra memory allowed beyond the input and output arrays for 10 minutes of audio.
MEMORY_BUDGET_BYTES = 40 * 1024 * 1024


def librosa_wav2lip_mel(audio: np.ndarray) -> np.ndarray:
    """Wav2Lip's audio.melspectrogram, written out with librosa as Wav2Lip used it."""
    librosa = pytest.importorskip("librosa")
    emphasised = scipy.signal.lfilter([1, -0.97], [1], audio)
    stft = librosa.stft(
        y=emphasised, n_fft=800, hop_length=200, win_length=800, center=True, pad_mode="reflect"
    )
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    db = 20 * np.log10(np.maximum(1e-5, basis @ np.abs(stft))) - 20
    mel: np.ndarray = np.clip(8 * ((db + 100) / 100) - 4, -4, 4)
    return mel


def noisy_tones(seconds: float, seed: int) -> np.ndarray:
    """Loud and quiet stretches so the comparison covers the whole [-4, 4] range and clipping."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 0.3 * t)) ** 4
    signal = envelope * (np.sin(2 * np.pi * 220 * t) + 0.3 * rng.standard_normal(t.size))
    return (0.3 * signal).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "audio"),
    [
        ("voiced 3 s", voiced_speech(3.0, seed=3)),
        ("65 s across block boundaries", noisy_tones(65.0, seed=65)),
    ],
)
def test_mel_matches_librosa_with_reflect_padding(name: str, audio: np.ndarray) -> None:
    expected = librosa_wav2lip_mel(audio)
    mel = mel_spectrogram(audio)
    assert mel.dtype == np.float32
    assert mel.shape == expected.shape
    diff = float(np.abs(mel - expected).max())
    print(f"{name}: max |mel - librosa| = {diff:.2e}")
    assert diff < MAX_DIFF_VS_LIBROSA
    # The comparison is only meaningful if the signal spans the scale.
    assert mel.min() == -4.0
    assert mel.max() > 0.0


@pytest.mark.parametrize("samples", [0, 1, 199, 200, 401, 16000, 16123])
def test_mel_has_one_frame_per_hop_plus_one(samples: int) -> None:
    audio = np.random.default_rng(samples).uniform(-0.5, 0.5, samples).astype(np.float32)
    assert mel_spectrogram(audio).shape == (MEL_BANDS, 1 + samples // HOP)


def test_silence_is_minus_four_everywhere() -> None:
    mel = mel_spectrogram(np.zeros(3 * SAMPLE_RATE, dtype=np.float32))
    assert np.all(mel == -4.0)


def test_stereo_is_refused() -> None:
    with pytest.raises(ValueError, match="mono"):
        mel_spectrogram(np.zeros((2, 1000), dtype=np.float32))


def test_mel_constants_agree() -> None:
    assert SAMPLE_RATE / HOP == MEL_FRAMES_PER_SECOND


def ramp_mel(frames: int) -> np.ndarray:
    """A mel whose every column holds its own index, so a window names where it starts."""
    return np.tile(np.arange(frames, dtype=np.float32), (MEL_BANDS, 1))


@pytest.mark.parametrize(
    ("frame_index", "fps", "start"),
    [(0, 25, 0), (1, 25, 3), (2, 25, 6), (5, 25, 16), (3, 30, 8), (7, 29.97, 18), (10, 60, 13)],
)
def test_window_starts_at_wav2lip_index(frame_index: int, fps: float, start: int) -> None:
    window = mel_window(ramp_mel(400), frame_index, fps)
    assert window.shape == (MEL_BANDS, MEL_WINDOW)
    assert window[0, 0] == start == int(frame_index * 80 / fps)
    assert np.array_equal(window[0], np.arange(start, start + MEL_WINDOW))


def test_window_past_the_end_is_the_last_sixteen_frames() -> None:
    mel = ramp_mel(100)
    # Frame 30 at 25 fps starts at mel frame 96; only 4 frames remain.
    window = mel_window(mel, 30, 25)
    assert np.array_equal(window[0], np.arange(84, 100))
    assert np.array_equal(mel_window(mel, 10_000, 25), window)


def test_short_audio_window_is_padded_with_silence() -> None:
    window = mel_window(ramp_mel(5), 0, 25)
    assert window.shape == (MEL_BANDS, MEL_WINDOW)
    assert np.array_equal(window[0, :5], np.arange(5))
    assert np.all(window[:, 5:] == -4.0)


def test_negative_frame_index_is_refused() -> None:
    with pytest.raises(ValueError, match="frame_index"):
        mel_window(ramp_mel(100), -1, 25)


def test_ten_minutes_of_audio_keeps_memory_flat() -> None:
    audio = noisy_tones(600.0, seed=10)
    mel_spectrogram(audio[:SAMPLE_RATE])  # warm caches (window, filterbank) outside the trace
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        mel = mel_spectrogram(audio)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    extra = peak - before - mel.nbytes
    print(f"10 min: output {mel.nbytes / 2**20:.1f} MiB, extra peak {extra / 2**20:.1f} MiB")
    assert extra < MEMORY_BUDGET_BYTES


def test_one_minute_runtime_is_reported() -> None:
    audio = noisy_tones(60.0, seed=1)
    mel_spectrogram(audio[:SAMPLE_RATE])
    started = time.perf_counter()
    mel = mel_spectrogram(audio)
    elapsed = time.perf_counter() - started
    print(f"1 min of audio: {elapsed * 1000:.1f} ms for {mel.shape[1]} mel frames")
    assert mel.shape == (MEL_BANDS, 1 + audio.size // HOP)
