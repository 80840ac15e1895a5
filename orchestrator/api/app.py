"""The FastAPI application: `create_app(settings, roles)`; its lifespan owns every resource.

Start-up opens the shared core (store, object storage, metrics: orchestrator.roles), then
starts each role the command asked for: the API answers; a worker starts the Engine (waits
for Triton and checks both models' contracts: a mismatch stops it with a clear message
rather than failing jobs later), prepares avatars and starts the scheduler. Shutdown
stops in the reverse order; running jobs go back to the queue.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from orchestrator.api.answers import error_answer, status_answer, v1_response
from orchestrator.api.auth import require_api_key
from orchestrator.api.connections import InFlightLimit
from orchestrator.api.deps import Service
from orchestrator.api.limits_middleware import BodyLimitMiddleware, BodyLimits, upload_routes
from orchestrator.api.routes import avatars, easy, health, jobs, live_page, metrics, sessions
from orchestrator.api.schemas import error_responses
from orchestrator.errors import PipelineError
from orchestrator.roles import SERVE, ApiRole, Role, WorkerRole, needs, open_core
from orchestrator.settings import Settings

log = logging.getLogger(__name__)
SERVER_ERROR = 500
# A body that breaks its schema everywhere (deep JSON, thousands of items) would otherwise
# make a message as long as itself.
VALIDATION_PROBLEMS_SHOWN = 5


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    roles: tuple[type[Role], ...] = app.state.roles
    async with AsyncExitStack() as stack:
        core = await open_core(settings, stack, roles)
        for role in roles:
            await role.start(core, stack)
        app.state.service = Service(
            settings=settings,
            store=core.store,
            storage=core.storage,
            engine=core.engine,
            dependencies=core.dependencies,
            avatars=core.registry,
            admission=core.admission,
            scheduler=core.scheduler,
            metrics=core.metrics,
            io_pool=core.io_pool,
            http=core.http,
            sessions=core.sessions,
            role="+".join(role.name for role in roles),
            needs=needs(roles),
        )
        log.info("%s; data in %s", " and ".join(role.name for role in roles), settings.data_dir)
        # Everything started so far lives as long as the process: out of the collector's
        # sight, a full collection no longer walks it. Such a collection held the GIL for
        # 60-120 ms, every live session missed the same 2-3 frames, and six sessions were
        # late where seven now keep time on two cores (15-28 ms pauses after the freeze).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # a process that goes on (tests) gets its garbage collected again


def create_app(settings: Settings | None = None, roles: tuple[type[Role], ...] = SERVE) -> FastAPI:
    """The service's application for `roles` (the command picks them): with the API, every
    route; a worker alone answers only /healthz, /readyz and /metrics."""
    settings = settings or Settings()
    app = FastAPI(
        title="Digital human",
        summary="Lip-synced avatar video from speech, served through NVIDIA Triton",
        version="0.1.0",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.roles = roles
    # Any route: the body bounds of limits_middleware; protected ones: the API key.
    bounded = error_responses(408, 413)
    app.include_router(health.router, responses=bounded)
    app.include_router(metrics.router, responses=bounded)
    _add_error_handlers(app)
    if ApiRole in roles:
        _mount_api(app)
        if WorkerRole in roles:
            # Triton, its models and the GPUs as the renderer sees them: an API replica
            # alone has none of them (`dh serve` answers it; a worker fleet's Triton
            # reports its own on :8002).
            app.include_router(
                health.system_router,
                dependencies=[Depends(require_api_key)],
                responses=error_responses(401, 408, 413),
            )
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


def _mount_api(app: FastAPI) -> None:
    protected = [Depends(require_api_key)]
    keyed = error_responses(401, 408, 413)
    app.include_router(avatars.router, dependencies=protected, responses=keyed)
    app.include_router(jobs.router, dependencies=protected, responses=keyed)
    app.include_router(sessions.router, dependencies=protected, responses=keyed)
    app.include_router(sessions.socket_router)  # checks the API key itself
    app.include_router(easy.router, dependencies=protected)
    app.include_router(live_page.router)  # the page asks for the key itself


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
