"""Synthetic audio: speech-like signals, timed clicks, and audio files in common formats."""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import scipy.signal

# The rate the lipsync mel is computed at (Wav2Lip's hparams.sample_rate).
SPEECH_RATE = 16000
# Typical adult male voice pitch range in Hz (fundamental frequency of the glottal pulses).
PITCH_LOW_HZ, PITCH_HIGH_HZ = 110.0, 140.0
# Cycle-to-cycle pitch jitter of normal voice, about 1 % of the period.
PITCH_JITTER = 0.01
# Syllables per second of conversational speech.
SYLLABLE_RATE_HZ = 4.0
# Fraction of a syllable spent rising and falling: a sustained vowel with soft on/offsets.
_SYLLABLE_TAPER = 0.6
# Formant frequencies and bandwidths in Hz of five vowels (Peterson & Barney 1952, male).
VOWEL_FORMANTS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((730, 90), (1090, 110), (2440, 170)),  # a
    ((530, 60), (1840, 100), (2480, 160)),  # e
    ((270, 60), (2290, 100), (3010, 170)),  # i
    ((570, 70), (840, 80), (2410, 170)),  # o
    ((300, 60), (870, 80), (2240, 170)),  # u
)
# Pause between phrases in seconds (low, high): a breath, as in read speech.
PHRASE_PAUSE_S = (0.3, 0.6)
# Continuous speech: no gap longer than this anywhere (syllable gaps are at most 0.05 s).
CONTINUOUS_PAUSE_S = (0.0, 0.1)
# Peak level of generated speech: loud but well clear of clipping after lossy coding.
SPEECH_PEAK = 0.6
# Peak amplitude of a noise burst: near full scale, so a click stands out from anything.
BURST_AMPLITUDE = 0.8
# Samples per frame handed to the encoder; the encoder re-chunks to its own frame size.
_ENCODE_CHUNK = 4096
# Sample rates libopus accepts; anything else is resampled to 48 kHz, Opus' native rate.
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# Words espeak-ng speaks per second at its default 175 words per minute.
_ESPEAK_WORDS_PER_SECOND = 175 / 60
_DEFAULT_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "A digital human speaks the words it is given, and its mouth follows the sound. "
    "Every frame of the video is driven by a short window of the audio."
)


def voiced_speech(
    seconds: float,
    sample_rate: int = SPEECH_RATE,
    seed: int = 0,
    phrase_pause_s: tuple[float, float] = PHRASE_PAUSE_S,
) -> np.ndarray:
    """A speech-like float32 mono signal: voiced syllables at ~4 Hz with pauses between phrases
    (each drawn from `phrase_pause_s`, seconds).

    Glottal pulses with jittered pitch excite three formant resonators chosen per syllable;
    a raised-cosine envelope shapes each syllable. No words, but a mel spectrogram, a voice
    activity detector and a lip-sync model all see speech.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    rng = np.random.default_rng(seed)
    total = round(seconds * sample_rate)
    source = _glottal_source(total, sample_rate, rng)
    speech = np.zeros(total, dtype=np.float64)
    position = int(rng.uniform(0.05, 0.2) * sample_rate)
    while position < total:
        for _ in range(int(rng.integers(3, 7))):  # syllables in one phrase
            length = int(rng.uniform(0.6, 1.0) / SYLLABLE_RATE_HZ * sample_rate)
            stop = min(position + length, total)
            if stop <= position:
                break
            vowel = VOWEL_FORMANTS[int(rng.integers(len(VOWEL_FORMANTS)))]
            syllable = _formant_filter(source[position:stop], vowel, sample_rate)
            # Resonator gains differ by vowel; equal loudness per syllable is closer to speech.
            syllable /= max(float(np.sqrt(np.mean(syllable**2))), 1e-9)
            envelope = scipy.signal.windows.tukey(stop - position, _SYLLABLE_TAPER)
            speech[position:stop] += syllable * envelope * rng.uniform(0.6, 1.0)
            position = stop + int(rng.uniform(0.0, 0.05) * sample_rate)
        position += int(rng.uniform(*phrase_pause_s) * sample_rate)  # between phrases
    peak = float(np.abs(speech).max())
    if peak > 0:
        speech *= SPEECH_PEAK / peak
    return speech.astype(np.float32)


def continuous_speech(seconds: float, sample_rate: int = SPEECH_RATE, seed: int = 0) -> np.ndarray:
    """Speech with no pause longer than 0.2 s: a talker who never stops, the steady load a
    live session's benchmark needs."""
    return voiced_speech(seconds, sample_rate, seed, phrase_pause_s=CONTINUOUS_PAUSE_S)


