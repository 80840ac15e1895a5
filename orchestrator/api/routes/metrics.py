"""/metrics: the orchestrator's Prometheus metrics (Triton's own are on its :8002)."""

from __future__ import annotations

import asyncio
from collections import Counter

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from orchestrator.api.deps import ServiceDep
from orchestrator.jobs.store import AVATAR_STATES

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "the Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(service: ServiceDep) -> Response:
    jobs = await service.store.count_jobs()
    avatars = Counter(a.state for a in await service.store.list_avatars())
    service.metrics.set_counts(
        jobs,
        {state: avatars.get(state, 0) for state in AVATAR_STATES},
        service.scheduler.running_count(),
    )
    service.metrics.asyncio_tasks.set(len(asyncio.all_tasks()))
    service.metrics.live_frame_cache.set(service.sessions.frame_cache_bytes)
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
