from __future__ import annotations

import pytest

from orchestrator.contracts import LIPSYNC, TensorSpec, check_contract
from orchestrator.errors import ContractMismatch

MEL = TensorSpec("mel", "FP32", (1, 80, 16))
PRED = TensorSpec("pred", "FP32", (3, 128, 128))


def test_face_size_is_bound_from_the_model() -> None:
    face = TensorSpec("face", "FP32", (6, 128, 128))
    assert check_contract("m", LIPSYNC, {"mel": MEL, "face": face}, {"pred": PRED}) == {"S": 128}


def test_inconsistent_face_size_names_tensor_and_both_shapes() -> None:
    face = TensorSpec("face", "FP32", (6, 96, 96))
    with pytest.raises(ContractMismatch) as caught:
        check_contract("lipsync", LIPSYNC, {"mel": MEL, "face": face}, {"pred": PRED})
    assert str(caught.value) == (
        "infer: model 'lipsync': output 'pred' should be FP32 [3, S, S] but is FP32 [3, 128, 128]"
    )


def test_wrong_datatype_is_a_mismatch() -> None:
    face = TensorSpec("face", "FP16", (6, 128, 128))
    with pytest.raises(ContractMismatch, match=r"input 'face' should be FP32 .* but is FP16"):
        check_contract("lipsync", LIPSYNC, {"mel": MEL, "face": face}, {"pred": PRED})


def test_variable_face_size_is_not_accepted() -> None:
    face = TensorSpec("face", "FP32", (6, -1, -1))
    with pytest.raises(ContractMismatch, match=r"input 'face' should be FP32 \[6, S, S\]"):
        check_contract("lipsync", LIPSYNC, {"mel": MEL, "face": face}, {"pred": PRED})
