"""The FastAPI application: `create_app(settings)`; its lifespan owns every resource.

Start-up opens the store, starts the Engine (waits for Triton and checks both models'
contracts: a mismatch stops the server with a clear message rather than failing jobs
later), recovers jobs and avatars left by the previous process, and starts the
scheduler. Shutdown stops in the reverse order; running jobs go back to the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from orchestrator.api.answers import error_answer, status_answer, v1_response
from orchestrator.api.auth import require_api_key
from orchestrator.api.connections import InFlightLimit
from orchestrator.api.deps import Service
from orchestrator.api.documents import job_document
from orchestrator.api.heygem import result_copy, result_placer
from orchestrator.api.limits_middleware import BodyLimitMiddleware, BodyLimits, upload_routes
from orchestrator.api.routes import avatars, easy, health, jobs, metrics
from orchestrator.api.schemas import error_responses
from orchestrator.dependencies import Dependencies
from orchestrator.errors import PipelineError
from orchestrator.jobs.admission import Admission
from orchestrator.jobs.avatars import Avatars
from orchestrator.jobs.retention import Retention
from orchestrator.jobs.scheduler import Scheduler
from orchestrator.jobs.store import JobRecord, open_store
from orchestrator.jobs.webhook import WebhookSender
from orchestrator.metrics import ServiceMetrics
from orchestrator.outbound import fetch_policy, guarded_client, webhook_policy
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from orchestrator.storage import open_storage

log = logging.getLogger(__name__)
SERVER_ERROR = 500
# A body that breaks its schema everywhere (deep JSON, thousands of items) would otherwise
# make a message as long as itself.
VALIDATION_PROBLEMS_SHOWN = 5


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        io_pool = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="dh-io")
        stack.callback(io_pool.shutdown, wait=True, cancel_futures=True)
        # SQLite in the data directory, or the PostgreSQL that DH_DATABASE_URL names.
        store = await open_store(settings)
        stack.push_async_callback(store.close)
        # The data directory, or the S3 bucket DH_STORAGE_URL names (checked: HeadBucket).
        storage = await open_storage(settings, io_pool)
        stack.push_async_callback(storage.close)
        service_metrics = ServiceMetrics()
        stack.callback(service_metrics.close)
        engine = Engine(settings)
        stack.push_async_callback(engine.close)
        engine.client.observer = service_metrics
        served = await engine.start()
        log.info(
            "Triton ready: %s (face %d px) and %s",
            served.lipsync.name,
            served.face_size,
            served.detector.name,
        )
        # Input fetches and webhooks each connect only where their own rule allows.
        http = guarded_client(fetch_policy(settings))
        stack.push_async_callback(http.aclose)
        webhook_http = guarded_client(webhook_policy(settings))
        stack.push_async_callback(webhook_http.aclose)
        admission_lock = asyncio.Lock()
        # Jobs and avatar preparation start only while Triton, object storage and the job
        # store are up; /readyz answers from the same gate (orchestrator.dependencies).
        dependencies = Dependencies(engine, storage, store, settings)
        avatar_service = Avatars(settings, engine, store, storage, admission_lock, dependencies)
        stack.push_async_callback(avatar_service.stop)

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
            avatar_service,
            service_metrics,
            webhooks,
            admission,
            dependencies,
            on_succeeded=result_placer(settings, storage, io_pool),  # HeyGem's result file
        )
        retention = Retention(
            settings, store, storage, service_metrics, result_copy=result_copy(settings)
        )
        await retention.clean_leftovers()  # before anything prepares avatars or runs jobs
        retention.start()
        stack.push_async_callback(retention.stop)
        await dependencies.start()
        stack.push_async_callback(dependencies.stop)
        await avatar_service.start()
        await scheduler.start()
        stack.push_async_callback(scheduler.stop)
        app.state.service = Service(
            settings=settings,
            store=store,
            storage=storage,
            engine=engine,
            dependencies=dependencies,
            avatars=avatar_service,
            admission=admission,
            scheduler=scheduler,
            metrics=service_metrics,
            io_pool=io_pool,
            http=http,
        )
        log.info("serving; data in %s", settings.data_dir)
        yield


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="Digital human",
        summary="Lip-synced avatar video from speech, served through NVIDIA Triton",
        version="0.1.0",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    protected = [Depends(require_api_key)]
    # Any route: the body bounds of limits_middleware; protected ones: the API key.
    bounded = error_responses(408, 413)
    keyed = error_responses(401, 408, 413)
    app.include_router(health.router, responses=bounded)
    app.include_router(metrics.router, responses=bounded)
    app.include_router(avatars.router, dependencies=protected, responses=keyed)
    app.include_router(jobs.router, dependencies=protected, responses=keyed)
    app.include_router(easy.router, dependencies=protected)
    app.include_router(health.system_router, dependencies=protected, responses=keyed)
    _add_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        limits=BodyLimits(
            uploads=upload_routes(app.openapi()),
            upload_bytes=settings.max_upload_bytes,
            read_timeout_s=settings.request_body_timeout_s,
        ),
    )
    # Outermost: a request refused for load costs no other middleware's work.
    app.add_middleware(InFlightLimit, limit=settings.max_connections)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every /v1 error answer goes through orchestrator.api.answers, as /easy's do."""

    @app.exception_handler(PipelineError)
    async def pipeline_error(_: Request, error: PipelineError) -> JSONResponse:
        answer = error_answer(error)
        if answer.status >= SERVER_ERROR:
            log.error("%s", error)
        return v1_response(answer)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}"
            for e in errors[:VALIDATION_PROBLEMS_SHOWN]
        )
        if len(errors) > VALIDATION_PROBLEMS_SHOWN:
            problems += f"; and {len(errors) - VALIDATION_PROBLEMS_SHOWN} more"
        return v1_response(status_answer(422, "request", problems or "the request is not valid"))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, error: ClientDisconnect) -> JSONResponse:
        # Nobody reads this answer; it only keeps a client's hang-up out of the 500s.
        log.info("the client went away before its request was read")
        return v1_response(
            status_answer(400, "request", "the client went away before the request was read")
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return v1_response(
            status_answer(error.status_code, "http", str(error.detail), dict(error.headers or {}))
        )

    # Last resort: a bug, never an answer to bad input (tests/api/test_fuzz.py checks that
    # no drawn input gets here). The message names no server paths.
    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        answer = error_answer(error, "server")
        if answer.status >= SERVER_ERROR:
            log.exception("unhandled error")
        return v1_response(answer)
