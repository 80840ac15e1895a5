"""Jobs over HTTP: submit, poll, download and decode, list, cancel, fail clearly."""

from __future__ import annotations

import math
from pathlib import Path

import av
import httpx

from synthmedia.avatar import write_avatar_video
from tests.api.conftest import AVATAR_FPS, AVATAR_SIZE, LONG_AUDIO_S
from tests.api.server import ApiServer, submit_job, wait_for_job, wait_until_rendering

CANCEL_DEADLINE_S = 2.0


def _decode(mp4: Path) -> tuple[int, tuple[int, int], float]:
    """(video frames, (width, height), audio seconds) of an MP4."""
    with av.open(str(mp4)) as container:
        video = container.streams.video[0]
        size = (video.codec_context.width, video.codec_context.height)
        frames = sum(1 for _ in container.decode(video))
    with av.open(str(mp4)) as container:
        audio = container.streams.audio[0]
        seconds = sum(f.samples for f in container.decode(audio)) / audio.rate
    return frames, size, seconds


def test_job_with_a_registered_avatar_renders_a_playable_mp4(
    client: httpx.Client, avatar_id: str, speech: Path, tmp_path: Path
) -> None:
    reply = submit_job(client, speech, avatar_id=avatar_id)
    assert reply.status_code == 202, reply.text
    job = reply.json()
    assert reply.headers["location"] == job["links"]["self"] == f"/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running")
    assert job["avatar_id"] == avatar_id

    done = wait_for_job(client, job["id"])

    assert done["state"] == "succeeded", done
    expected_frames = math.ceil(1.0 * AVATAR_FPS)
    assert done["progress"]["frames_done"] == done["progress"]["frames_total"] == expected_frames
    assert done["error"] is None and done["attempts"] == 1
    assert set(done["stage_seconds"]) == {
        "decode",
        "avatar",
        "drive",
        "infer",
        "composite",
        "encode",
    }
    result = client.get(done["links"]["result"])
    assert result.status_code == 200
    assert result.headers["content-type"] == "video/mp4"
    mp4 = tmp_path / "result.mp4"
    mp4.write_bytes(result.content)
    frames, size, audio_seconds = _decode(mp4)
    assert frames == expected_frames
    assert size == AVATAR_SIZE
    assert abs(audio_seconds - 1.0) < 0.1


def test_result_download_honours_range_requests(
    client: httpx.Client, avatar_id: str, speech: Path
) -> None:
    job = wait_for_job(client, submit_job(client, speech, avatar_id=avatar_id).json()["id"])
    whole = client.get(job["links"]["result"]).content

    part = client.get(job["links"]["result"], headers={"Range": "bytes=100-199"})

    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole)}"
    assert part.content == whole[100:200]


