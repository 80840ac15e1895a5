"""The optional API key: `Authorization: Bearer <key>` on every route but the probes."""

from __future__ import annotations

import hmac

from fastapi import Request

from orchestrator.api.deps import ServiceDep
from orchestrator.errors import Unauthorized

STAGE = "auth"
SCHEME = "bearer"


async def require_api_key(request: Request, service: ServiceDep) -> None:
    expected = service.settings.api_key
    if not expected:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != SCHEME or not presented:
        raise Unauthorized(
            STAGE, "this server needs an API key: send 'Authorization: Bearer <key>'"
        )
    # Constant-time comparison: the key must not leak through response timing.
    if not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise Unauthorized(STAGE, "the API key is not valid")
