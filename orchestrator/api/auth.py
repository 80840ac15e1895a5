"""The optional API key: `Authorization: Bearer <key>` on every route but the probes."""

from __future__ import annotations

import hmac

from fastapi import Request

from orchestrator.api.deps import ServiceDep
from orchestrator.errors import Unauthorized

STAGE = "auth"
SCHEME = "bearer"


async def require_api_key(request: Request, service: ServiceDep) -> None:
    check_api_key(service.settings.api_key, request.headers.get("authorization", ""))


def check_api_key(expected: str | None, authorization: str) -> None:
    """Unauthorized unless `authorization` ("Bearer <key>") carries the key (if one is set).
    The WebSocket route calls it itself: FastAPI's HTTP dependencies do not run there."""
    if not expected:
        return
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != SCHEME or not presented:
        raise Unauthorized(
            STAGE, "this server needs an API key: send 'Authorization: Bearer <key>'"
        )
    # Constant-time comparison: the key must not leak through response timing.
    if not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise Unauthorized(STAGE, "the API key is not valid")
