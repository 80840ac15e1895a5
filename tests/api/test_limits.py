"""Limits answered while the upload streams in: 413 for bytes, 422 for media limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx

from synthmedia.audio import voiced_speech, write_audio, write_random_bytes
from synthmedia.avatar import write_avatar_video
from tests.api.conftest import (
    AVATAR_FPS,
    AVATAR_SIZE,
    MAX_AUDIO_S,
    MAX_UPLOAD_BYTES,
    MAX_VIDEO_S,
    MAX_VIDEO_SIDE,
    SPEECH_RATE,
)
from tests.api.server import ApiServer, submit_job

BOUNDARY = "dhtestboundary"
CHUNK = 64 * 1024
# Far more than the limit and than any socket buffer: a server that reads it all is wrong.
ENDLESS_BYTES = 256 * 1024**2


def _staging_is_empty(api: ApiServer) -> bool:
    return not any((api.data_dir / "service" / "staging").iterdir())


def test_a_body_over_the_byte_limit_is_refused_with_413(
    api: ApiServer, client: httpx.Client, avatar_id: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.wav"
    write_random_bytes(big, MAX_UPLOAD_BYTES + CHUNK)

    reply = submit_job(client, big, avatar_id=avatar_id)

    assert reply.status_code == 413
    assert "DH_MAX_UPLOAD_BYTES" in reply.json()["error"]["message"]
    assert _staging_is_empty(api)


def test_a_chunked_upload_is_stopped_when_it_crosses_the_byte_limit(
    api: ApiServer, client: httpx.Client
) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        # No Content-Length: only counting the bytes as they arrive can catch this one.
        nonlocal sent
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="audio"; '
            f'filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        ).encode()
        while sent < ENDLESS_BYTES:
            sent += CHUNK
            yield b"\0" * CHUNK

    try:
        reply = client.post(
            "/v1/jobs",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
    except httpx.HTTPError:
        reply = None  # the server may close the connection while we are still sending
    if reply is not None:
        assert reply.status_code == 413
    assert sent < ENDLESS_BYTES, "the server read the whole oversized body"
    assert _staging_is_empty(api)


def test_audio_longer_than_the_limit_is_refused_with_422(
    client: httpx.Client, avatar_id: str, tmp_path: Path
) -> None:
    # AAC keeps the over-long track well under the byte limit: only its length is wrong.
    long = tmp_path / "too-long.m4a"
    write_audio(long, voiced_speech(MAX_AUDIO_S + 1), SPEECH_RATE)
    assert long.stat().st_size < MAX_UPLOAD_BYTES

    reply = submit_job(client, long, avatar_id=avatar_id)

    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["stage"] == "limits"
    assert "DH_MAX_AUDIO_SECONDS" in error["message"]
    assert f"{MAX_AUDIO_S + 1:.1f} s" in error["message"]


def test_a_video_over_the_resolution_limit_is_refused_with_422(
    client: httpx.Client, speech: Path, tmp_path: Path
) -> None:
    wide = tmp_path / "wide.mp4"
    write_avatar_video(wide, seconds=0.4, fps=AVATAR_FPS, size=(MAX_VIDEO_SIDE + 32, 160))

    for reply in (
        submit_job(client, speech, video=wide),
        client.post("/v1/avatars", files={"video": (wide.name, wide.read_bytes())}),
    ):
        assert reply.status_code == 422
        assert f"{MAX_VIDEO_SIDE + 32}x160" in reply.json()["error"]["message"]


def test_a_video_over_the_length_limit_is_refused_with_422(
    client: httpx.Client, speech: Path, tmp_path: Path
) -> None:
    long = tmp_path / "long.mp4"
    write_avatar_video(long, seconds=MAX_VIDEO_S + 1, fps=10, size=AVATAR_SIZE)

    reply = submit_job(client, speech, video=long)

    assert reply.status_code == 422
    assert "DH_MAX_VIDEO_SECONDS" in reply.json()["error"]["message"]


def test_files_that_are_not_media_are_refused_with_the_stage(
    client: httpx.Client, avatar_id: str, tmp_path: Path
) -> None:
    noise = tmp_path / "noise.wav"
    write_random_bytes(noise, 4096)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")

    for audio in (noise, empty):
        reply = submit_job(client, audio, avatar_id=avatar_id)
        assert reply.status_code == 422, reply.text
        error = reply.json()["error"]
        assert error["stage"] in ("decode", "upload") and error["message"]
