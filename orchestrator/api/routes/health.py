"""/healthz (the process answers), /readyz (it can serve jobs now), /v1/system (what it
serves with)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from orchestrator.api.deps import ServiceDep
from orchestrator.system import system_report
from orchestrator.triton import ModelSpec

router = APIRouter(tags=["health"])
system_router = APIRouter(tags=["health"])
# A readiness probe must answer quickly whatever Triton does.
READY_PROBE_S = 5.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Triton is ready and every model serves the tensors the pipeline needs",
    responses={503: {"description": "not ready, with the reasons"}},
)
async def readyz(service: ServiceDep) -> JSONResponse:
    engine = service.engine
    try:
        async with asyncio.timeout(READY_PROBE_S):
            problems = await engine.readiness_problems()
    except TimeoutError:
        problems = [f"Triton did not answer within {READY_PROBE_S:g} s"]
    if problems:
        return JSONResponse(
            {
                "ready": False,
                "problems": problems,
                "error": {"stage": "readiness", "message": "; ".join(problems)},
            },
            status_code=503,
        )
    served = engine.served
    return JSONResponse(
        {
            "ready": True,
            "models": {
                served.lipsync.name: {**_summary(served.lipsync), "face_size": served.face_size},
                served.detector.name: _summary(served.detector),
            },
        }
    )


@system_router.get("/v1/system", summary="GPUs, Triton's version, how each model is served")
async def system(service: ServiceDep) -> dict[str, Any]:
    return await system_report(service.engine)


def _summary(spec: ModelSpec) -> dict[str, Any]:
    return {
        "max_batch_size": spec.max_batch_size,
        "instances": [f"{g.count}x{g.kind}" for g in spec.instance_groups],
    }
