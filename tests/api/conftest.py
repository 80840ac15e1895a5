"""Fixtures for the HTTP tests: media, a prepared avatar cache, and real servers.

Detection is the slow part on a CPU (a fraction of a second per detected frame), so one
avatar is prepared once per session and its cache copied into each server's data
directory: uploading the same video there finds it prepared (same content id).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from orchestrator.pipeline.avatar_cache import content_id
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video
from tests.api.server import ApiServer, poll_until
from tests.conftest import TritonAddress

API_KEY = "test-key"
AVATAR_SIZE = (160, 160)
AVATAR_FPS = 25
AVATAR_SECONDS = 1.2
SPEECH_RATE = 16000
# Long enough to be caught mid-render (cancelled, killed) on any machine: the reference
# model renders 160x160 at ~500 frames/s here, so this is a few seconds; as WAV it still
# fits under MAX_UPLOAD_BYTES.
LONG_AUDIO_S = 60.0
# Limits of the main server: test media fit, the over-limit media in test_limits do not.
MAX_UPLOAD_BYTES = 2 * 1024**2
MAX_AUDIO_S = 90.0
MAX_VIDEO_S = 4.0
MAX_VIDEO_SIDE = 320

# Settings every test server shares: cheap detection and small batches for 2 cores.
BASE_SETTINGS: dict[str, object] = {
    "detect_every": 10,
    "lipsync_batch_size": 16,
    "work_threads": 2,
    "triton_ready_timeout_s": 60,
}


@pytest.fixture(scope="session")
def api_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-media")


@pytest.fixture(scope="session")
def avatar_video(api_media: Path) -> Path:
    path = api_media / "avatar.mp4"
    write_avatar_video(path, seconds=AVATAR_SECONDS, fps=AVATAR_FPS, size=AVATAR_SIZE)
    return path


def _speech(path: Path, seconds: float) -> Path:
    write_audio(path, voiced_speech(seconds), SPEECH_RATE)
    return path


@pytest.fixture(scope="session")
def speech(api_media: Path) -> Path:
    return _speech(api_media / "speech.wav", 1.0)


@pytest.fixture(scope="session")
def tiny_speech(api_media: Path) -> Path:
    return _speech(api_media / "tiny.wav", 0.5)


@pytest.fixture(scope="session")
def long_speech(api_media: Path) -> Path:
    return _speech(api_media / "long.wav", LONG_AUDIO_S)


@pytest.fixture(scope="session")
async def avatar_cache(
    avatar_video: Path, triton: TritonAddress, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The prepared cache directory of `avatar_video` (frames and face boxes)."""
    data_dir = tmp_path_factory.mktemp("avatar-cache")
    settings = Settings(
        triton_url=triton.grpc_url, data_dir=data_dir, detect_every=10, work_threads=2
    )
    async with Engine(settings) as engine:
        avatar = await engine.prepare_avatar(avatar_video)
    return avatar.directory


ServerFactory = Callable[..., ApiServer]


@contextmanager
def _servers(
    triton: TritonAddress, avatar_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """Starts servers (each with the avatar cache seeded); stops them all on leaving."""
    started: list[ApiServer] = []

    def start(data_dir: Path | None = None, role: str = "serve", **settings: object) -> ApiServer:
        data_dir = data_dir or tmp_path_factory.mktemp("server-data")
        seeded = data_dir / "avatars" / avatar_cache.name
        if not seeded.exists():
            shutil.copytree(avatar_cache, seeded)
        server = ApiServer(
            data_dir=data_dir,
            settings={
                "triton_url": triton.grpc_url,
                "triton_metrics_url": triton.metrics_url,
                **BASE_SETTINGS,
                **settings,
            },
            log_path=data_dir.parent / f"{data_dir.name}-{role}.log",
            role=role,
        )
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def server_factory(
    triton: TritonAddress, avatar_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """Servers for one module's tests, stopped when the module ends: an idle server still
    polls its store and watches its dependencies, and dozens left running until the end
    of the session slowed every test after them."""
    with _servers(triton, avatar_cache, tmp_path_factory) as start:
        yield start


@pytest.fixture(scope="session")
def session_server_factory(
    triton: TritonAddress, avatar_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """Servers the whole session shares (the main `api` server)."""
    with _servers(triton, avatar_cache, tmp_path_factory) as start:
        yield start


def register_avatar(server: ApiServer, video: Path) -> str:
    """Uploads the video as an avatar and waits until it is ready; returns its id."""
    with server.client() as client:
        reply = client.post("/v1/avatars", files={"video": (video.name, video.read_bytes())})
        assert reply.status_code in (200, 201), reply.text
        avatar_id: str = reply.json()["id"]
        poll_until(
            lambda: client.get(f"/v1/avatars/{avatar_id}").json(),
            lambda avatar: avatar["state"] != "preparing",
            60.0,
            f"avatar {avatar_id} prepared",
        )
    return avatar_id


@pytest.fixture(scope="session")
def api(session_server_factory: ServerFactory, api_media: Path) -> ApiServer:
    """The main server: API key, small limits, inputs by path and by local URL."""
    return session_server_factory(
        api_key=API_KEY,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_audio_seconds=MAX_AUDIO_S,
        max_video_seconds=MAX_VIDEO_S,
        max_video_width=MAX_VIDEO_SIDE,
        max_video_height=MAX_VIDEO_SIDE,
        max_running_jobs=2,
        max_backlog=16,
        local_input_dir=api_media,
        url_fetch_allowed_schemes=["http"],
        # The receivers of tests/api/receivers.py listen on loopback, which only a listed
        # host may reach (orchestrator/outbound.py).
        url_fetch_allowed_hosts=["127.0.0.1"],
        url_fetch_max_bytes=MAX_UPLOAD_BYTES,
        # "*": other hosts too, if they resolve to public addresses only.
        webhook_allowed_hosts=["127.0.0.1", "*"],
        webhook_backoff_s=0.2,
        webhook_attempts=3,
    )


@pytest.fixture(scope="session")
def avatar_id(api: ApiServer, avatar_video: Path, avatar_cache: Path) -> str:
    registered = register_avatar(api, avatar_video)
    assert registered == content_id(avatar_video) == avatar_cache.name
    return registered


@pytest.fixture
def client(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client() as http:
        yield http
