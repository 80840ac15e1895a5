"""Roles: what one process of the service does, composed from one shared core.

- `dh api` (`ApiRole`): admits jobs, answers, serves results, records avatars. It claims
  no job, renders nothing and prepares no avatar, so it needs only the job store and
  object storage: Triton may be down (or absent from its network) while it answers.
- `dh worker` (`WorkerRole`): claims queued jobs from the store and renders them,
  prepares registered avatars, expires old jobs. Its HTTP server answers only the probes
  and /metrics.
- `dh serve`: both in one process, the one-host default.

A fleet scales the two apart: API replicas on request load, workers on Triton's queue
time. They meet only in the store (the queue, leases, events) and object storage.

`Core` is what every role shares. It also builds the parts a role may not start: an API
replica cancels through the same scheduler object (the store's rows and events reach the
worker that renders the job) but never starts its dispatcher, and it never starts the
Engine, so it never connects to Triton.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import httpx

from orchestrator.api.documents import job_document
from orchestrator.api.heygem import result_copy, result_placer
from orchestrator.dependencies import STORAGE, STORE, TRITON, Dependencies
from orchestrator.jobs.admission import Admission
from orchestrator.jobs.avatars import AvatarRegistry, Avatars
from orchestrator.jobs.retention import Retention
from orchestrator.jobs.scheduler import Scheduler
from orchestrator.jobs.store import JobRecord, JobStore, open_store
from orchestrator.jobs.webhook import WebhookSender
from orchestrator.live.sessions import Sessions
from orchestrator.metrics import ServiceMetrics
from orchestrator.outbound import fetch_policy, guarded_client, webhook_policy
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from orchestrator.storage import Storage, open_storage

log = logging.getLogger(__name__)


@dataclass
class Core:
    settings: Settings
    io_pool: ThreadPoolExecutor  # upload writes, hashing, probing: short blocking calls
    store: JobStore
    storage: Storage
    metrics: ServiceMetrics
    http: httpx.AsyncClient  # input fetches
    engine: Engine  # started by a worker only
    dependencies: Dependencies  # what this process's roles need; started by open_core
    admission: Admission
    registry: AvatarRegistry
    avatars: Avatars
    webhooks: WebhookSender
    scheduler: Scheduler
    sessions: Sessions  # live sessions: started by the API role


async def open_core(
    settings: Settings, stack: AsyncExitStack, roles: tuple[type[Role], ...]
) -> Core:
    """Opens the store and object storage and builds the rest (nothing else started yet);
    `stack` closes everything in reverse."""
    io_pool = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="dh-io")
    stack.callback(io_pool.shutdown, wait=True, cancel_futures=True)
    # SQLite in the data directory, or the PostgreSQL that DH_DATABASE_URL names.
    store = await open_store(settings)
    stack.push_async_callback(store.close)
    # The data directory, or the S3 bucket DH_STORAGE_URL names (checked: HeadBucket).
    storage = await open_storage(settings, io_pool)
    stack.push_async_callback(storage.close)
    metrics = ServiceMetrics()
    stack.callback(metrics.close)
    engine = Engine(settings)  # a Triton client that connects when first used
    stack.push_async_callback(engine.close)
    engine.client.observer = metrics
    # Input fetches and webhooks each connect only where their own rule allows.
    http = guarded_client(fetch_policy(settings))
    stack.push_async_callback(http.aclose)
    webhook_http = guarded_client(webhook_policy(settings))
    stack.push_async_callback(webhook_http.aclose)
    admission_lock = asyncio.Lock()
    # Jobs and avatar preparation start only while what this process needs is up; /readyz
    # answers from the same gate (orchestrator.dependencies). An API alone never watches
    # Triton.
    dependencies = Dependencies(engine, storage, store, settings, needs=needs(roles))
    await dependencies.start()
    stack.push_async_callback(dependencies.stop)
    avatars = Avatars(settings, engine, store, storage, dependencies, io_pool)
    stack.push_async_callback(avatars.stop)
    registry = AvatarRegistry(settings, store, storage, admission_lock)

    async def webhook_document(job: JobRecord) -> dict[str, Any]:
        return job_document(job, None).model_dump(mode="json")

    webhooks = WebhookSender(settings, store, webhook_http, webhook_document)
    stack.push_async_callback(webhooks.stop)
    admission = Admission(settings, store, storage, admission_lock)
    scheduler = Scheduler(
        settings,
        engine,
        store,
        storage,
        avatars,
        metrics,
        webhooks,
        admission,
        dependencies,
        on_succeeded=result_placer(settings, storage, io_pool),  # HeyGem's result file
    )
    # A session's row names its holder as the jobs name theirs: the lease owner.
    sessions = Sessions(settings, engine, store, storage, metrics, replica=scheduler.replica)
    stack.push_async_callback(sessions.stop)  # before the engine's client closes
    return Core(
        settings=settings,
        io_pool=io_pool,
        store=store,
        storage=storage,
        metrics=metrics,
        http=http,
        engine=engine,
        dependencies=dependencies,
        admission=admission,
        registry=registry,
        avatars=avatars,
        webhooks=webhooks,
        scheduler=scheduler,
        sessions=sessions,
    )


class Role(Protocol):
    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]

    @staticmethod
    async def start(core: Core, stack: AsyncExitStack) -> None: ...


class ApiRole:
    """Admits, answers, serves results; prepares and renders nothing."""

    name: ClassVar[str] = "api"
    needs: ClassVar[tuple[str, ...]] = (STORE, STORAGE)

    @staticmethod
    async def start(core: Core, stack: AsyncExitStack) -> None:
        # A DELETE of a job another replica renders waits for that replica's "ended".
        core.scheduler.listen()
        # Live sessions live where their WebRTC peer is: in the process that answers.
        await core.sessions.start()


class WorkerRole:
    """Claims jobs and renders them; prepares registered avatars; expires old jobs."""

    name: ClassVar[str] = "worker"
    needs: ClassVar[tuple[str, ...]] = (TRITON, STORE, STORAGE)

    @staticmethod
    async def start(core: Core, stack: AsyncExitStack) -> None:
        # Triton, the models' contracts and the GPU guard: a mismatch stops the worker.
        served = await core.engine.start()
        log.info(
            "Triton ready: %s (face %d px) and %s",
            served.lipsync.name,
            served.face_size,
            served.detector.name,
        )
        retention = Retention(
            core.settings,
            core.store,
            core.storage,
            core.metrics,
            result_copy=result_copy(core.settings),
        )
        await retention.clean_leftovers()  # before anything prepares avatars or runs jobs
        retention.start()
        stack.push_async_callback(retention.stop)
        # An API in this process reads this process's preparations (`dh serve`).
        core.registry.preparer = core.avatars
        await core.avatars.start()
        await core.scheduler.start()
        stack.push_async_callback(core.scheduler.stop)


SERVE: tuple[type[Role], ...] = (ApiRole, WorkerRole)
API: tuple[type[Role], ...] = (ApiRole,)
WORKER: tuple[type[Role], ...] = (WorkerRole,)


def needs(roles: tuple[type[Role], ...]) -> tuple[str, ...]:
    """The dependencies these roles need, in a fixed order."""
    wanted = {need for role in roles for need in role.needs}
    return tuple(need for need in (TRITON, STORE, STORAGE) if need in wanted)
