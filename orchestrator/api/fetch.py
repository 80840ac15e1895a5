"""Inputs named by reference (the HeyGem routes): a URL fetched, or a server-side path.

A URL is fetched only when its scheme and host are allowed by the settings, never
following redirects (a redirect could lead anywhere), streaming to a staged file under a
byte limit. A path is accepted only inside `local_input_dir`, after resolving symlinks
and `..`, and is copied so the job does not depend on the file staying there.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from orchestrator.api.deps import Service
from orchestrator.api.uploads import CONTENT_ID_HEX, PAYLOAD_TOO_LARGE
from orchestrator.errors import BadInput, LimitExceeded
from orchestrator.storage import safe_suffix

STAGE = "fetch"
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class StagedInput:
    path: Path
    content_id: str
    name: str


async def stage_input(reference: str, what: str, service: Service) -> StagedInput:
    """`reference` (a URL or a server-side path) as a staged local file."""
    reference = reference.strip()
    if not reference:
        raise BadInput(STAGE, f"{what} is empty")
    if "://" in reference:
        return await _fetch(reference, what, service)
    return await _copy_local(reference, what, service)


def _too_large(what: str, limit: int, setting: str) -> LimitExceeded:
    return LimitExceeded(
        STAGE,
        f"{what} is larger than this server's limit of {limit} bytes ({setting})",
        PAYLOAD_TOO_LARGE,
    )


async def _fetch(url: str, what: str, service: Service) -> StagedInput:
    settings = service.settings
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in settings.url_fetch_allowed_schemes:
        raise BadInput(
            STAGE,
            f"{what}: scheme '{scheme}' is not fetched (DH_URL_FETCH_ALLOWED_SCHEMES: "
            f"{', '.join(settings.url_fetch_allowed_schemes) or 'none'})",
        )
    if host not in settings.url_fetch_allowed_hosts:
        raise BadInput(
            STAGE,
            f"{what}: host '{host}' is not fetched (DH_URL_FETCH_ALLOWED_HOSTS: "
            f"{', '.join(settings.url_fetch_allowed_hosts) or 'none'})",
        )
    limit = settings.url_fetch_max_bytes
    path = service.storage.staging_path(safe_suffix(unquote(parts.path)))
    hasher = hashlib.sha256()
    loop = asyncio.get_running_loop()
    try:
        async with service.http.stream(
            "GET", url, timeout=settings.url_fetch_timeout_s, follow_redirects=False
        ) as reply:
            if reply.is_redirect:
                raise BadInput(
                    STAGE, f"{what}: {url} answered a redirect; redirects are not followed"
                )
            if not reply.is_success:
                raise BadInput(
                    STAGE, f"{what}: fetching {url} failed with HTTP {reply.status_code}"
                )
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
                    await loop.run_in_executor(service.io_pool, sink.write, chunk)
    except httpx.HTTPError as exc:
        await service.storage.discard(path)
        reason = f"{type(exc).__name__}: {exc}"
        raise BadInput(STAGE, f"{what}: fetching {url} failed ({reason})") from None
    except BaseException:
        await service.storage.discard(path)
        raise
    if size == 0:
        await service.storage.discard(path)
        raise BadInput(STAGE, f"{what}: {url} returned no bytes")
    return StagedInput(path, hasher.hexdigest()[:CONTENT_ID_HEX], Path(parts.path).name)


async def _copy_local(reference: str, what: str, service: Service) -> StagedInput:
    settings = service.settings
    base = settings.local_input_dir
    if base is None:
        raise BadInput(
            STAGE,
            f"{what}: '{reference}' is not a URL, and server-side paths are not accepted "
            "here (DH_LOCAL_INPUT_DIR is not set)",
        )
    root = base.resolve()
    source = (root / reference).resolve()  # an absolute reference replaces root
    if not source.is_relative_to(root):
        raise BadInput(STAGE, f"{what}: '{reference}' is outside the allowed input directory")
    if not source.is_file():
        raise BadInput(STAGE, f"{what}: no such file '{reference}' in the input directory")
    size = source.stat().st_size
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
        content_id = await asyncio.get_running_loop().run_in_executor(service.io_pool, copy)
    except BaseException:
        await service.storage.discard(path)
        raise
    return StagedInput(path, content_id, source.name)
