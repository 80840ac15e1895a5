"""Nothing accumulates while the service runs: files that no row owns are removed once they
have not changed for DH_ORPHAN_GRACE_S (work in progress is younger), and the copy of a
result placed in HeyGem's folder expires with its job."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import pytest

from tests.api.conftest import ServerFactory, register_avatar
from tests.api.server import ApiServer, poll_until

GRACE_S = 300.0
SWEEP_S = 0.5
SWEEP_DEADLINE_S = 20.0
REMOVED = re.compile(r'^dh_cleanup_removed_total\{kind="(\w+)"\} (\S+)$', re.M)
SUCCESS, DONE = 10000, 2


def _removed(server: ApiServer) -> dict[str, float]:
    with server.client() as client:
        text = client.get("/metrics").text
    return {kind: float(count) for kind, count in REMOVED.findall(text)}


def _plant(folder: Path, age_s: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "leftover.bin").write_bytes(b"\0" * 1024)
    then = time.time() - age_s
    os.utime(folder, (then, then))
    return folder


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ApiServer:
    return server_factory(orphan_grace_s=GRACE_S, retention_sweep_s=SWEEP_S)


def test_files_no_row_owns_are_swept_after_the_grace_and_the_rest_kept(
    server: ApiServer, avatar_video: Path
) -> None:
    avatar_id = register_avatar(server, avatar_video)
    service = server.data_dir / "service"
    old = 2 * GRACE_S
    orphans = [
        _plant(service / "jobs" / uuid.uuid4().hex, old),
        _plant(service / "avatar-sources" / uuid.uuid4().hex[:32], old),
        _plant(server.data_dir / "avatars" / uuid.uuid4().hex[:32], old),
    ]
    in_progress = _plant(service / "jobs" / uuid.uuid4().hex, 0.0)
    owned_cache = server.data_dir / "avatars" / avatar_id
    then = time.time() - old
    os.utime(owned_cache, (then, then))  # old, but its avatar row owns it

    poll_until(
        lambda: [folder for folder in orphans if folder.exists()],
        lambda left: left == [],
        SWEEP_DEADLINE_S,
        "orphans swept",
    )

    assert in_progress.is_dir() and owned_cache.is_dir()
    removed = _removed(server)
    for kind in ("orphan_job", "orphan_avatar_source", "orphan_avatar"):
        assert removed[kind] >= 1, (kind, removed)
    with server.client() as client:
        assert client.get(f"/v1/avatars/{avatar_id}").json()["state"] == "ready"


def test_a_result_in_heygems_folder_expires_with_its_job(
    server_factory: ServerFactory, tmp_path: Path, tiny_speech: Path, avatar_video: Path
) -> None:
    heygem_dir = tmp_path / "face2face"
    temp = heygem_dir / "temp"
    temp.mkdir(parents=True)
    for source in (tiny_speech, avatar_video):
        (temp / source.name).write_bytes(source.read_bytes())
    server = server_factory(heygem_data_dir=heygem_dir, result_ttl="2s", retention_sweep_s=SWEEP_S)
    code = str(uuid.uuid4())
    with server.client() as client:
        reply = client.post(
            "/easy/submit",
            json={"audio_url": tiny_speech.name, "video_url": avatar_video.name, "code": code},
        )
        assert reply.json()["code"] == SUCCESS, reply.text
        poll_until(
            lambda: client.get("/easy/query", params={"code": code}).json()["data"],
            lambda data: data.get("status") == DONE,
            60.0,
            f"task {code} done",
        )
    placed = temp / f"{code}-r.mp4"
    assert placed.is_file()

    poll_until(lambda: placed.exists(), lambda there: not there, SWEEP_DEADLINE_S, "copy expired")
    assert _removed(server)["result_copy"] >= 1
