"""A real HeyGem client works unchanged: its desktop app's behaviour, under Node with axios.

tests/heygem_client/client.mjs talks like HeyGem's desktop app (axios with default
settings, so any non-2xx answer throws; polls every 2 s; joins `data.result` onto its
data folder). The server runs with DH_HEYGEM_DATA_DIR and no API key, as HeyGem's app
sends none.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from tests.api.conftest import AVATAR_FPS, ServerFactory
from tests.api.server import ApiServer

CLIENT_DIR = Path(__file__).resolve().parents[1] / "heygem_client"
CLIENT_TIMEOUT_S = 150.0
MAX_POLLS = 60  # every 2 s, as HeyGem's app: two minutes for a one-second clip
SUCCESS, BAD_PARAM, NOT_FOUND, SYSTEM_ERROR = 10000, 10002, 10004, 9999
# The watermark sits in the bottom-right corner of a 160×160 output; the top-left is
# far from it and from the mouth.
CORNER = (slice(130, 160), slice(80, 160))
FAR_CORNER = (slice(0, 40), slice(0, 40))
VISIBLE = 40  # levels of 255: a change anyone sees
MARKED_SHARE = 0.03  # of the corner's pixels, at least (text covers ~8 %)


@pytest.fixture(scope="module")
def node() -> str:
    """Node and the client's node_modules; missing ones fail (scripts/setup installs them)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the HeyGem client test needs Node.js 18+")
    if not (CLIENT_DIR / "node_modules" / "axios").is_dir():
        pytest.fail(f"{CLIENT_DIR}/node_modules is missing: run scripts/setup (npm ci there)")
    return node


@pytest.fixture(scope="module")
def heygem_dir(
    tmp_path_factory: pytest.TempPathFactory, avatar_video: Path, speech: Path, tiny_speech: Path
) -> Path:
    """HeyGem's data folder (mounted at /code/data in its containers), inputs in temp/."""
    folder = tmp_path_factory.mktemp("heygem") / "heygem-data"
    (folder / "temp").mkdir(parents=True)
    for media in (avatar_video, speech, tiny_speech):
        shutil.copy(media, folder / "temp" / media.name)
    (folder / "temp" / "escape.wav").symlink_to(speech)  # a link that leaves the folder
    return folder


@pytest.fixture(scope="module")
def heygem_server(server_factory: ServerFactory, heygem_dir: Path) -> ApiServer:
    return server_factory(heygem_data_dir=heygem_dir, max_running_jobs=1)