def speech_with_pauses(
    phrases: int, speech_s: float = 1.6, pause_s: float = 1.6, sample_rate: int = SPEECH_RATE
) -> np.ndarray:
    """`phrases` stretches of continuous speech, each followed by `pause_s` of silence (the
    signal starts with speech and ends in silence): a microphone whose talker stops, so a
    test sees the mouth move with the voice and stay still in the silences."""
    silence = np.zeros(round(pause_s * sample_rate), dtype=np.float32)
    parts = []
    for index in range(phrases):
        parts += [continuous_speech(speech_s, sample_rate, seed=index), silence]
    return np.concatenate(parts)


def bursts(
    seconds: float,
    burst_times: list[float],
    burst_seconds: float = 0.04,
    sample_rate: int = SPEECH_RATE,
) -> np.ndarray:
    """Silence except loud white-noise bursts starting at `burst_times` (seconds)."""
    total = round(seconds * sample_rate)
    audio = np.zeros(total, dtype=np.float32)
    rng = np.random.default_rng(len(burst_times))
    length = max(1, round(burst_seconds * sample_rate))
    for time in burst_times:
        if not 0 <= time < seconds:
            raise ValueError(f"burst at {time} s is outside the {seconds} s of audio")
        start = round(time * sample_rate)
        stop = min(start + length, total)
        audio[start:stop] = BURST_AMPLITUDE * rng.uniform(-1.0, 1.0, stop - start)
    return audio


def write_speech(path: Path, seconds: float, text: str | None = None) -> str:
    """Write `seconds` of speech to `path` (format by suffix) at 16 kHz mono.

    Uses espeak-ng when installed, else `voiced_speech`; returns which: "espeak-ng" or
    "voiced". The speech is cut or padded with silence to exactly `seconds`.
    """
    total = round(seconds * SPEECH_RATE)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        write_audio(path, voiced_speech(seconds), SPEECH_RATE)
        return "voiced"
    if text is None:
        words = _DEFAULT_TEXT.split()
        wanted = max(1, math.ceil(seconds * _ESPEAK_WORDS_PER_SECOND))
        text = " ".join(words[i % len(words)] for i in range(wanted))
    with tempfile.TemporaryDirectory() as scratch:
        spoken = Path(scratch) / "espeak.wav"
        subprocess.run([espeak, "-w", str(spoken), text], check=True, capture_output=True)
        samples, rate = read_wav(spoken)
    if rate != SPEECH_RATE:
        common = math.gcd(rate, SPEECH_RATE)
        samples = scipy.signal.resample_poly(samples, SPEECH_RATE // common, rate // common)
    fitted = np.zeros(total, dtype=np.float32)
    fitted[: min(total, samples.size)] = samples[:total]
    write_audio(path, fitted, SPEECH_RATE)
    return "espeak-ng"


def write_audio(
    path: Path, samples: np.ndarray, sample_rate: int = SPEECH_RATE, channels: int = 1
) -> None:
    """Write float samples in [-1, 1] to `path`; the suffix picks the format.

    `samples` is mono [n] (copied to every channel) or [n, channels]. Suffixes: .wav
    (16-bit PCM), .m4a/.mp4/.aac (AAC), .mp3, .ogg/.opus (Opus), .flac.
    """
    path = Path(path)
    planar = _planar(samples, channels)
    suffix = path.suffix.lower()
    if suffix == ".wav":
        _write_wav(path, planar, sample_rate)
        return
    if suffix in (".m4a", ".mp4", ".aac"):
        codec, rate = "aac", sample_rate
    elif suffix == ".mp3":
        codec, rate = "libmp3lame", sample_rate
    elif suffix in (".ogg", ".opus"):
        codec = "libopus"
        rate = sample_rate if sample_rate in _OPUS_RATES else 48000
    elif suffix == ".flac":
        codec, rate = "flac", sample_rate
    else:
        raise ValueError(f"no audio format for suffix {suffix!r}")
    if codec not in av.codecs_available:
        raise ValueError(f"this PyAV build has no {codec} encoder for {suffix}")
    # .aac alone is the raw ADTS muxer; the others pick their muxer from the suffix.
    container_format = "adts" if suffix == ".aac" else None
    with av.open(str(path), "w", format=container_format) as container:
        encode_audio_track(container, planar, sample_rate, codec=codec, codec_rate=rate)


def encode_audio_track(
    container: av.container.OutputContainer,
    planar: np.ndarray,
    sample_rate: int,
    *,
    codec: str,
    codec_rate: int,
) -> None:
    """Add an audio stream to `container` and encode float32 [channels, n] samples into it."""
    layout = _layout(planar.shape[0])
    stream = container.add_stream(codec, rate=codec_rate, layout=layout)
    assert isinstance(stream, av.AudioStream), f"{codec} is an audio codec"
    for start in range(0, planar.shape[1], _ENCODE_CHUNK):
        frame = audio_frame(planar[:, start : start + _ENCODE_CHUNK], sample_rate, start)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def audio_frame(planar: np.ndarray, sample_rate: int, pts: int) -> av.AudioFrame:
    """A float-planar PyAV frame holding [channels, n] samples that start at sample `pts`."""
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(planar, dtype=np.float32), format="fltp", layout=_layout(len(planar))
    )
    frame.sample_rate = sample_rate
    frame.time_base = Fraction(1, sample_rate)
    frame.pts = pts
    return frame


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM wav as float32 mono (channels averaged) and its sample rate."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit wav is supported")
        channels, rate = wav.getnchannels(), wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return (pcm.reshape(-1, channels).mean(axis=1) / 32768.0).astype(np.float32), rate


