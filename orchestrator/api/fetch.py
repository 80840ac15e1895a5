"""Inputs named by reference (the HeyGem routes): a URL fetched, or a server-side path.

A URL is fetched only when orchestrator.outbound's rule allows it (http(s), a host the
settings allow, public addresses unless the host is listed), never following redirects
(a redirect could lead anywhere), streaming to a staged file under a byte limit and one
total deadline. A path is accepted only inside an allowed folder (`local_input_dir`, or
HeyGem's data folder for /easy), after resolving symlinks and `..`, and is copied so the
job does not depend on the file staying there.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import httpx

from orchestrator.api.deps import Service
from orchestrator.api.heygem import InputRoot, input_roots, resolve_input
from orchestrator.api.uploads import PAYLOAD_TOO_LARGE
from orchestrator.blocking import run_blocking
from orchestrator.errors import BadInput, LimitExceeded
from orchestrator.outbound import OutboundRefused, check_url, fetch_policy
from orchestrator.pipeline.avatar_cache import CONTENT_ID_HEX
from orchestrator.storage import safe_suffix

STAGE = "fetch"
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class StagedInput:
    path: Path
    content_id: str
    name: str


async def stage_input(
    reference: str, what: str, service: Service, roots: list[InputRoot] | None = None
) -> StagedInput:
    """`reference` (a URL or a server-side path) as a staged local file. A path must lie
    in one of `roots` (default: DH_LOCAL_INPUT_DIR only)."""
    reference = reference.strip()
    if not reference:
        raise BadInput(STAGE, f"{what} is empty")
    if "://" in reference:
        return await _fetch(reference, what, service)
    if roots is None:
        roots = input_roots(service.settings, heygem=False)
    return await _copy_local(reference, what, service, roots)


def _too_large(what: str, limit: int, setting: str) -> LimitExceeded:
    return LimitExceeded(
        STAGE,
        f"{what} is larger than this server's limit of {limit} bytes ({setting})",
        PAYLOAD_TOO_LARGE,
    )


async def _fetch(url: str, what: str, service: Service) -> StagedInput:
    """The URL's body as a staged file, under orchestrator.outbound's rule (checked here for
    a clear message, enforced again on the address connected to) and one total deadline:
    DH_URL_FETCH_TIMEOUT_S bounds the whole fetch, so a server that drips a byte a second
    cannot hold the request past it."""
    settings = service.settings
    parts = check_url(url, fetch_policy(settings), what)
    deadline_s = settings.url_fetch_timeout_s
    path = service.storage.staging_path(safe_suffix(unquote(parts.path)))
    try:
        async with asyncio.timeout(deadline_s):
            content_id = await _download(url, what, path, service)
    except TimeoutError:
        await service.storage.discard(path)
        raise BadInput(
            STAGE,
            f"{what}: fetching {url} took longer than its deadline of {deadline_s:g} s "
            "(DH_URL_FETCH_TIMEOUT_S)",
        ) from None
    except OutboundRefused as exc:
        await service.storage.discard(path)
        raise BadInput(STAGE, f"{what}: {exc.message}") from None
    except httpx.HTTPError as exc:
        await service.storage.discard(path)
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise BadInput(STAGE, f"{what}: fetching {url} failed ({reason})") from None
    except BaseException:
        await service.storage.discard(path)
        raise
    return StagedInput(path, content_id, Path(parts.path).name)


async def _download(url: str, what: str, path: Path, service: Service) -> str:
    """Streams the body to `path` under the byte limit; returns its content id."""
    limit = service.settings.url_fetch_max_bytes
    hasher = hashlib.sha256()
    async with service.http.stream(
        "GET", url, timeout=service.settings.url_fetch_timeout_s, follow_redirects=False
    ) as reply:
        if reply.is_redirect:
            raise BadInput(STAGE, f"{what}: {url} answered a redirect; redirects are not followed")
        if not reply.is_success:
            raise BadInput(STAGE, f"{what}: fetching {url} failed with HTTP {reply.status_code}")
        declared = reply.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(what, limit, "DH_URL_FETCH_MAX_BYTES")
        size = 0
        with path.open("wb") as sink:  # opening is instant; the writes go to the pool
            async for chunk in reply.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise _too_large(what, limit, "DH_URL_FETCH_MAX_BYTES")
                hasher.update(chunk)
                await run_blocking(service.io_pool, sink.write, chunk)
    if size == 0:
        raise BadInput(STAGE, f"{what}: {url} returned no bytes")
    return hasher.hexdigest()[:CONTENT_ID_HEX]


async def _copy_local(
    reference: str, what: str, service: Service, roots: list[InputRoot]
) -> StagedInput:
    settings = service.settings
    source = resolve_input(reference, what, roots)
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise BadInput(STAGE, f"{what}: '{reference}' cannot be read ({exc})") from None
    if size > settings.max_upload_bytes:
        raise _too_large(what, settings.max_upload_bytes, "DH_MAX_UPLOAD_BYTES")
    path = service.storage.staging_path(safe_suffix(source.name))

    def copy() -> str:
        hasher = hashlib.sha256()
        with source.open("rb") as src, path.open("wb") as dst:
            while chunk := src.read(COPY_CHUNK):
                hasher.update(chunk)
                dst.write(chunk)
        shutil.copystat(source, path)
        return hasher.hexdigest()[:CONTENT_ID_HEX]

    try:
        content_id = await run_blocking(service.io_pool, copy)
    except BaseException:
        await service.storage.discard(path)
        raise
    return StagedInput(path, content_id, source.name)
