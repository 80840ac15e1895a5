"""What start-up reads from the models' configs: the lipsync composite mode and the
optional face restorer's contract."""

from __future__ import annotations

import pytest

from orchestrator.contracts import TensorSpec
from orchestrator.errors import ContractMismatch
from orchestrator.models import ServedModels, check_face_restore, composite_mode
from orchestrator.pipeline.composite import CompositeMode
from orchestrator.triton import InstanceGroup, ModelSpec


def _spec(
    name: str,
    inputs: dict[str, tuple[int, ...]],
    outputs: dict[str, tuple[int, ...]],
    parameters: dict[str, str] | None = None,
    max_batch_size: int = 16,
) -> ModelSpec:
    return ModelSpec(
        name=name,
        versions=("1",),
        platform="onnxruntime_onnx",
        max_batch_size=max_batch_size,
        inputs={k: TensorSpec(k, "FP32", shape) for k, shape in inputs.items()},
        outputs={k: TensorSpec(k, "FP32", shape) for k, shape in outputs.items()},
        instance_groups=(InstanceGroup("KIND_GPU", 1, ()),),
        preferred_batch_sizes=(),
        max_queue_delay_us=0,
        max_queue_size=0,
        parameters=parameters or {},
    )


def _lipsync(parameters: dict[str, str] | None = None) -> ModelSpec:
    return _spec(
        "lipsync",
        {"mel": (1, 80, 16), "face": (6, 96, 96)},
        {"pred": (3, 96, 96)},
        parameters,
    )


def test_a_lipsync_model_that_names_no_mode_is_a_real_generator_and_replaces() -> None:
    assert composite_mode(_lipsync()) == CompositeMode.REPLACE
    assert composite_mode(_lipsync({"other": "x"})) == CompositeMode.REPLACE


def test_the_analytic_models_ask_for_delta_in_their_config() -> None:
    assert composite_mode(_lipsync({"composite": "delta"})) == CompositeMode.DELTA
    assert composite_mode(_lipsync({"composite": "replace"})) == CompositeMode.REPLACE


def test_an_unknown_mode_is_a_start_up_error_naming_the_choices() -> None:
    with pytest.raises(ContractMismatch, match=r'"composite" is "paste"; it should be "replace"'):
        composite_mode(_lipsync({"composite": "paste"}))


def test_the_restorers_face_size_comes_from_its_config() -> None:
    spec = _spec("face_restore", {"face": (3, 512, 512)}, {"restored": (3, 512, 512)})
    assert check_face_restore(spec) == 512


def test_a_restorer_off_contract_says_what_differs() -> None:
    spec = _spec("face_restore", {"face": (3, 512, 512)}, {"restored": (3, 256, 256)})
    with pytest.raises(ContractMismatch, match=r"output 'restored' should be FP32 \[3, S, S\]"):
        check_face_restore(spec)
    unbatched = _spec("r", {"face": (3, 8, 8)}, {"restored": (3, 8, 8)}, max_batch_size=0)
    with pytest.raises(ContractMismatch, match="max_batch_size"):
        check_face_restore(unbatched)


def test_the_gpu_guard_sees_the_restorer_only_when_it_is_served() -> None:
    detector = _spec("face_detector", {"image": (3, -1, -1)}, {"scores": (-1,)})
    restorer = _spec("face_restore", {"face": (3, 8, 8)}, {"restored": (3, 8, 8)})
    served = ServedModels(_lipsync(), detector, 96)
    assert [s.name for s in served.specs] == ["lipsync", "face_detector"]
    with_restorer = ServedModels(_lipsync(), detector, 96, face_restore=restorer, restore_size=8)
    assert [s.name for s in with_restorer.specs] == ["lipsync", "face_detector", "face_restore"]
