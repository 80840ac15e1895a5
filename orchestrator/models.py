"""The models the pipeline serves from, checked against their contracts at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.contracts import FACE_DETECTOR, LIPSYNC, check_contract
from orchestrator.errors import ContractMismatch
from orchestrator.settings import Settings
from orchestrator.triton import ModelSpec, TritonClient


@dataclass(frozen=True)
class ServedModels:
    lipsync: ModelSpec
    detector: ModelSpec
    face_size: int  # S of the lipsync contract, read from Triton (96 for Wav2Lip)


def check_lipsync(spec: ModelSpec) -> int:
    """Returns the face size S, or raises ContractMismatch."""
    if spec.max_batch_size < 1:
        raise ContractMismatch(spec.name, "needs max_batch_size >= 1 (batched inputs)")
    return check_contract(spec.name, LIPSYNC, spec.inputs, spec.outputs)["S"]


def check_detector(spec: ModelSpec) -> None:
    if spec.max_batch_size < 1:
        raise ContractMismatch(spec.name, "needs max_batch_size >= 1 (batched inputs)")
    check_contract(spec.name, FACE_DETECTOR, spec.inputs, spec.outputs)


async def load_served_models(
    client: TritonClient, settings: Settings, ready_timeout_s: float | None = None
) -> ServedModels:
    """Waits for READY, reads both models' specs and checks them; a start-up step."""
    await client.wait_ready(
        [settings.lipsync_model, settings.detector_model],
        settings.triton_ready_timeout_s if ready_timeout_s is None else ready_timeout_s,
    )
    lipsync = await client.model_spec(settings.lipsync_model)
    detector = await client.model_spec(settings.detector_model)
    face_size = check_lipsync(lipsync)
    check_detector(detector)
    return ServedModels(lipsync=lipsync, detector=detector, face_size=face_size)
