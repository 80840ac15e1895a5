"""The /live page in a real browser (Chromium under Playwright, a fake microphone playing
speech with pauses): it connects to a live session, the video plays at >= 20 fps by the
browser's own getStats(), the mouth seen in the page follows the voice sent and rests in
the silences, and an audio track arrives.

The page-only tests need no Triton (`dh api` serves the page); the same session runs
against tests/live/stub_server.py (the contract alone) and against the real live-session
server (orchestrator/live) with a real Triton.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from synthmedia.avatar import mouth_region
from tests.api import conftest as api_fixtures
from tests.api.conftest import API_KEY, AVATAR_SIZE, ServerFactory, register_avatar
from tests.api.server import ApiServer
from tests.live import browser_fixtures
from tests.live.browser_fixtures import PAUSE_S, PHRASE_S, FakeMicrophone, mouth_follows_voice
from tests.live.stub_server import AVATAR_ID as STUB_AVATAR
from tests.live.stub_server import running_stub

# Fixtures shared with tests/api (a real `dh serve` with a prepared avatar) and the browser's.
api_media = api_fixtures.api_media
avatar_video = api_fixtures.avatar_video
avatar_cache = api_fixtures.avatar_cache
server_factory = api_fixtures.server_factory
fake_microphone = browser_fixtures.fake_microphone
browser = browser_fixtures.browser

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "build" / "live.png"
DOCS_SCREENSHOT = REPO / "docs" / "img" / "live.png"
MIN_FPS = 20.0
MIN_CORRELATION = 0.6
# In silences the mouth moves less than this fraction of its motion in speech (head sway
# alone moves the region's pixels a little).
MAX_SILENCE_MOTION = 0.25
# Seconds of session the mouth is sampled over: two loops of the fake microphone's file.
SAMPLE_S = 2 * 4 * (PHRASE_S + PAUSE_S)
CONNECT_TIMEOUT_MS = 60_000

# Samples the video element in the page: each frame drawn to a canvas, the mean luma of
# the mouth region read back, with the frame's time on the page's clock (the clock the
# page stamps microphone blocks with). Also the decoded-frame rate from getStats().
SAMPLE_MOUTH = """
async ([x, y, w, h, seconds]) => {
  const video = document.getElementById("video");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const decoded = async () => {
    let frames = 0;
    (await window.live.pc.getStats()).forEach((entry) => {
      if (entry.type === "inbound-rtp" && entry.kind === "video") frames = entry.framesDecoded;
    });
    return { t: performance.now(), frames };
  };
  const first = await decoded();
  const frames = [];
  await new Promise((resolve) => {
    const stop = performance.now() + seconds * 1000;
    const onFrame = (now) => {
      context.drawImage(video, 0, 0, canvas.width, canvas.height);
      const pixels = context.getImageData(x, y, w, h).data;
      let sum = 0;
      for (let i = 0; i < pixels.length; i += 4) {
        sum += 0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2];
      }
      frames.push({ t: now, luma: sum / (pixels.length / 4) });
      if (now < stop) video.requestVideoFrameCallback(onFrame);
      else resolve();
    };
    video.requestVideoFrameCallback(onFrame);
  });
  const last = await decoded();
  return {
    frames,
    fps: (last.frames - first.frames) / ((last.t - first.t) / 1000),
    levels: window.live.micLevels.filter((level) => level.t >= frames[0].t - 3000),
    stats: window.live.stats,
    errors: window.live.errors,
  };
}
"""


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`dh api` alone: serves the page with no Triton behind it."""
    data_dir = tmp_path_factory.mktemp("live-page")
    server = ApiServer(data_dir=data_dir, settings={}, log_path=data_dir / "api.log", role="api")
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def stub_server() -> Iterator[str]:
    with running_stub() as base:
        yield base


def test_the_fake_microphone_file_has_speech_and_silences(fake_microphone: FakeMicrophone) -> None:
    samples = fake_microphone.samples
    blocks = samples[: samples.size // 320 * 320].reshape(-1, 320)  # 20 ms blocks
    rms = np.sqrt((blocks**2).mean(axis=1))
    assert fake_microphone.path.stat().st_size > 0
    assert (rms > 0.05).mean() > 0.3
    assert (rms == 0).mean() > 0.3  # real silences, not quiet speech


def test_chromium_loads_the_page_and_hears_the_fake_microphone(
    browser: Any, page_server: ApiServer
) -> None:
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"failed {request.url}"))
    page.goto(f"{page_server.base_url}/live")
    page.wait_for_function("document.getElementById('avatar').options.length > 0")
    assert "no prepared avatar" in page.inner_text("#avatar")
    # The fake microphone plays the file: its loudness, measured in the page, rises above
    # silence within a phrase.
    level = page.evaluate(
        """async () => {
          const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
          const context = new AudioContext();
          const analyser = context.createAnalyser();
          context.createMediaStreamSource(stream).connect(analyser);
          const samples = new Float32Array(analyser.fftSize);
          let loudest = 0;
          const stop = performance.now() + 4000;
          while (performance.now() < stop) {
            await new Promise((resolve) => setTimeout(resolve, 50));
            analyser.getFloatTimeDomainData(samples);
            loudest = Math.max(loudest, Math.max(...samples.map(Math.abs)));
          }
          stream.getTracks().forEach((track) => track.stop());
          await context.close();
          return loudest;
        }"""
    )
    assert level > 0.1
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT.with_name("live-page.png")), full_page=True)
    assert problems == []
    page.close()


