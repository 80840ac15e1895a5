"""benchmarks.live and its parts: late frames, the delay the mouth follows the voice
at, the search over N, and the summary's JSON line."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import live
from benchmarks.live import codec_rate
from benchmarks.live_client import CpuPerFrame, SessionLog, live_round, round_from_logs
from benchmarks.live_figures import (
    LATE_LIMIT,
    LATE_S,
    Round,
    frame_latencies,
    largest_passing,
    late_fraction,
    next_count,
    onset_delay,
    search,
    summary,
)
from benchmarks.live_servers import SERVER_PIDS, descendants
from synthmedia.audio import continuous_speech
from synthmedia.avatar import mouth_region
from tests.live.stub_server import AVATAR_ID as STUB_AVATAR
from tests.live.stub_server import SIZE, running_stub

PERIOD = 1 / 25


def _schedule(frames: int) -> np.ndarray:
    return np.arange(frames) * PERIOD


def test_frames_on_their_schedule_are_not_late() -> None:
    due = _schedule(100)
    assert late_fraction(due + 0.35, due, PERIOD) == 0.0  # a constant delay is not lateness


def test_a_frame_past_the_jitter_allowance_is_late_and_a_missing_one_too() -> None:
    due = _schedule(100)
    arrival = due + 0.2
    arrival[10] += LATE_S + 0.01
    assert late_fraction(arrival, due, PERIOD) == pytest.approx(1 / 100)
    kept = np.delete(np.arange(100), [50, 51])  # two frames never came
    assert late_fraction(arrival[kept], due[kept], PERIOD) == pytest.approx(3 / 100)


def test_no_frame_at_all_is_all_late() -> None:
    assert late_fraction(np.array([]), np.array([]), PERIOD) == 1.0


def _voice_and_mouth(
    delay: float, silent_s: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loudness sent (silent for `silent_s` first) and a mouth that follows it `delay` later."""
    rng = np.random.default_rng(0)
    level_t = np.arange(0, 8, 0.02)
    level = np.abs(np.sin(level_t * 2 * np.pi * 2)) * (0.5 + 0.5 * rng.uniform(size=level_t.size))
    level[level_t < silent_s] = 0.0
    frame_t = np.arange(0.0 if silent_s else 0.5, 8, PERIOD)
    # The mouth's mean luma: darker (lower) the louder the voice `delay` ago, 40 grey levels
    # at full scale, with a little codec noise.
    mouth = 120 - 40 * np.interp(frame_t - delay, level_t, level)
    return level_t, level, frame_t, mouth + rng.normal(0, 0.05, frame_t.size)


def test_each_frame_latency_is_the_delay_plus_its_own_jitter() -> None:
    due = _schedule(5)
    arrival = due + 1.0 + np.array([0.0, 0.0, 0.05, 0.0, -0.01])
    latencies = frame_latencies(0.3, arrival, due)
    assert np.median(latencies) == pytest.approx(0.3)
    assert latencies[2] == pytest.approx(0.35)


def _passing_up_to(limit: int) -> tuple[list[int], dict[int, Round]]:
    tried: list[int] = []

    def measure(n: int) -> Round:
        tried.append(n)
        return Round(sessions=n, fps=25.0 * n, late=0.0 if n <= limit else 0.05)

    return tried, search(measure, ceiling=32)


def test_the_search_doubles_then_halves_to_the_largest_passing_count() -> None:
    tried, rounds = _passing_up_to(5)
    assert tried == [1, 2, 4, 8, 6, 5]
    assert largest_passing(rounds) == 5


def test_the_search_stops_at_the_ceiling_and_at_nothing_passing() -> None:
    tried, rounds = _passing_up_to(100)
    assert tried == [1, 2, 4, 8, 16, 32]
    assert largest_passing(rounds) == 32
    tried, rounds = _passing_up_to(0)
    assert tried == [1]
    assert largest_passing(rounds) == 0


def test_a_count_counts_only_when_every_smaller_one_tried_passed() -> None:
    rounds = {n: Round(n, 25.0 * n, 0.0) for n in (1, 4)} | {2: Round(2, 50.0, 0.5)}
    assert largest_passing(rounds) == 1
    assert next_count({}, 8) == 1


def test_the_codec_rate_is_taken_at_the_load_of_the_largest_passing_count() -> None:
    rounds = {
        1: Round(1, 25.0, 0.0, cpu_s_per_frame=0.010),
        2: Round(2, 50.0, 0.0, cpu_s_per_frame=0.008),
        4: Round(4, 90.0, 0.3, cpu_s_per_frame=0.007),
    }
    cores = os.cpu_count() or 1
    assert codec_rate(rounds, None, 999.0) == pytest.approx(cores / 0.008)
    # Unmeasured (a server not started here): CODEC_SESSIONS sessions, else the encoder.
    unmeasured = {1: Round(1, 25.0, 0.0)}
    fallback = CpuPerFrame(path=0.02, whole=0.03)
    assert codec_rate(unmeasured, fallback, 999.0) == pytest.approx(cores / 0.02)
    assert codec_rate({1: Round(1, 25.0, 0.5)}, None, 999.0) == 999.0


