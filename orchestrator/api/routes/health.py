"""/healthz (the process answers), /readyz (it can serve jobs now), /v1/system (what it
serves with)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from orchestrator.api.deps import ServiceDep
from orchestrator.api.schemas import (
    ErrorDetail,
    Healthz,
    ModelServing,
    NotReady,
    Readiness,
    SystemReport,
)
from orchestrator.roles import TRITON
from orchestrator.system import system_report
from orchestrator.triton import ModelSpec

router = APIRouter(tags=["health"])
system_router = APIRouter(tags=["health"])
# A readiness probe must answer quickly whatever Triton does.
READY_PROBE_S = 5.0


@router.get("/healthz", response_model=Healthz, summary="The process is alive")
async def healthz() -> Healthz:
    return Healthz(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="What this role needs is ready: the job store, object storage and (where it "
    "renders) Triton with every model serving the tensors the pipeline needs",
    responses={503: {"model": NotReady, "description": "not ready, with the reasons"}},
)
async def readyz(service: ServiceDep) -> Readiness | JSONResponse:
    """Checks what this process's role needs: an API replica never waits on Triton."""
    engine = service.engine
    problems: list[str] = []
    if TRITON in service.needs:
        try:
            async with asyncio.timeout(READY_PROBE_S):
                problems += await engine.readiness_problems()
        except TimeoutError:
            problems.append(f"Triton did not answer within {READY_PROBE_S:g} s")
    try:  # the job store: jobs can be neither taken nor reported without it
        async with asyncio.timeout(READY_PROBE_S):
            problems += await service.store.problems()
    except TimeoutError:
        problems.append(f"the job store ({service.store.where}) did not answer in time")
    try:  # object storage: job inputs, prepared avatars and results are kept there
        async with asyncio.timeout(READY_PROBE_S):
            problems += await service.storage.problems()
    except TimeoutError:
        problems.append(f"object storage did not answer within {READY_PROBE_S:g} s")
    needs = list(service.needs)
    if problems:
        not_ready = NotReady(
            ready=False,
            problems=problems,
            error=ErrorDetail(stage="readiness", message="; ".join(problems)),
            role=service.role,
            needs=needs,
        )
        return JSONResponse(not_ready.model_dump(mode="json"), status_code=503)
    if TRITON not in service.needs:
        return Readiness(ready=True, models={}, role=service.role, needs=needs)
    served = engine.served
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
