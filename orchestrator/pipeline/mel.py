"""Wav2Lip's mel spectrogram and the per-frame mel window, in numpy and scipy only.

The numbers reproduce Wav2Lip's `audio.melspectrogram` (hparams.py of Rudrabha/Wav2Lip) as
computed by the librosa it was trained with: a centred STFT padded by *reflection* (newer
librosa pads with zeros, which changes the first and last two frames), a Slaney mel
filterbank, dB with a -100 dB floor, and symmetric normalisation to [-4, 4].

The spectrogram is computed in blocks of frames into a preallocated output, so memory
stays flat however long the audio is: a 10-minute clip never holds its full complex STFT.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import scipy.fft

# Wav2Lip hparams.sample_rate.
SAMPLE_RATE = 16000
# Wav2Lip hparams.num_mels.
MEL_BANDS = 80
# Wav2Lip hparams.hop_size: 12.5 ms at 16 kHz.
HOP = 200
# SAMPLE_RATE / HOP: the mel frame rate Wav2Lip's inference maps video frames onto.
MEL_FRAMES_PER_SECOND = 80
# Wav2Lip's mel_step_size: the lipsync model sees 16 mel frames (0.2 s) per video frame.
MEL_WINDOW = 16

# Wav2Lip hparams.n_fft and hparams.win_size (equal, so the window is not zero-padded).
N_FFT = 800
# Wav2Lip hparams.preemphasis, applied as lfilter([1, -0.97], [1], wav).
PREEMPHASIS = 0.97
# Wav2Lip hparams.fmin / hparams.fmax of the mel filterbank.
FMIN_HZ, FMAX_HZ = 55.0, 7600.0
# Wav2Lip hparams.min_level_db and ref_level_db.
MIN_LEVEL_DB, REF_LEVEL_DB = -100.0, 20.0
# Wav2Lip hparams.max_abs_value with symmetric_mels=True: the range is [-4, 4].
MAX_ABS_VALUE = 4.0
# librosa.stft(center=True) pads half a window on both ends, so frame t is centred on t*HOP.
_PAD = N_FFT // 2
# Frames per STFT block: ~3 MB of complex64 spectrum per block, ~200 blocks per hour.
_BLOCK_FRAMES = 1024
# The amplitude whose dB value is MIN_LEVEL_DB (Wav2Lip's _amp_to_db floor, 1e-5).
_MIN_AMPLITUDE = 10.0 ** (MIN_LEVEL_DB / 20.0)
# Slaney's mel scale (librosa.hz_to_mel with htk=False): linear below 1 kHz, log above.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def mel_frame_count(samples: int) -> int:
    """Frames of a centred STFT with hop HOP over `samples` samples."""
    return 1 + samples // HOP


def mel_spectrogram(audio: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised mel spectrogram: float32 [MEL_BANDS, 1 + len(audio) // HOP].

    `audio` is mono float at SAMPLE_RATE. Values lie in [-4, 4]; silence is -4.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {audio.shape}")
    frames = mel_frame_count(audio.size)
    mel = np.empty((MEL_BANDS, frames), dtype=np.float32)
    if audio.size == 0:
        mel.fill(-MAX_ABS_VALUE)
        return mel
    for first in range(0, frames, _BLOCK_FRAMES):
        last = min(first + _BLOCK_FRAMES, frames)
        # Frame t reads padded samples [t*HOP, t*HOP + N_FFT).
        signal = _padded_preemphasised(audio, first * HOP, (last - 1) * HOP + N_FFT)
        windows = np.lib.stride_tricks.sliding_window_view(signal, N_FFT)[::HOP]
        spectrum = scipy.fft.rfft(windows * _hann(), axis=-1)
        magnitude = np.abs(spectrum)
        del spectrum
        _normalise_db(np.matmul(_mel_filterbank(), magnitude.T), out=mel[:, first:last])
    return mel


def mel_window(mel: np.ndarray, frame_index: int, fps: float) -> np.ndarray:
    """The [MEL_BANDS, MEL_WINDOW] slice of `mel` that drives output video frame `frame_index`.

    Wav2Lip's inference rule: the window starts at int(i * 80 / fps); a window that would
    run past the end is replaced by the last MEL_WINDOW frames; audio shorter than one window
    is padded on the right with silence (-4). The result is a view of `mel` unless padded.
    """
    if frame_index < 0:
        raise ValueError(f"frame_index must be >= 0, got {frame_index}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    frames = mel.shape[1]
    if frames < MEL_WINDOW:
        padded = np.full((mel.shape[0], MEL_WINDOW), -MAX_ABS_VALUE, dtype=mel.dtype)
        padded[:, :frames] = mel
        return padded
    start = int(frame_index * MEL_FRAMES_PER_SECOND / fps)
    start = min(start, frames - MEL_WINDOW)
    return mel[:, start : start + MEL_WINDOW]


def _padded_preemphasised(audio: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of reflect-pad(preemphasis(audio), _PAD) as float32.

    Preemphasis is y[n] = x[n] - 0.97 x[n-1] with y[0] = x[0], i.e. lfilter([1, -0.97], [1])
    over the whole signal; computing it per block from one sample of history gives the same
    values without a full-length copy.
    """
    samples = audio.size
    if samples <= _PAD:
        # np.pad reflects repeatedly when the pad is longer than the signal; old librosa did
        # exactly this, and a clip this short costs nothing to pad whole.
        whole = np.pad(_preemphasised(audio, 0, samples), _PAD, mode="reflect")
        return whole[start:stop]
    lo, hi = start - _PAD, stop - _PAD
    if lo >= 0 and hi <= samples:
        return _preemphasised(audio, lo, hi)
    # One reflection suffices: the pad is shorter than the signal.
    index = np.arange(lo, hi)
    index = np.where(index < 0, -index, index)
    index = np.where(index >= samples, 2 * (samples - 1) - index, index)
    src_lo, src_hi = int(index.min()), int(index.max()) + 1
    return _preemphasised(audio, src_lo, src_hi)[index - src_lo]