def test_the_summary_is_one_json_line_with_the_issues_figures() -> None:
    rounds = {1: Round(1, 25.0, 0.0, 0.2, 0.3), 2: Round(2, 50.0, 0.0, 0.25, 0.4)}
    rounds[4] = Round(4, 70.0, 0.2, 0.9, 2.0)
    naive = {1: Round(1, 25.0, 0.0), 2: Round(2, 30.0, 0.3)}
    figures = summary(rounds, naive, model_fps=200.0, codec_fps=100.0)
    line = json.dumps(figures)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["live_sessions_max"] == 2
    assert parsed["live_sessions_naive"] == 1
    assert parsed["live_latency_p95_s"] == 0.4
    limit = 1 / (1 / 200 + 1 / 100)
    assert parsed["live_ratio_limit"] == pytest.approx(50.0 / limit)


def test_a_round_from_session_logs() -> None:
    start, stop = 100.0, 108.0
    level_t, level, frame_t, mouth = _voice_and_mouth(0.3, silent_s=0.4)

    def session(**seen: Any) -> SessionLog:
        return SessionLog(
            sent_t=list(level_t + start),
            sent_level=list(level),
            arrival=list(frame_t + start),
            due=list(frame_t - 0.3),
            **seen,
        )

    watched = session(mouth_t=list(frame_t + start), mouth=list(mouth))
    timed = session()  # frames timed, not decoded
    result = round_from_logs(2, [watched, timed], start, stop)
    assert result.fps == pytest.approx(2 * 25, rel=0.05)
    assert result.late == 0.0
    assert result.latency_p50_s == pytest.approx(0.3, abs=0.02)
    # A session that saw nothing makes the round fail ...
    assert not round_from_logs(2, [watched, SessionLog()], start, stop).passed
    # ... and so do frames its server showed idle, on time but without lip-sync.
    idle_shown = session(server_late=5)
    assert round_from_logs(2, [watched, idle_shown], start, stop).late > LATE_LIMIT
    assert LATE_LIMIT == 0.01


def test_sessions_against_a_stub_of_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's client (WebSocket up, WebRTC down, aiortc) against
    tests/live/stub_server.py, whose mouth darkens with the loudness it hears; the stub's
    CPU per frame is counted as a server started by the benchmark would be."""
    pcm = np.round(continuous_speech(3.0) * 32767).astype(np.int16)
    with running_stub() as base:
        (stub,) = [
            pid
            for pid in descendants(os.getpid())
            if b"tests.live.stub_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        monkeypatch.setitem(SERVER_PIDS, base, stub)
        result = asyncio.run(live_round([(base, STUB_AVATAR)], "", pcm, 2, mouth_region(SIZE)))
    assert result.fps == pytest.approx(2 * 25, rel=0.2)
    assert result.latency_p50_s is not None
    assert 0 <= result.latency_p50_s < 1.0
    # The stub and this client encode, send, receive and decode every frame: some CPU, and
    # far less than the 2 s a frame would take on both cores at 50 frames a second.
    assert result.cpu_s_per_frame is not None
    assert 0 < result.cpu_s_per_frame < 2 * 2 / 50


def test_sessions_spread_over_two_servers_each_get_their_own_frames() -> None:
    """--replicas: sessions go round robin to each (server, avatar) given."""
    pcm = np.round(continuous_speech(3.0) * 32767).astype(np.int16)
    with running_stub() as first, running_stub() as second:
        servers = [(first, STUB_AVATAR), (second, STUB_AVATAR)]
        result = asyncio.run(live_round(servers, "", pcm, 3, mouth_region(SIZE)))
    assert result.fps == pytest.approx(3 * 25, rel=0.2)


@pytest.mark.parametrize("argv", [["--replicas", "0"], ["--replicas", "2", "--server-url", "x"]])
def test_replicas_are_refused_where_they_cannot_be_run(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        live.main(argv)
    assert exited.value.code == 2


def test_the_onset_of_speech_gives_the_delay_where_a_correlation_would_be_a_syllable_off() -> None:
    # Silence, then speech whose loudness rises and falls every 0.25 s: the mouth changes
    # 0.45 s after the voice starts (darker or lighter: any model's change counts).
    level_t, level, frame_t, mouth = _voice_and_mouth(0.45, silent_s=2.0)
    assert onset_delay(level_t, level, frame_t, mouth) == pytest.approx(0.45, abs=2 * PERIOD)
    lighter = 240 - mouth
    assert onset_delay(level_t, level, frame_t, lighter) == pytest.approx(0.45, abs=2 * PERIOD)
    # A mouth that moves as much at rest as in speech has no onset.
    noise = np.random.default_rng(1).normal(0, 1, frame_t.size)
    assert onset_delay(level_t, level, frame_t, noise) is None


def test_the_live_sessions_get_a_server_process_per_core_unless_one_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plans: list[live.Plan] = []

    def run(plan: live.Plan, triton_url: str | None, out: object) -> int:
        plans.append(plan)
        return 0

    monkeypatch.setattr(live, "run", run)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    live.main([])
    live.main(["--replicas", "1"])
    live.main(["--server-url", "http://127.0.0.1:1"])
    assert [plan.replicas for plan in plans] == [3, 1, 1]
