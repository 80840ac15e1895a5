"""Avatars over HTTP: upload, background preparation, inspect, list, delete, conflicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from synthmedia.avatar import write_avatar_video
from synthmedia.two_faces import write_two_face_video
from tests.api.conftest import AVATAR_FPS, AVATAR_SIZE, register_avatar
from tests.api.server import ApiServer, poll_until, submit_job, wait_for_job, wait_until_rendering

FRESH_SECONDS = 0.8


@pytest.fixture
def fresh_video(tmp_path: Path) -> Path:
    """An avatar no server has seen: preparing it runs the detector."""
    path = tmp_path / "fresh.mp4"
    write_avatar_video(path, seconds=FRESH_SECONDS, fps=AVATAR_FPS, size=AVATAR_SIZE)
    return path


def _wait_prepared(client: httpx.Client, avatar_id: str) -> dict[str, Any]:
    avatar: dict[str, Any] = poll_until(
        lambda: client.get(f"/v1/avatars/{avatar_id}").json(),
        lambda avatar: avatar["state"] != "preparing",
        60.0,
        "avatar prepared",
    )
    return avatar


def test_uploaded_avatar_is_prepared_in_the_background_and_described(
    api: ApiServer, client: httpx.Client, fresh_video: Path
) -> None:
    reply = client.post("/v1/avatars", files={"video": ("fresh.mp4", fresh_video.read_bytes())})

    assert reply.status_code == 201, reply.text
    created = reply.json()
    assert created["state"] in ("preparing", "ready")
    assert reply.headers["location"] == f"/v1/avatars/{created['id']}"
    avatar = _wait_prepared(client, created["id"])
    frames = round(FRESH_SECONDS * AVATAR_FPS)
    assert avatar["state"] == "ready", avatar
    assert avatar["frames"] == frames
    assert avatar["fps"] == AVATAR_FPS
    assert (avatar["width"], avatar["height"]) == AVATAR_SIZE
    assert avatar["frames_with_face"] == frames
    listed = [item["id"] for item in client.get("/v1/avatars").json()["items"]]
    assert created["id"] in listed

    again = client.post("/v1/avatars", files={"video": ("copy.mp4", fresh_video.read_bytes())})
    assert again.status_code == 200 and again.json()["id"] == created["id"]

    assert client.delete(f"/v1/avatars/{created['id']}").status_code == 204
    assert client.get(f"/v1/avatars/{created['id']}").status_code == 404
    assert not (api.data_dir / "avatars" / created["id"]).exists()
    assert not (api.data_dir / "service" / "avatar-sources" / created["id"]).exists()


def test_an_avatar_in_use_cannot_be_deleted(
    api: ApiServer, client: httpx.Client, fresh_video: Path, long_speech: Path
) -> None:
    avatar_id = register_avatar(api, fresh_video)
    job_id = submit_job(client, long_speech, avatar_id=avatar_id).json()["id"]
    wait_until_rendering(client, job_id)

    refused = client.delete(f"/v1/avatars/{avatar_id}")

    assert refused.status_code == 409
    assert "used by" in refused.json()["error"]["message"]
    client.delete(f"/v1/jobs/{job_id}")
    wait_for_job(client, job_id)
    assert client.delete(f"/v1/avatars/{avatar_id}").status_code == 204


def test_an_avatar_without_a_face_fails_with_a_reason(client: httpx.Client, tmp_path: Path) -> None:
    faceless = tmp_path / "scene.mp4"
    write_avatar_video(faceless, seconds=0.6, fps=AVATAR_FPS, size=AVATAR_SIZE, face=False)

    created = client.post("/v1/avatars", files={"video": ("scene.mp4", faceless.read_bytes())})
    avatar = _wait_prepared(client, created.json()["id"])

    assert avatar["state"] == "failed"
    assert avatar["error"]["stage"] == "avatar"
    assert "no face" in avatar["error"]["message"]
    refused = submit_job(client, faceless, avatar_id=avatar["id"])
    assert refused.status_code == 422


def test_a_file_that_is_not_a_video_is_refused_at_upload(
    client: httpx.Client, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)

    reply = client.post("/v1/avatars", files={"video": ("junk.mp4", junk.read_bytes())})

    assert reply.status_code == 422
    assert reply.json()["error"]["stage"] == "decode"
    assert "junk" in reply.json()["error"]["message"] or "PyAV" in reply.json()["error"]["message"]


def test_unknown_avatar_is_404(client: httpx.Client) -> None:
    for reply in (client.get("/v1/avatars/nope"), client.delete("/v1/avatars/nope")):
        assert reply.status_code == 404
        assert reply.json()["error"]["message"] == "no avatar with id 'nope'"


@pytest.fixture
def two_face_avatar(api: ApiServer, tmp_path: Path) -> str:
    """Two faces side by side, each as large as the main avatar's one face."""
    path = tmp_path / "two_faces.mp4"
    write_two_face_video(path, seconds=FRESH_SECONDS, fps=AVATAR_FPS, half_size=AVATAR_SIZE)
    return register_avatar(api, path)


def test_an_avatar_lists_its_faces_and_a_job_chooses_among_them(
    client: httpx.Client, two_face_avatar: str, speech: Path
) -> None:
    avatar = client.get(f"/v1/avatars/{two_face_avatar}").json()
    faces = avatar["faces"]
    assert [face["index"] for face in faces] == [0, 1], avatar
    assert all(face["frame"] == 0 for face in faces)
    left, right = faces
    assert left["x2"] < AVATAR_SIZE[0] <= right["x1"], "left to right, one in each half"

    centre = ((right["x1"] + right["x2"]) / 2, (right["y1"] + right["y2"]) / 2)
    for face in ("1", f"{centre[0]:.0f},{centre[1]:.0f}", "largest"):
        reply = submit_job(client, speech, avatar_id=two_face_avatar, face=face)
        assert reply.status_code == 202, reply.text
        assert reply.json()["face"] == face
        job = wait_for_job(client, reply.json()["id"])
        assert job["state"] == "succeeded", job
        assert job["result"]["frames_without_face"] == 0


@pytest.mark.parametrize(
    ("face", "reason"),
    [
        ("2", "face 2 names no face of avatar '{id}': face 2 is not there: frame 0 has 2 faces"),
        ("319,159", "no face at or near (319, 159): frame 0 has 2 faces (0: ("),
        ("left", "face must be 'largest', a face index K >= 0 or a point X,Y in pixels"),
    ],
)
def test_a_face_naming_none_of_the_avatars_is_refused_with_the_faces_there_are(
    client: httpx.Client, two_face_avatar: str, speech: Path, face: str, reason: str
) -> None:
    refused = submit_job(client, speech, avatar_id=two_face_avatar, face=face)

    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["stage"] == "request"
    assert reason.format(id=two_face_avatar) in refused.json()["error"]["message"]


def test_a_one_off_video_whose_face_choice_names_none_fails_the_job_saying_why(
    client: httpx.Client, fresh_video: Path, speech: Path
) -> None:
    reply = submit_job(client, speech, video=fresh_video, face="3")
    assert reply.status_code == 202, "the video's faces are not known before it is prepared"

    job = wait_for_job(client, reply.json()["id"])

    assert job["state"] == "failed"
    assert job["error"]["stage"] == "avatar"
    assert "face 3 is not there: frame 0 has 1 face (0: (" in job["error"]["message"]
