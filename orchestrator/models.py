"""The models the pipeline serves from, checked against their contracts at start-up."""

from __future__ import annotations

from dataclasses import dataclass, replace

from orchestrator.contracts import FACE_DETECTOR, FACE_RESTORE, LIPSYNC, check_contract
from orchestrator.errors import ContractMismatch
from orchestrator.pipeline.composite import DEFAULT_MODE, CompositeMode
from orchestrator.settings import Settings
from orchestrator.triton import ModelSpec, TritonClient

# The lipsync config parameter that says how its output is composited (composite.py).
COMPOSITE_PARAMETER = "composite"


@dataclass(frozen=True)
class ServedModels:
    lipsync: ModelSpec
    detector: ModelSpec
    face_size: int  # S of the lipsync contract, read from Triton (96 for Wav2Lip)
    composite: CompositeMode = DEFAULT_MODE
    # The optional face restorer: None when Triton does not serve it (jobs cannot ask for
    # restoration then; `restore_unavailable` says why), with its own face size.
    face_restore: ModelSpec | None = None
    restore_size: int = 0
    restore_unavailable: str = ""

    @property
    def specs(self) -> list[ModelSpec]:
        """Every model the pipeline will send work to (for the GPU guard)."""
        optional = [self.face_restore] if self.face_restore is not None else []
        return [self.lipsync, self.detector, *optional]


def check_lipsync(spec: ModelSpec) -> int:
    """Returns the face size S, or raises ContractMismatch."""
    if spec.max_batch_size < 1:
        raise ContractMismatch(spec.name, "needs max_batch_size >= 1 (batched inputs)")
    return check_contract(spec.name, LIPSYNC, spec.inputs, spec.outputs)["S"]


def composite_mode(spec: ModelSpec) -> CompositeMode:
    """The lipsync model's composite mode from its config; none named: a real generator."""
    named = spec.parameters.get(COMPOSITE_PARAMETER)
    if named is None:
        return DEFAULT_MODE
    try:
        return CompositeMode(named)
    except ValueError:
        modes = ", ".join(f'"{mode.value}"' for mode in CompositeMode)
        raise ContractMismatch(
            spec.name, f'parameter "{COMPOSITE_PARAMETER}" is "{named}"; it should be {modes}'
        ) from None


def check_detector(spec: ModelSpec) -> None:
    if spec.max_batch_size < 1:
        raise ContractMismatch(spec.name, "needs max_batch_size >= 1 (batched inputs)")
    check_contract(spec.name, FACE_DETECTOR, spec.inputs, spec.outputs)


def check_face_restore(spec: ModelSpec) -> int:
    """Returns the restorer's face size S, or raises ContractMismatch: a restorer that is
    served but off contract is a configuration error, as loud as a wrong lipsync model."""
    if spec.max_batch_size < 1:
        raise ContractMismatch(spec.name, "needs max_batch_size >= 1 (batched inputs)")
    return check_contract(spec.name, FACE_RESTORE, spec.inputs, spec.outputs)["S"]


async def load_served_models(
    client: TritonClient, settings: Settings, ready_timeout_s: float | None = None
) -> ServedModels:
    """Waits for READY, reads the models' specs and checks them; a start-up step. The face
    restorer is optional: not served means the feature is unavailable, not a failure."""
    await client.wait_ready(
        [settings.lipsync_model, settings.detector_model],
        settings.triton_ready_timeout_s if ready_timeout_s is None else ready_timeout_s,
    )
    lipsync = await client.model_spec(settings.lipsync_model)
    detector = await client.model_spec(settings.detector_model)
    face_size = check_lipsync(lipsync)
    mode = composite_mode(lipsync)
    check_detector(detector)
    served = ServedModels(lipsync=lipsync, detector=detector, face_size=face_size, composite=mode)
    if not await client.model_served(settings.face_restore_model):
        return replace(
            served,
            restore_unavailable=f"Triton serves no '{settings.face_restore_model}' model",
        )
    restorer = await client.model_spec(settings.face_restore_model)
    return replace(served, face_restore=restorer, restore_size=check_face_restore(restorer))
