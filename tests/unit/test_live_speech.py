"""Live sessions' pure parts: PCM intake, the speech timeline, each frame's mel window."""

from __future__ import annotations

from fractions import Fraction

import aioice.ice
import numpy as np
import pytest

from orchestrator.errors import BadInput
from orchestrator.live.frames import (
    GROUP_WAIT_SHARE,
    due_at,
    final_at,
    frame_mel_window,
    group_size,
    window_span,
)
from orchestrator.live.peer import host_addresses
from orchestrator.live.speech import Resampler, Timeline, announced_rate, pcm_samples
from orchestrator.pipeline.mel import SAMPLE_RATE, mel_spectrogram, mel_window
from synthmedia.audio import voiced_speech


def test_pcm_is_read_as_little_endian_16_bit_samples() -> None:
    samples = pcm_samples(np.array([0, 16384, -32768], "<i2").tobytes())
    np.testing.assert_array_equal(samples, [0.0, 0.5, -1.0])


def test_an_odd_byte_count_is_malformed_pcm() -> None:
    with pytest.raises(BadInput, match="odd"):
        pcm_samples(b"\x00\x01\x02")


@pytest.mark.parametrize("text", ['{"sample_rate": 48000}', "48000"])
def test_a_rate_is_announced_as_json(text: str) -> None:
    assert announced_rate(text) == 48000


@pytest.mark.parametrize("text", ["fast", '{"sample_rate": 3}', '{"rate": 48000}', "true", "4.5e4"])
def test_a_bad_rate_announcement_is_refused(text: str) -> None:
    with pytest.raises(BadInput):
        announced_rate(text)


def test_another_rate_is_resampled_to_16_khz_across_chunks() -> None:
    resample = Resampler(48000)
    tone = np.sin(2 * np.pi * 440 * np.arange(48000) / 48000).astype(np.float32)
    out = np.concatenate([resample(tone[i : i + 960]) for i in range(0, tone.size, 960)])
    assert abs(out.size - SAMPLE_RATE) <= 64  # the resampler holds back a few samples
    # Still a 440 Hz tone: the strongest bin of its spectrum.
    spectrum = np.abs(np.fft.rfft(out[: SAMPLE_RATE // 2]))
    assert abs(np.argmax(spectrum) * 2 - 440) <= 2


def test_speech_is_written_after_what_is_queued_and_gaps_are_silence() -> None:
    timeline = Timeline(2.0)
    loud = np.full(100, 0.5, np.float32)
    assert timeline.write(loud, 1000) == (1000, 1100)
    assert timeline.write(loud, 500) == (1100, 1200)  # never before what is queued
    np.testing.assert_array_equal(timeline.read(900, 400)[:100], 0.0)
    np.testing.assert_array_equal(timeline.read(900, 400)[100:300], 0.5)
    assert timeline.has_speech(1150, 1160) and not timeline.has_speech(0, 1000)


def test_quiet_audio_is_kept_but_needs_no_model() -> None:
    timeline = Timeline(2.0)
    timeline.write(np.full(100, 1e-4, np.float32), 0)
    assert timeline.end == 100 and not timeline.has_speech(0, 100)


def test_truncate_drops_what_is_queued_from_a_position_on() -> None:
    timeline = Timeline(2.0)
    timeline.write(np.full(1000, 0.5, np.float32), 0)
    timeline.truncate(400)
    assert timeline.end == 400
    assert timeline.has_speech(300, 400) and not timeline.has_speech(400, 1000)
    np.testing.assert_array_equal(timeline.read(400, 10), 0.0)


def test_played_audio_is_forgotten_and_memory_stays_bounded() -> None:
    timeline = Timeline(1.0)
    chunk = np.full(SAMPLE_RATE // 50, 0.5, np.float32)
    for step in range(50 * 60):  # a minute, played as it is written
        timeline.write(chunk, step * chunk.size)
        timeline.forget_before(step * chunk.size - SAMPLE_RATE)
    assert timeline._buffer.size <= 4 * SAMPLE_RATE
    np.testing.assert_array_equal(timeline.read(timeline.end - 10, 10), 0.5)


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)])
def test_a_live_frame_takes_the_same_mel_window_as_in_batch(fps: Fraction) -> None:
    audio = voiced_speech(3.0).astype(np.float32)
    batch = mel_spectrogram(audio)
    for index in range(3, 60, 7):
        start, end = window_span(index, fps)
        live = frame_mel_window(audio[start:end])
        np.testing.assert_allclose(live, mel_window(batch, index, float(fps)), atol=1e-4)


def test_a_frame_is_final_before_it_is_due_by_the_latency_less_the_look_ahead() -> None:
    fps = Fraction(25)
    for index in (0, 10, 1000):
        budget = due_at(index, fps) - final_at(index, fps, 0.4)
        assert 0.18 < budget < 0.19  # 0.4 s less the 0.2 s window and half an STFT frame


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001), Fraction(60)])
@pytest.mark.parametrize("latency_s", [0.3, 0.4, 1.0])
def test_a_request_of_frames_waits_at_most_half_its_first_frames_render_time(
    fps: Fraction, latency_s: float
) -> None:
    for index in (0, 7, 1000):
        size = group_size(index, 16, fps, latency_s)
        assert 1 <= size <= 16
        render_s = due_at(index, fps) - final_at(index, fps, latency_s)
        wait_s = final_at(index + size - 1, fps, latency_s) - final_at(index, fps, latency_s)
        assert wait_s <= GROUP_WAIT_SHARE * render_s
        assert group_size(index, 1, fps, latency_s) == 1


def test_the_default_latency_sends_three_frames_per_request_at_most() -> None:
    assert group_size(10, 2, Fraction(25), 0.4) == 2
    assert group_size(10, 8, Fraction(25), 0.4) == 3
    assert group_size(10, 8, Fraction(25), 1.0) == 8


def test_host_candidates_can_be_limited_to_given_addresses() -> None:
    original = aioice.ice.get_host_addresses
    with host_addresses(["127.0.0.1", "::1"]):
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    assert aioice.ice.get_host_addresses is original
