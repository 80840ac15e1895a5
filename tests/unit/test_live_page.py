"""The /live page is served by the API role, whole (every file it loads is there, with its
media type) and self-contained (no URL outside the service: it must work offline and leak
no visit to a third party)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from orchestrator.api.app import create_app
from orchestrator.roles import API, WORKER, Role
from orchestrator.settings import Settings

# Every local file a page or script names: src/href attributes, worklet modules.
LOADED = re.compile(r"""(?:src|href)="(/[^"]*)"|addModule\("(/[^"]*)"\)""")
# Any absolute or protocol-relative URL; the WebSocket's is built from location.host.
EXTERNAL = re.compile(r"""(?:https?|wss?)://|["'(`]//""")


async def _client(tmp_path: Path, roles: tuple[type[Role], ...] = API) -> httpx.AsyncClient:
    # The routes under test read no service state, so the lifespan need not run.
    app = create_app(Settings(data_dir=tmp_path), roles)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_the_page_and_every_file_it_loads_are_served(tmp_path: Path) -> None:
    async with await _client(tmp_path) as client:
        page = await client.get("/live")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        wanted = ["/live"]
        seen: dict[str, httpx.Response] = {"/live": page}
        while wanted:
            body = seen[wanted.pop()].text
            for match in LOADED.finditer(body):
                path = match.group(1) or match.group(2)
                if path not in seen:
                    seen[path] = await client.get(path)
                    wanted.append(path)
        assert set(seen) == {"/live", "/live/live.js", "/live/live.css", "/live/pcm-worklet.js"}
        for path, answer in seen.items():
            assert answer.status_code == 200, path
            expected = {"js": "text/javascript", "css": "text/css"}.get(path.rsplit(".", 1)[-1])
            if expected:
                assert answer.headers["content-type"].startswith(expected), path
            assert not EXTERNAL.search(answer.text), f"{path} names an external URL"


async def test_the_script_uses_the_session_contract(tmp_path: Path) -> None:
    async with await _client(tmp_path) as client:
        script = (await client.get("/live/live.js")).text
    for route in ('"/v1/sessions"', '"/webrtc"', '"/interrupt"', '"/speech"'):
        assert route in script
    assert '"/v1/avatars"' in script
    assert 'direction: "recvonly"' in script
    # The microphone goes once, as the peer's audio track: not also up the WebSocket,
    # where the server would queue the same speech a second time.
    assert 'direction: "sendrecv"' in script
    assert "new WebSocket(" not in script
    assert "Authorization" in script


@pytest.mark.parametrize("name", ["nope.js", "..%2Fapp.py", "live.html"])
async def test_only_the_named_files_are_served(tmp_path: Path, name: str) -> None:
    async with await _client(tmp_path) as client:
        answer = await client.get(f"/live/{name}")
    assert answer.status_code == 404
    assert answer.json()["error"]["stage"] in ("live", "http")  # "http": no route matched


async def test_a_worker_alone_serves_no_page(tmp_path: Path) -> None:
    async with await _client(tmp_path, WORKER) as client:
        assert (await client.get("/live")).status_code == 404
