"""Asking for face restoration over HTTP: /v1's restore_face and HeyGem's chaofen.

The session's server has no face_restore model: /v1 refuses with the reason, /easy runs
the task without it and says so. A server on the restoring Triton (tests/conftest.py)
does it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ServerFactory, register_avatar
from tests.api.server import ApiServer, poll_until, submit_job, wait_for_job
from tests.conftest import TritonAddress

SUCCESS, DONE = 10000, 2


def _chaofen(client: httpx.Client, audio: Path, video: Path) -> dict[str, Any]:
    code = str(uuid.uuid4())
    body = {"audio_url": audio.name, "video_url": video.name, "code": code, "chaofen": 1}
    submitted = client.post("/easy/submit", json=body).json()
    assert submitted["code"] == SUCCESS, submitted
    done = poll_until(
        lambda: client.get("/easy/query", params={"code": code}).json(),
        lambda reply: reply["data"].get("status") == DONE,
        60.0,
        f"task {code} done",
    )
    return {"submit": submitted["msg"], "query": done["data"]["msg"]}


def test_restore_face_without_a_restorer_is_a_422_that_says_why(
    client: httpx.Client, avatar_id: str, speech: Path
) -> None:
    reply = submit_job(client, speech, avatar_id=avatar_id, restore_face="true")
    assert reply.status_code == 422, reply.text
    message = reply.json()["error"]["message"]
    assert "face restoration is unavailable" in message and "'face_restore'" in message


def test_restore_face_must_be_a_boolean(client: httpx.Client, avatar_id: str, speech: Path) -> None:
    reply = submit_job(client, speech, avatar_id=avatar_id, restore_face="maybe")
    assert reply.status_code == 422, reply.text
    assert "restore_face must be true or false" in reply.json()["error"]["message"]


def test_chaofen_without_a_restorer_runs_the_task_and_says_it_was_ignored(
    client: httpx.Client, avatar_video: Path, speech: Path
) -> None:
    messages = _chaofen(client, speech, avatar_video)
    ignored = "(chaofen ignored: Triton serves no 'face_restore' model)"
    assert messages == {"submit": f"success {ignored}", "query": f"done {ignored}"}


@pytest.fixture(scope="module")
def restoring_api(
    server_factory: ServerFactory, restoring_triton: TritonAddress, api_media: Path
) -> ApiServer:
    return server_factory(
        triton_url=restoring_triton.grpc_url,
        triton_metrics_url=restoring_triton.metrics_url,
        local_input_dir=api_media,
    )


def test_a_server_with_a_restorer_runs_restore_face_and_chaofen(
    restoring_api: ApiServer, avatar_video: Path, speech: Path
) -> None:
    avatar_id = register_avatar(restoring_api, avatar_video)
    with restoring_api.client() as client:
        reply = submit_job(client, speech, avatar_id=avatar_id, restore_face="true")
        assert reply.status_code == 202, reply.text
        done = wait_for_job(client, reply.json()["id"])
        assert done["state"] == "succeeded", done
        messages = _chaofen(client, speech, avatar_video)
    assert messages == {"submit": "success", "query": "done"}