def _preemphasised(audio: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Samples [lo, hi) of the preemphasised signal, float32."""
    out = audio[lo:hi].astype(np.float32, copy=True)
    out[1:] -= np.float32(PREEMPHASIS) * audio[lo : hi - 1]
    if lo > 0:
        out[0] -= np.float32(PREEMPHASIS) * np.float32(audio[lo - 1])
    return out


def _normalise_db(mel_amplitude: np.ndarray, out: np.ndarray) -> None:
    """Wav2Lip's _amp_to_db - ref_level_db, then _normalize (symmetric, clipped), into out."""
    np.maximum(mel_amplitude, _MIN_AMPLITUDE, out=mel_amplitude)
    np.log10(mel_amplitude, out=mel_amplitude)
    db = mel_amplitude
    db *= 20.0
    db -= REF_LEVEL_DB
    db -= MIN_LEVEL_DB
    db *= 2 * MAX_ABS_VALUE / -MIN_LEVEL_DB
    db -= MAX_ABS_VALUE
    np.clip(db, -MAX_ABS_VALUE, MAX_ABS_VALUE, out=out)


@cache
def _hann() -> np.ndarray:
    """Periodic Hann window, as scipy/librosa get_window('hann', N_FFT, fftbins=True)."""
    n = np.arange(N_FFT)
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)).astype(np.float32)
    window.flags.writeable = False
    return window


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    linear = hz / _SLANEY_HZ_PER_MEL
    break_mel = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
    safe = np.maximum(hz, _SLANEY_BREAK_HZ)
    logarithmic = break_mel + np.log(safe / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_BREAK_HZ, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    linear = mel * _SLANEY_HZ_PER_MEL
    break_mel = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (mel - break_mel))
    return np.where(mel >= break_mel, logarithmic, linear)


@cache
def _mel_filterbank() -> np.ndarray:
    """float32 [MEL_BANDS, N_FFT // 2 + 1], as librosa.filters.mel(htk=False, norm='slaney')."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_edges = np.linspace(
        _hz_to_mel(np.asarray(FMIN_HZ, np.float64)),
        _hz_to_mel(np.asarray(FMAX_HZ, np.float64)),
        MEL_BANDS + 2,
    )
    edges_hz = _mel_to_hz(mel_edges)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: each triangle has unit area in Hz, so bands are energy-comparable.
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    filterbank = weights.astype(np.float32)
    filterbank.flags.writeable = False
    return filterbank