def write_random_bytes(path: Path, n: int, seed: int = 0) -> None:
    """A file of `n` random bytes: not media in any format."""
    Path(path).write_bytes(np.random.default_rng(seed).bytes(n))


def write_empty(path: Path) -> None:
    """A zero-byte file."""
    Path(path).write_bytes(b"")


def _glottal_source(total: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Glottal pulse train with a slowly wandering, jittered pitch, plus a breath of noise."""
    t = np.arange(total) / sample_rate
    middle = (PITCH_LOW_HZ + PITCH_HIGH_HZ) / 2
    swing = (PITCH_HIGH_HZ - PITCH_LOW_HZ) / 2
    pitch = middle + swing * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))
    phase = np.cumsum(pitch / sample_rate)
    # One pulse per pitch period, each displaced by the jitter.
    onsets = np.searchsorted(phase, np.arange(1, int(phase[-1]) + 1))
    onsets += np.round(rng.normal(0.0, PITCH_JITTER, onsets.size) * sample_rate / middle).astype(
        onsets.dtype
    )
    pulses = np.zeros(total)
    np.add.at(pulses, onsets[(onsets >= 0) & (onsets < total)], 1.0)
    # Two real poles near 1: the glottal spectrum falls about 12 dB per octave.
    source = scipy.signal.lfilter([1.0], [1.0, -1.9, 0.9025], pulses)
    source -= source.mean()
    source /= max(float(np.abs(source).max()), 1e-9)
    voiced: np.ndarray = source + 0.02 * rng.standard_normal(total)
    return voiced


def _formant_filter(
    source: np.ndarray, formants: tuple[tuple[float, float], ...], sample_rate: int
) -> np.ndarray:
    """Cascade of two-pole resonators, one per (frequency, bandwidth) formant."""
    shaped = source
    for frequency, bandwidth in formants:
        radius = math.exp(-math.pi * bandwidth / sample_rate)
        angle = 2 * math.pi * frequency / sample_rate
        denominator = [1.0, -2 * radius * math.cos(angle), radius * radius]
        shaped = scipy.signal.lfilter([1.0 - radius], denominator, shaped)
    return shaped


def _planar(samples: np.ndarray, channels: int) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return np.repeat(samples[None, :], channels, axis=0)
    if samples.ndim == 2 and samples.shape[1] == channels:
        return np.ascontiguousarray(samples.T)
    raise ValueError(f"samples must be [n] or [n, {channels}], got {samples.shape}")


def _layout(channels: int) -> str:
    layouts = {1: "mono", 2: "stereo"}
    if channels not in layouts:
        raise ValueError(f"only mono or stereo audio is written, not {channels} channels")
    return layouts[channels]


def _write_wav(path: Path, planar: np.ndarray, sample_rate: int) -> None:
    pcm = np.clip(np.round(planar.T * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(planar.shape[0])
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())


__all__ = [
    "bursts",
    "continuous_speech",
    "read_wav",
    "speech_with_pauses",
    "voiced_speech",
    "write_audio",
    "write_empty",
    "write_random_bytes",
    "write_speech",
]
