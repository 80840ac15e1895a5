"""/live: the browser page that talks to a live session (plain HTML and JavaScript, served
as files from orchestrator/api/static, no build step).

The page and its assets carry no data and need no API key: the page asks for the key and
sends it with each /v1 call it makes. Only the files named here are served, so no path in
a request ever reaches the file system.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from orchestrator.errors import NotFound

router = APIRouter(tags=["live"], include_in_schema=False)
STAGE = "live"
STATIC = Path(__file__).resolve().parents[1] / "static"
PAGE = "live.html"
# Asset name → media type; the page loads exactly these.
ASSETS = {
    "live.js": "text/javascript; charset=utf-8",
    "live.css": "text/css; charset=utf-8",
    "pcm-worklet.js": "text/javascript; charset=utf-8",
}
# The page changes with the service: a browser revalidates rather than keep an old copy.
CACHE = {"Cache-Control": "no-cache"}


@router.get("/live")
async def live_page() -> FileResponse:
    return FileResponse(STATIC / PAGE, media_type="text/html; charset=utf-8", headers=CACHE)


@router.get("/live/{name}")
async def live_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(STAGE, f"the live page has no file '{name}'")
    return FileResponse(STATIC / name, media_type=media_type, headers=CACHE)
