"""/healthz (the process answers), /readyz (it can serve jobs now), /v1/system (what it
serves with)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from orchestrator.api.answers import OUTAGE_RETRY_AFTER_S
from orchestrator.api.deps import ServiceDep
from orchestrator.api.schemas import (
    ErrorDetail,
    Healthz,
    ModelServing,
    NotReady,
    Readiness,
    SystemReport,
)
from orchestrator.dependencies import TRITON
from orchestrator.system import system_report
from orchestrator.triton import ModelSpec

router = APIRouter(tags=["health"])
system_router = APIRouter(tags=["health"])
SERVICE_UNAVAILABLE = 503


@router.get("/healthz", response_model=Healthz, summary="The process is alive")
async def healthz() -> Healthz:
    return Healthz(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="What this role needs is up: the job store, object storage and (where it "
    "renders) Triton with every model serving the tensors the pipeline needs",
    responses={503: {"model": NotReady, "description": "not ready: which dependency and why"}},
)
async def readyz(service: ServiceDep) -> Readiness | JSONResponse:
    # The gate watches what this role needs (an API replica never waits on Triton) and
    # checks each within DH_DEPENDENCY_CHECK_TIMEOUT_S, so this answers quickly whatever a
    # dependency does; the GPU guard is part of Triton's check.
    down = await service.dependencies.check()
    needs = list(service.needs)
    if down:
        problems = [f"{name}: {problem}" for name, found in down.items() for problem in found]
        not_ready = NotReady(
            ready=False,
            problems=problems,
            down=down,
            error=ErrorDetail(stage="readiness", message="; ".join(problems), retryable=True),
            role=service.role,
            needs=needs,
        )
        return JSONResponse(
            not_ready.model_dump(mode="json"),
            status_code=SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER_S)},
        )
    if TRITON not in service.needs:
        return Readiness(ready=True, models={}, role=service.role, needs=needs)
    served = service.engine.served
    lipsync = _serving(served.lipsync)
    lipsync.face_size = served.face_size
    return Readiness(
        ready=True,
        models={served.lipsync.name: lipsync, served.detector.name: _serving(served.detector)},
        role=service.role,
        needs=needs,
    )


@system_router.get(
    "/v1/system",
    response_model=SystemReport,
    summary="GPUs, Triton's version, how each model is served",
)
async def system(service: ServiceDep) -> SystemReport:
    report = await system_report(service.engine)
    return SystemReport.model_validate(
        {**report, "job_store": service.store.where, "storage": service.storage.describe()}
    )


def _serving(spec: ModelSpec) -> ModelServing:
    return ModelServing(
        max_batch_size=spec.max_batch_size,
        instances=[f"{g.count}x{g.kind}" for g in spec.instance_groups],
    )