def run_client(node: str, server: ApiServer, heygem_dir: Path, **options: Any) -> dict[str, Any]:
    options = {
        "base": server.base_url,
        "dataFolder": str(heygem_dir / "temp"),
        "maxPolls": MAX_POLLS,
        **options,
    }
    done = subprocess.run(
        [node, "client.mjs", json.dumps(options)],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["outcome"] != "threw", report  # axios threw: a non-2xx answer
    assert set(report["http_statuses"]) == {200}, report
    return report


def _task(audio: str, video: str, **fields: int) -> dict[str, Any]:
    task = {"audio_url": audio, "video_url": video, "code": str(uuid.uuid4())}
    return {**task, "chaofen": 0, "watermark_switch": 0, "pn": 1, **fields}


@pytest.fixture(scope="module")
def plain_task(node: str, heygem_server: ApiServer, heygem_dir: Path) -> dict[str, Any]:
    """A task as HeyGem's app submits it: names relative to the data folder's temp/."""
    task = _task("speech.wav", "avatar.mp4")
    return {"task": task, **run_client(node, heygem_server, heygem_dir, submit=task)}


@pytest.fixture(scope="module")
def marked_task(node: str, heygem_server: ApiServer, heygem_dir: Path) -> dict[str, Any]:
    """Container paths, a watermark and a super-resolution request."""
    task = _task(
        "/code/data/temp/speech.wav", "/code/data/temp/avatar.mp4", watermark_switch=1, chaofen=1
    )
    return {"task": task, **run_client(node, heygem_server, heygem_dir, submit=task)}


def _frames(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def test_the_result_lands_in_heygems_data_folder_where_its_app_looks(
    plain_task: dict[str, Any], heygem_dir: Path
) -> None:
    code = plain_task["task"]["code"]
    assert plain_task["outcome"] == "succeeded", plain_task
    assert plain_task["data"]["result"] == f"/{code}-r.mp4"
    result = heygem_dir / "temp" / f"{code}-r.mp4"
    assert Path(plain_task["result_path"]) == result
    assert len(_frames(result)) == AVATAR_FPS  # one second of speech at the avatar's rate


def test_container_paths_under_code_data_are_read_from_the_data_folder(
    marked_task: dict[str, Any],
) -> None:
    assert marked_task["outcome"] == "succeeded", marked_task


def test_watermark_switch_marks_the_corner_of_every_frame_of_that_job_only(
    plain_task: dict[str, Any], marked_task: dict[str, Any]
) -> None:
    plain = _frames(Path(plain_task["result_path"]))
    marked = _frames(Path(marked_task["result_path"]))
    assert len(plain) == len(marked)

    for without, with_mark in zip(plain, marked, strict=True):
        change = np.abs(with_mark.astype(np.int16) - without).max(axis=2)
        assert (change[CORNER] > VISIBLE).mean() > MARKED_SHARE, "the corner shows a mark"
        assert (change[FAR_CORNER] > VISIBLE).mean() == 0, "the rest of the picture does not"


def test_chaofen_is_accepted_and_the_message_says_it_was_ignored(
    marked_task: dict[str, Any], plain_task: dict[str, Any]
) -> None:
    assert "chaofen ignored" in marked_task["submit_msg"]
    assert marked_task["msg"] == "success"
    assert marked_task["data"]["msg"].startswith("done (chaofen ignored")
    assert plain_task["data"]["msg"] == "done"


def test_an_unknown_code_is_http_200_with_10004(
    node: str, heygem_server: ApiServer, heygem_dir: Path
) -> None:
    report = run_client(node, heygem_server, heygem_dir, queryOnce="never-submitted")
    assert report["code"] == NOT_FOUND and "never-submitted" in report["msg"]


@pytest.mark.parametrize(
    ("task", "reason"),
    [
        ({"audio_url": "speech.wav", "code": "no-video"}, "video_url"),
        (_task("speech.wav", "avatar.mp4", chaofen=7), "chaofen"),
        (_task("missing.wav", "avatar.mp4"), "no such file"),
        (_task("speech.wav", "avatar.mp4") | {"code": "../evil"}, "code"),
        (_task("speech\u0000.wav", "avatar.mp4"), "NUL"),
    ],
    ids=["missing-field", "out-of-range", "missing-file", "code-with-slash", "nul-byte"],
)
def test_bad_parameters_are_http_200_with_10002(
    node: str, heygem_server: ApiServer, heygem_dir: Path, task: dict[str, Any], reason: str
) -> None:
    report = run_client(node, heygem_server, heygem_dir, submit=task)
    assert report["outcome"] == "failed" and report["code"] == BAD_PARAM, report
    assert reason in report["msg"], report


@pytest.mark.parametrize(
    "audio",
    ["../../../etc/passwd", "/code/data/../../etc/passwd", "/etc/passwd", "escape.wav"],
    ids=["dot-dot", "container-dot-dot", "absolute", "symlink"],
)
def test_a_path_escaping_the_data_folder_is_a_bad_parameter(
    node: str, heygem_server: ApiServer, heygem_dir: Path, audio: str
) -> None:
    report = run_client(node, heygem_server, heygem_dir, submit=_task(audio, "avatar.mp4"))
    assert report["code"] == BAD_PARAM, report
    assert "audio_url" in report["msg"] and "outside" in report["msg"], report


def test_malformed_requests_are_http_200_in_heygems_codes(heygem_server: ApiServer) -> None:
    nested = b'{"audio_url": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    with heygem_server.client() as client:
        answers = {
            "nested": client.post(
                "/easy/submit", content=nested, headers={"content-type": "application/json"}
            ),
            "not-json": client.post("/easy/submit", content=b"audio_url=x"),
            "no-code": client.get("/easy/query"),
            "no-route": client.get("/easy/nothing-here"),
            "wrong-method": client.get("/easy/submit"),
        }
    codes = {name: (reply.status_code, reply.json()["code"]) for name, reply in answers.items()}
    assert codes == {
        "nested": (200, BAD_PARAM),
        "not-json": (200, BAD_PARAM),
        "no-code": (200, BAD_PARAM),
        "no-route": (200, SYSTEM_ERROR),
        "wrong-method": (200, SYSTEM_ERROR),
    }, {name: reply.text[:200] for name, reply in answers.items()}
    assert all(reply.json()["success"] is False for reply in answers.values())


def test_the_routes_publish_their_shapes(heygem_server: ApiServer) -> None:
    schema = httpx.get(f"{heygem_server.base_url}/openapi.json", timeout=10).json()
    submit = schema["paths"]["/easy/submit"]["post"]
    body = submit["requestBody"]["content"]["application/json"]["schema"]
    assert {"audio_url", "video_url"} <= set(body["required"])
    assert "watermark_switch" in body["properties"] and "chaofen" in body["properties"]
    for path, method in (("/easy/submit", "post"), ("/easy/query", "get")):
        answer = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]
        assert "$ref" in answer["schema"], (path, answer)