def test_one_off_video_job_succeeds(
    client: httpx.Client, avatar_video: Path, tiny_speech: Path
) -> None:
    reply = submit_job(client, tiny_speech, video=avatar_video)
    assert reply.status_code == 202, reply.text
    job = wait_for_job(client, reply.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["frames"] == math.ceil(0.5 * AVATAR_FPS)


def test_listing_filters_by_state_and_pages_with_a_cursor(
    client: httpx.Client, avatar_id: str, tiny_speech: Path
) -> None:
    submitted = [
        submit_job(client, tiny_speech, avatar_id=avatar_id).json()["id"] for _ in range(3)
    ]
    for job_id in submitted:
        wait_for_job(client, job_id)

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {
            "state": "succeeded",
            "limit": 2,
            **({"cursor": cursor} if cursor else {}),
        }
        page = client.get("/v1/jobs", params=params).json()
        assert len(page["items"]) <= 2
        assert all(item["state"] == "succeeded" for item in page["items"])
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert len(seen) == len(set(seen)), "a job appeared on two pages"
    assert set(submitted) <= set(seen)
    # Newest first: the last submitted comes before the first.
    assert seen.index(submitted[2]) < seen.index(submitted[0])
    bad = client.get("/v1/jobs", params={"state": "sleeping"})
    assert bad.status_code == 422 and "state" in bad.json()["error"]["message"]


def test_cancelling_a_running_job_stops_it_within_two_seconds_and_removes_its_files(
    api: ApiServer, client: httpx.Client, avatar_id: str, long_speech: Path
) -> None:
    job_id = submit_job(client, long_speech, avatar_id=avatar_id).json()["id"]
    rendering = wait_until_rendering(client, job_id)
    assert rendering["state"] == "running", f"{LONG_AUDIO_S} s of audio ended early: {rendering}"

    reply = client.delete(f"/v1/jobs/{job_id}")

    assert reply.status_code == 200
    assert reply.elapsed.total_seconds() < CANCEL_DEADLINE_S
    assert reply.json()["state"] == "cancelled"
    assert reply.json()["error"]["message"] == "cancelled by the client"
    assert not (api.data_dir / "service" / "jobs" / job_id).exists()
    assert client.get(f"/v1/jobs/{job_id}/result").status_code == 409


def test_a_job_that_cannot_render_fails_with_its_stage_and_a_message(
    client: httpx.Client, speech: Path, tmp_path: Path
) -> None:
    faceless = tmp_path / "faceless.mp4"
    write_avatar_video(faceless, seconds=0.8, fps=AVATAR_FPS, size=AVATAR_SIZE, face=False)

    job = wait_for_job(client, submit_job(client, speech, video=faceless).json()["id"])

    assert job["state"] == "failed"
    assert job["error"]["stage"] == "avatar"
    assert "no face" in job["error"]["message"]


def test_deleting_a_finished_job_removes_it(
    client: httpx.Client, avatar_id: str, tiny_speech: Path
) -> None:
    job = wait_for_job(client, submit_job(client, tiny_speech, avatar_id=avatar_id).json()["id"])

    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    missing = client.delete(f"/v1/jobs/{job['id']}")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"]


def test_a_job_needs_audio_and_exactly_one_of_avatar_and_video(
    client: httpx.Client, avatar_id: str, avatar_video: Path, speech: Path
) -> None:
    both = submit_job(client, speech, avatar_id=avatar_id, video=avatar_video)
    neither = submit_job(client, speech)
    unknown = submit_job(client, speech, avatar_id="no-such-avatar")
    no_audio = client.post("/v1/jobs", data={"avatar_id": avatar_id}, files={"x": ("", b"")})

    for reply in (both, neither, unknown, no_audio):
        assert reply.status_code == 422, reply.text
        error = reply.json()["error"]
        assert error["stage"] and error["message"]


def test_a_job_names_the_face_it_animates_among_the_avatars(
    client: httpx.Client, avatar_id: str, tiny_speech: Path
) -> None:
    faces = client.get(f"/v1/avatars/{avatar_id}").json()["faces"]
    assert [face["index"] for face in faces] == [0]

    chosen = submit_job(client, tiny_speech, avatar_id=avatar_id, face="0")
    default = submit_job(client, tiny_speech, avatar_id=avatar_id)
    refused = {
        face: submit_job(client, tiny_speech, avatar_id=avatar_id, face=face)
        for face in ("1", "-1")
    }

    assert chosen.status_code == 202 and chosen.json()["face"] == "0"
    assert default.status_code == 202 and default.json()["face"] == "largest"
    assert wait_for_job(client, chosen.json()["id"])["state"] == "succeeded"
    assert wait_for_job(client, default.json()["id"])["state"] == "succeeded"
    assert refused["1"].status_code == 422
    assert (
        "face 1 is not there: frame 0 has 1 face (0: (" in refused["1"].json()["error"]["message"]
    )
    assert refused["-1"].status_code == 422
    assert "a face index K >= 0" in refused["-1"].json()["error"]["message"]
