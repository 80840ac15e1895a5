"""Dependencies of the routes: the service's parts, owned by the app's lifespan."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Request

from orchestrator.dependencies import Dependencies
from orchestrator.jobs.admission import Admission
from orchestrator.jobs.avatars import AvatarRegistry
from orchestrator.jobs.scheduler import Scheduler
from orchestrator.jobs.store import JobStore
from orchestrator.live.sessions import Sessions
from orchestrator.metrics import ServiceMetrics
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from orchestrator.storage import Storage


@dataclass(frozen=True)
class Service:
    settings: Settings
    store: JobStore
    storage: Storage
    engine: Engine
    dependencies: Dependencies  # whether work can start now; /readyz asks it
    avatars: AvatarRegistry
    admission: Admission
    scheduler: Scheduler
    metrics: ServiceMetrics
    io_pool: ThreadPoolExecutor  # upload writes, hashing, probing: short blocking calls
    http: httpx.AsyncClient  # input fetches and webhooks
    sessions: Sessions  # live sessions this process holds (orchestrator.live)
    role: str  # "api", "worker" or "api+worker" (`dh serve`)
    needs: tuple[str, ...]  # what this process needs to do its work: /readyz checks these


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
