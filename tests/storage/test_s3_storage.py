"""S3Storage against a real S3 server (SeaweedFS): where each file is kept, the prepared
avatar's completion marker, and failures that name the bucket and never the keys."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.jobs.store import JobRecord
from orchestrator.settings import Settings
from orchestrator.storage import StorageUnavailable, open_storage
from orchestrator.storage.s3 import AVATAR_MARKER, S3Storage
from tests.api.server import free_port
from tests.s3server import S3Server, s3_server

__all__ = ["s3_server"]  # the session fixture, used by the tests below
PREFIX = "fleet/a"
AVATAR_ID = "0123456789abcdef0123456789abcdef"
# How long the test freezes the S3 server: several attempts' timeouts, well under the deadline.
OUTAGE_S = 4.0
CACHE_FILES = {"frames.bin": b"f" * 3000, "frames.idx.npy": b"i" * 80, "boxes.npy": b"b" * 64}


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def _settings(server: S3Server, bucket: str, data_dir: Path, **extra: object) -> Settings:
    return Settings.model_validate(
        {"data_dir": data_dir, **server.settings(bucket, PREFIX), **extra}
    )


async def _open(settings: Settings, pool: ThreadPoolExecutor) -> S3Storage:
    storage = await open_storage(settings, pool)
    assert isinstance(storage, S3Storage)
    return storage


@pytest.fixture
async def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket()


@pytest.fixture
async def storage(
    s3_server: S3Server, bucket: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> AsyncIterator[S3Storage]:
    opened = await _open(_settings(s3_server, bucket, tmp_path / "a"), pool)
    yield opened
    await opened.close()


def _staged(storage: S3Storage, suffix: str, body: bytes) -> Path:
    path = storage.staging_path(suffix)
    path.write_bytes(body)
    return path


def _write_cache(directory: Path) -> None:
    """A prepared avatar cache as the pipeline leaves it (meta.json marks it complete)."""
    directory.mkdir(parents=True)
    for name, body in CACHE_FILES.items():
        (directory / name).write_bytes(body)
    (directory / "meta.json").write_text(json.dumps({"avatar_id": AVATAR_ID}))


async def _submitted_job(storage: S3Storage) -> JobRecord:
    job_dir = storage.job_dir("job1")
    audio = await storage.adopt(_staged(storage, ".wav", b"RIFF-audio"), job_dir / "audio.wav")
    video = await storage.adopt(_staged(storage, ".mp4", b"mp4-video"), job_dir / "video.mp4")
    return JobRecord(
        id="job1",
        created_at=0.0,
        audio_path=str(audio),
        video_path=str(video),
        avatar_id=AVATAR_ID,
        audio_seconds=1.0,
        deadline_s=60.0,
        registered_avatar=False,
    )


async def test_a_job_keeps_inputs_and_result_under_its_prefix_and_leaves_no_scratch(
    storage: S3Storage, s3_server: S3Server, bucket: str
) -> None:
    job = await _submitted_job(storage)
    assert s3_server.keys(bucket) == [
        f"{PREFIX}/jobs/job1/audio.wav",
        f"{PREFIX}/jobs/job1/video.mp4",
    ]
    assert list((storage.local.root / "staging").iterdir()) == []

    async with storage.job_files(job) as files:
        assert files.audio.read_bytes() == b"RIFF-audio"
        assert files.video.read_bytes() == b"mp4-video"
        _write_cache(storage.avatar_cache_dir(AVATAR_ID))  # as the pipeline would
        files.result.write_bytes(b"the result")

    assert await storage.has_result("job1")
    await storage.remove_job_inputs("job1")
    assert not storage.job_dir("job1").exists()
    assert s3_server.keys(bucket, f"{PREFIX}/jobs/") == [f"{PREFIX}/jobs/job1/result.mp4"]
    assert f"{PREFIX}/avatars/{AVATAR_ID}/{AVATAR_MARKER}" in s3_server.keys(bucket)
    await storage.remove_job("job1")
    assert s3_server.keys(bucket, f"{PREFIX}/jobs/") == []
    assert not await storage.has_result("job1")


async def test_a_failed_render_leaves_no_scratch_and_keeps_no_result(
    storage: S3Storage, s3_server: S3Server, bucket: str
) -> None:
    job = await _submitted_job(storage)

    async def render_and_fail() -> None:
        async with storage.job_files(job) as files:
            files.result.write_bytes(b"half a result")
            raise RuntimeError("the pipeline failed")

    with pytest.raises(RuntimeError):
        await render_and_fail()

    assert not storage.job_dir("job1").exists()
    assert not await storage.has_result("job1")
    assert f"{PREFIX}/jobs/job1/audio.wav" in s3_server.keys(bucket)  # a retry fetches it


async def test_a_registered_avatar_source_is_kept_and_fetched_for_its_jobs(
    storage: S3Storage, s3_server: S3Server, bucket: str
) -> None:
    source_dir = storage.avatar_source_dir(AVATAR_ID)
    source = await storage.adopt(_staged(storage, ".mp4", b"the avatar"), source_dir / "source.mp4")
    assert s3_server.keys(bucket) == [f"{PREFIX}/avatar-sources/{AVATAR_ID}/source.mp4"]
    assert not source.exists()

    async with storage.avatar_source(AVATAR_ID, source) as local:
        assert local.read_bytes() == b"the avatar"
    assert not local.exists()

    await storage.remove_avatar(AVATAR_ID)
    assert s3_server.keys(bucket) == []


async def test_a_published_avatar_is_fetched_whole_by_another_replica(
    storage: S3Storage, s3_server: S3Server, bucket: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    _write_cache(storage.avatar_cache_dir(AVATAR_ID))
    await storage.publish_avatar(AVATAR_ID)
    marker = json.loads(
        s3_server.client()
        .get_object(Bucket=bucket, Key=f"{PREFIX}/avatars/{AVATAR_ID}/{AVATAR_MARKER}")["Body"]
        .read()
    )
    assert marker["files"] == {
        **{name: len(body) for name, body in CACHE_FILES.items()},
        "meta.json": len(json.dumps({"avatar_id": AVATAR_ID})),
    }

    other = await _open(_settings(s3_server, bucket, tmp_path / "b"), pool)
    try:
        await other.fetch_avatar(AVATAR_ID)
    finally:
        await other.close()

    fetched = other.avatar_cache_dir(AVATAR_ID)
    for name, body in CACHE_FILES.items():
        assert (fetched / name).read_bytes() == body
    assert not [p for p in fetched.parent.iterdir() if p.name.endswith(".partial")]


async def test_a_cache_without_its_marker_is_never_used(
    storage: S3Storage, s3_server: S3Server, bucket: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    _write_cache(storage.avatar_cache_dir(AVATAR_ID))
    await storage.publish_avatar(AVATAR_ID)
    # As if the upload had stopped before its last step.
    s3_server.client().delete_object(
        Bucket=bucket, Key=f"{PREFIX}/avatars/{AVATAR_ID}/{AVATAR_MARKER}"
    )

    other = await _open(_settings(s3_server, bucket, tmp_path / "b"), pool)
    try:
        await other.fetch_avatar(AVATAR_ID)
    finally:
        await other.close()

    assert not other.avatar_cache_dir(AVATAR_ID).exists()


async def test_a_cache_missing_a_file_its_marker_lists_is_not_used(
    storage: S3Storage, s3_server: S3Server, bucket: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    _write_cache(storage.avatar_cache_dir(AVATAR_ID))
    await storage.publish_avatar(AVATAR_ID)
    s3_server.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/avatars/{AVATAR_ID}/boxes.npy")

    other = await _open(_settings(s3_server, bucket, tmp_path / "b"), pool)
    try:
        await other.fetch_avatar(AVATAR_ID)
    finally:
        await other.close()

    assert not other.avatar_cache_dir(AVATAR_ID).exists()
    assert not [p for p in (tmp_path / "b" / "avatars").iterdir()]


async def test_an_unreachable_store_names_the_bucket_and_endpoint_never_the_keys(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = Settings.model_validate(
        {
            "data_dir": tmp_path,
            "storage_url": "s3://dh-nowhere/p",
            "s3_endpoint_url": endpoint,
            "s3_access_key_id": "AKIDNEVERSHOWN",
            "s3_secret_access_key": "secret-never-shown",
            "s3_timeout_s": 1.0,
        }
    )

    with pytest.raises(StorageUnavailable) as caught:
        await open_storage(settings, pool)

    message = str(caught.value)
    assert "dh-nowhere" in message and endpoint in message
    assert "AKIDNEVERSHOWN" not in message and "secret-never-shown" not in message
    assert "secret-never-shown" not in repr(settings)


async def test_a_wrong_secret_is_refused_at_start_without_showing_it(
    s3_server: S3Server, bucket: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    settings = _settings(s3_server, bucket, tmp_path, s3_secret_access_key="not-the-secret")

    with pytest.raises(StorageUnavailable) as caught:
        await open_storage(settings, pool)

    assert "access denied" in str(caught.value)
    assert bucket in str(caught.value)
    assert "not-the-secret" not in str(caught.value)


@pytest.fixture
def frozen_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 server of this test's own, which the test freezes (SIGSTOP) and thaws."""
    server = S3Server(tmp_path_factory.mktemp("s3-frozen")).start()
    yield server
    os.kill(server.pid, signal.SIGCONT)  # never leave it stopped, whatever happened
    server.stop()


