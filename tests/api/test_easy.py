"""The HeyGem-compatible routes: /easy/submit with paths or URLs, /easy/query by code.

Every answer is HTTP 200 with HeyGem's code carrying the outcome (its clients throw on
any other status); tests/api/test_heygem_client.py drives them with such a client."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest import ServerFactory
from tests.api.receivers import file_server
from tests.api.server import ApiServer, poll_until, wait_until_rendering

SUCCESS, BUSY, BAD_PARAM, NOT_FOUND, SYSTEM_ERROR = 10000, 10001, 10002, 10004, 9999
DONE, FAILED = 2, 3


def _submit(client: httpx.Client, audio_url: str, video_url: str, code: str) -> httpx.Response:
    return client.post(
        "/easy/submit",
        json={
            "audio_url": audio_url,
            "video_url": video_url,
            "code": code,
            "chaofen": 0,
            "watermark_switch": 0,
            "pn": 1,
        },
    )


def _query_until_done(client: httpx.Client, code: str) -> dict[str, Any]:
    answer: dict[str, Any] = poll_until(
        lambda: client.get("/easy/query", params={"code": code}).json(),
        lambda reply: reply["data"].get("status") in (DONE, FAILED),
        60.0,
        f"task {code} done",
    )
    return answer


def test_submit_with_server_side_paths_and_query_until_done(
    client: httpx.Client, speech: Path, avatar_video: Path
) -> None:
    code = str(uuid.uuid4())

    reply = _submit(client, speech.name, avatar_video.name, code)

    assert reply.status_code == 200, reply.text
    assert reply.json()["code"] == SUCCESS and reply.json()["success"] is True
    done = _query_until_done(client, code)
    assert done["code"] == SUCCESS
    data = done["data"]
    assert data["status"] == DONE and data["progress"] == 100
    assert data["video_duration"] == 1000
    assert (data["width"], data["height"]) == (160, 160)
    video = client.get(data["result"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"


def test_submit_with_urls_of_an_allowed_host(
    client: httpx.Client, api_media: Path, speech: Path, avatar_video: Path
) -> None:
    code = str(uuid.uuid4())
    with file_server(api_media) as base:
        reply = _submit(client, f"{base}/{speech.name}", f"{base}/{avatar_video.name}", code)
    assert reply.status_code == 200, reply.text
    assert _query_until_done(client, code)["data"]["status"] == DONE


def test_inputs_outside_what_is_allowed_are_refused_with_a_reason(
    client: httpx.Client, api_media: Path, speech: Path, avatar_video: Path
) -> None:
    with file_server(api_media) as base:
        other_host = base.replace("127.0.0.1", "localhost")
        refusals = {
            "host": _submit(client, f"{other_host}/{speech.name}", avatar_video.name, "a"),
            "scheme": _submit(client, f"ftp://127.0.0.1/{speech.name}", avatar_video.name, "b"),
            "outside the allowed": _submit(client, "../../etc/passwd", avatar_video.name, "c"),
            "no such file": _submit(client, "missing.wav", avatar_video.name, "d"),
            "HTTP 404": _submit(client, f"{base}/missing.wav", avatar_video.name, "e"),
        }
    for reason, reply in refusals.items():
        assert reply.status_code == 200, (reason, reply.text)  # HeyGem's clients throw on 4xx
        body = reply.json()
        assert body["code"] == BAD_PARAM and body["success"] is False
        assert reason in body["msg"], (reason, body)
        assert "audio_url" in body["msg"], (reason, body)
    for refused in "abcde":
        assert client.get("/easy/query", params={"code": refused}).json()["code"] == NOT_FOUND


def test_a_code_is_used_once_and_unknown_codes_are_not_found(
    client: httpx.Client, tiny_speech: Path, avatar_id: str
) -> None:
    code = str(uuid.uuid4())
    assert _submit(client, tiny_speech.name, avatar_id, code).json()["code"] == SUCCESS

    again = _submit(client, tiny_speech.name, avatar_id, code)
    unknown = client.get("/easy/query", params={"code": "never-submitted"})

    assert again.status_code == 200 and again.json()["code"] == BAD_PARAM
    assert unknown.status_code == 200 and unknown.json()["code"] == NOT_FOUND
    assert _query_until_done(client, code)["data"]["status"] == DONE


def test_a_body_that_is_not_json_is_a_bad_parameter(client: httpx.Client) -> None:
    reply = client.post(
        "/easy/submit", content=b"audio_url=x", headers={"content-type": "text/plain"}
    )
    assert reply.status_code == 200
    assert reply.json()["code"] == BAD_PARAM and "JSON" in reply.json()["msg"]


def test_a_missing_api_key_is_http_200_with_a_system_error_that_says_so(
    api: ApiServer, speech: Path, avatar_video: Path
) -> None:
    with api.client(api_key="") as anonymous:
        submitted = _submit(anonymous, speech.name, avatar_video.name, str(uuid.uuid4()))
        queried = anonymous.get("/easy/query", params={"code": "anything"})
    for reply in (submitted, queried):
        assert reply.status_code == 200, reply.text
        assert reply.json()["code"] == SYSTEM_ERROR and "API key" in reply.json()["msg"]
    with api.client(api_key="") as anonymous:
        assert anonymous.get("/v1/jobs").status_code == 401  # elsewhere the status is real


def test_without_heygems_folder_the_result_is_this_servers_url(
    client: httpx.Client, tiny_speech: Path, avatar_id: str
) -> None:
    code = str(uuid.uuid4())
    assert _submit(client, tiny_speech.name, avatar_id, code).json()["code"] == SUCCESS
    data = _query_until_done(client, code)["data"]
    assert data["result"] == f"/v1/jobs/{data['job_id']}/result"


def test_a_full_backlog_is_http_200_busy_with_retry_after(
    server_factory: ServerFactory,
    api_media: Path,
    avatar_video: Path,
    long_speech: Path,
    tiny_speech: Path,
) -> None:
    # HeyGem's app treats 10001 as "try later", not as a failure; a 429 would end its loop.
    one_slot = server_factory(max_running_jobs=1, max_backlog=0, local_input_dir=api_media)
    with one_slot.client() as client:
        first = _submit(client, long_speech.name, avatar_video.name, str(uuid.uuid4()))
        assert first.json()["code"] == SUCCESS, first.text
        wait_until_rendering(client, first.json()["data"]["job_id"])

        refused = _submit(client, tiny_speech.name, avatar_video.name, str(uuid.uuid4()))

        client.delete(f"/v1/jobs/{first.json()['data']['job_id']}")
    one_slot.stop()
    assert refused.status_code == 200, refused.text
    assert refused.json()["code"] == BUSY and refused.json()["success"] is False
    assert "backlog is full" in refused.json()["msg"]
    assert int(refused.headers["retry-after"]) >= 1


def test_unusable_paths_are_bad_parameters_that_name_no_server_path(
    client: httpx.Client, api: ApiServer, api_media: Path, avatar_video: Path
) -> None:
    loop = api_media / "loop_link.wav"
    if not loop.is_symlink():
        loop.symlink_to(loop.name)  # a link to itself: resolving it never ends
    refusals = {
        "symlink loop": _submit(client, loop.name, avatar_video.name, "loop"),
        "over-long name": _submit(client, "x" * 5000 + ".wav", avatar_video.name, "long"),
    }
    for case, reply in refusals.items():
        assert reply.status_code == 200, (case, reply.text)
        body = reply.json()
        assert body["code"] == BAD_PARAM, (case, body)
        assert str(api_media) not in body["msg"] and str(api.data_dir) not in body["msg"], case
        assert len(body["msg"]) < 1000, (case, len(body["msg"]))


def test_codes_that_cannot_name_a_task_are_bad_parameters(
    client: httpx.Client, speech: Path, avatar_video: Path
) -> None:
    fields = f'"audio_url": "{speech.name}", "video_url": "{avatar_video.name}"'
    body = ("{" + fields + ', "code": ' + "7" * 5000 + "}").encode()
    huge = client.post("/easy/submit", content=body, headers={"content-type": "application/json"})
    for reply in (
        huge,
        _submit(client, speech.name, avatar_video.name, "x" * 129),
        _submit(client, speech.name, avatar_video.name, "../escape"),
    ):
        assert reply.status_code == 200, reply.text
        assert reply.json()["code"] == BAD_PARAM, reply.json()


def test_a_face_may_be_chosen_and_one_naming_none_is_a_bad_parameter(
    client: httpx.Client, tiny_speech: Path, avatar_id: str
) -> None:
    """Not a HeyGem field: its clients never send it, and without it nothing changes."""

    def submit(face: object) -> dict[str, Any]:
        body = {"audio_url": tiny_speech.name, "video_url": avatar_id, "face": face}
        answer: dict[str, Any] = client.post(
            "/easy/submit", json={**body, "code": str(uuid.uuid4())}
        ).json()
        return answer

    chosen = submit("0")
    none = submit("3")
    malformed = submit("the left one")

    assert chosen["code"] == SUCCESS, chosen
    assert _query_until_done(client, chosen["data"]["code"])["data"]["status"] == DONE
    assert none["code"] == BAD_PARAM and "face 3 is not there: frame 0 has 1 face" in none["msg"]
    assert malformed["code"] == BAD_PARAM and "face" in malformed["msg"], malformed
