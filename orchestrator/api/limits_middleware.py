"""Body bounds on every route, enforced before a route sees the request.

Upload routes (multipart forms) take up to DH_MAX_UPLOAD_BYTES and read their bodies
themselves, streaming (orchestrator.api.uploads); every other route takes at most
SMALL_BODY_BYTES. A declared Content-Length over the bound is answered 413 at once,
without reading a byte of the body: a client that declares a terabyte and then sends
nothing must not hold a request open. A body with no declared length (chunked) is
counted as it arrives and refused the moment it crosses the bound. A small body is read
here whole, under DH_REQUEST_BODY_TIMEOUT_S, and handed on to the route: a body that
never arrives ends as 408 instead of a request that waits forever.

HeyGem's client throws on any non-2xx answer, so under /easy a refusal is HTTP 200 with
HeyGem's body and its "bad parameters" code.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.answers import error_answer, v1_response
from orchestrator.api.heygem import heygem_refusal
from orchestrator.api.uploads import too_large
from orchestrator.errors import LimitExceeded

STAGE = "request"
# Every route that is not an upload takes ids, URLs and small JSON objects.
SMALL_BODY_BYTES = 64 * 1024
PAYLOAD_TOO_LARGE, REQUEST_TIMEOUT = 413, 408
EASY_PREFIX = "/easy/"
MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class UploadRoute:
    method: str
    path: re.Pattern[str]

    def matches(self, scope: Scope) -> bool:
        return scope["method"] == self.method and self.path.match(scope["path"]) is not None


def upload_routes(openapi: dict[str, Any]) -> tuple[UploadRoute, ...]:
    """The routes whose OpenAPI operation takes a multipart body: the schema that the
    clients read is also what decides which bound a route gets."""
    found = []
    for path, operations in openapi.get("paths", {}).items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if MULTIPART in content:
                pattern, _, _ = compile_path(path)
                found.append(UploadRoute(method.upper(), pattern))
    return tuple(found)


@dataclass(frozen=True)
class BodyLimits:
    uploads: tuple[UploadRoute, ...]
    upload_bytes: int  # DH_MAX_UPLOAD_BYTES
    read_timeout_s: float  # DH_REQUEST_BODY_TIMEOUT_S
    small_bytes: int = SMALL_BODY_BYTES


class _Disconnected(Exception):
    """The client went away before its body arrived: nobody is left to answer."""


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = any(route.matches(scope) for route in self.limits.uploads)
        bound = self.limits.upload_bytes if upload else self.limits.small_bytes
        headers = {k.lower(): v for k, v in scope["headers"]}
        declared = _declared_length(headers.get(b"content-length"))
        if upload and (declared is None or declared <= bound):
            await self.app(scope, self._counting(receive), send)
            return
        if not upload and not declared and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body at all
            return
        try:
            if declared is not None and declared > bound:
                raise self._too_large(upload)
            body = await self._read_small(receive, bound)
        except LimitExceeded as refusal:
            await _refusal(scope, refusal)(scope, receive, send)
            return
        except _Disconnected:
            return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self, upload: bool) -> LimitExceeded:
        if upload:
            return too_large(self.limits.upload_bytes)
        return LimitExceeded(
            STAGE,
            f"the request body is larger than {self.limits.small_bytes} bytes, the limit of "
            "every route but the uploads",
            PAYLOAD_TOO_LARGE,
        )

    def _counting(self, receive: Receive) -> Receive:
        """`receive` that raises once an upload crosses its bound; the route's error handler
        answers (413, Connection: close) after the route has cleaned up what it staged."""
        bound = self.limits.upload_bytes
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > bound:
                    raise self._too_large(upload=True)
            return message

        return counted

    async def _read_small(self, receive: Receive, bound: int) -> bytes:
        body = bytearray()
        timeout_s = self.limits.read_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    body += message.get("body", b"")
                    if len(body) > bound:
                        raise self._too_large(upload=False)
                    if not message.get("more_body", False):
                        return bytes(body)
        except TimeoutError:
            raise LimitExceeded(
                STAGE,
                f"the request body did not arrive within {timeout_s:g} s "
                "(DH_REQUEST_BODY_TIMEOUT_S)",
                REQUEST_TIMEOUT,
            ) from None


def _declared_length(value: bytes | None) -> int | None:
    # The server has already refused a Content-Length that is not a number.
    return int(value) if value is not None and value.strip().isdigit() else None


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` that hands over the body read already, then waits on the client (for
    its disconnect) as the original does."""
    delivered = False

    async def replayed() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _refusal(scope: Scope, refusal: LimitExceeded) -> JSONResponse:
    # The shared error answer (its headers close the connection: the rest of the body is
    # not wanted), in HeyGem's form under /easy as easy.py's own refusals.
    answer = error_answer(refusal)
    if scope["path"].startswith(EASY_PREFIX):
        return heygem_refusal(answer)
    return v1_response(answer)