async def test_an_outage_shorter_than_the_retry_deadline_fails_nothing(
    frozen_s3: S3Server, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    settings = _settings(
        frozen_s3, frozen_s3.make_bucket(), tmp_path, s3_timeout_s=1.0, s3_retry_deadline_s=30.0
    )
    storage = await _open(settings, pool)
    try:
        os.kill(frozen_s3.pid, signal.SIGSTOP)
        thaw = asyncio.get_running_loop().call_later(
            OUTAGE_S, os.kill, frozen_s3.pid, signal.SIGCONT
        )
        start = time.monotonic()
        job = await _submitted_job(storage)  # two uploads, through the outage
        thaw.cancel()
        assert time.monotonic() - start >= OUTAGE_S - 0.5
        assert settings.storage_url is not None
        assert frozen_s3.keys(settings.storage_url.split("/")[2]) == [
            f"{PREFIX}/jobs/job1/audio.wav",
            f"{PREFIX}/jobs/job1/video.mp4",
        ]
        assert job.id == "job1"
    finally:
        await storage.close()


async def test_an_outage_longer_than_the_deadline_fails_soon_after_it(
    frozen_s3: S3Server, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    deadline_s = 3.0
    settings = _settings(
        frozen_s3,
        frozen_s3.make_bucket(),
        tmp_path,
        s3_timeout_s=1.0,
        s3_retry_deadline_s=deadline_s,
    )
    storage = await _open(settings, pool)
    try:
        os.kill(frozen_s3.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await _submitted_job(storage)
        waited = time.monotonic() - start
        # Tried for the deadline, then given up after the attempt under way (botocore's own
        # retries of a transfer, each bounded by the 1 s timeouts): never an endless wait.
        assert deadline_s - 0.5 <= waited <= deadline_s + 30
    finally:
        os.kill(frozen_s3.pid, signal.SIGCONT)
        await storage.close()