def _session_in_page(
    browser: Any, base_url: str, api_key: str, avatar_id: str, screenshot: Path
) -> None:
    """The whole user's path on /live: key, avatar, connect, talk (the fake microphone),
    watch, disconnect; with every assertion of the issue on what the page saw."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{base_url}/live")
    page.fill("#api-key", api_key)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function(
        f"[...document.getElementById('avatar').options].some(o => o.value === '{avatar_id}')"
    )
    page.select_option("#avatar", avatar_id)
    page.click("#connect")
    page.wait_for_function(
        "window.live.stats.framesDecoded > 25 && window.live.micBlocksHeard > 50",
        timeout=CONNECT_TIMEOUT_MS,
    )
    seen = page.evaluate(SAMPLE_MOUTH, [*mouth_region(AVATAR_SIZE), SAMPLE_S])
    page.wait_for_function("window.live.stats.audioSamples > 0")  # an audio track arrives
    page.wait_for_function("document.getElementById('server-session').textContent !== '–'")
    screenshot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)

    assert seen["errors"] == [] and problems == []
    assert seen["fps"] >= MIN_FPS, seen["stats"]
    frames, levels = seen["frames"], seen["levels"]
    following = mouth_follows_voice(
        np.array([level["t"] for level in levels]) / 1000,
        np.array([level["rms"] for level in levels]),
        np.array([frame["t"] for frame in frames]) / 1000,
        -np.array([frame["luma"] for frame in frames]),  # darker mouth: more open
    )
    assert following.correlation >= MIN_CORRELATION, following
    assert following.silence_motion <= MAX_SILENCE_MOTION * following.speech_motion, following
    page.click("#disconnect")
    page.wait_for_function("document.getElementById('connect').disabled === false")
    headers = {"Authorization": f"Bearer {api_key}"}
    assert httpx.get(f"{base_url}/v1/sessions", headers=headers).json()["items"] == []
    assert problems == []
    page.close()


def test_the_page_drives_a_session_of_the_contract(browser: Any, stub_server: str) -> None:
    """Against tests/live/stub_server.py (the contract, with a mouth that darkens by the
    loudness heard): the page's side of every route works before the real server exists."""
    _session_in_page(
        browser, stub_server, API_KEY, STUB_AVATAR, SCREENSHOT.with_name("live-stub.png")
    )


@pytest.fixture(scope="module")
def still_avatar_video(avatar_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test avatar's first frame held for 2 s: its own motion would hide the mouth's in a
    fixed region sampled from the page, so only the speech may move it."""
    still = tmp_path_factory.mktemp("still-avatar") / "still.mp4"
    with av.open(str(avatar_video)) as source:
        first = next(source.decode(video=0)).to_ndarray(format="rgb24")
    with av.open(str(still), "w") as target:
        stream = target.add_stream("libx264", rate=25)
        stream.width, stream.height = first.shape[1], first.shape[0]
        stream.pix_fmt = "yuv420p"
        for _ in range(50):
            frame = av.VideoFrame.from_ndarray(first, format="rgb24")
            for packet in stream.encode(frame):
                target.mux(packet)
        for packet in stream.encode():
            target.mux(packet)
    return still


def test_the_page_connects_and_the_mouth_follows_the_microphone(
    browser: Any, server_factory: ServerFactory, still_avatar_video: Path
) -> None:
    server = server_factory(api_key=API_KEY)
    with httpx.Client(base_url=server.base_url, timeout=10.0) as probe:
        routes = probe.get("/openapi.json").json()["paths"]
    if "/v1/sessions" not in routes:
        pytest.fail("this server has no /v1/sessions: the live-session server is not merged")
    avatar_id = register_avatar(server, still_avatar_video)
    _session_in_page(browser, server.base_url, API_KEY, avatar_id, SCREENSHOT)


def test_the_analysis_finds_the_delay_and_the_silences() -> None:
    """mouth_follows_voice on made-up signals: a mouth that follows the voice 0.4 s late."""
    rng = np.random.default_rng(0)
    level_t = np.arange(0, 12, 0.02)
    speaking = (level_t % 3.2) < 1.6
    level = np.where(speaking, 0.2 + 0.1 * np.sin(level_t * 25) ** 2, 0.0)
    mouth_t = np.arange(0.5, 12, 0.04)
    darkness = np.interp(mouth_t - 0.4, level_t, level) + rng.normal(0, 0.002, mouth_t.size)
    following = mouth_follows_voice(level_t, level, mouth_t, darkness)
    assert abs(following.lag_s - 0.4) <= 0.04
    assert following.correlation > 0.95
    assert following.silence_motion < 0.1 * following.speech_motion
    # A mouth that ignores the voice does not pass.
    still = mouth_follows_voice(level_t, level, mouth_t, rng.normal(0, 1, mouth_t.size))
    assert still.correlation < MIN_CORRELATION


def test_a_screenshot_is_kept_for_the_readme() -> None:
    """docs/img/live.png is what the README shows: a copy of build/live.png, which the
    session test above saves (copied by hand when the page changes, so that running the
    tests never changes a committed file)."""
    assert DOCS_SCREENSHOT.exists() and DOCS_SCREENSHOT.stat().st_size > 0
    assert str(DOCS_SCREENSHOT.relative_to(REPO)) in (REPO / "README.md").read_text()
