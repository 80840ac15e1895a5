"""What the pipeline needs of each model's tensors, and the check that says what differs.

Shapes exclude the batch axis. An int must match exactly; a letter binds to a positive size
that must be the same wherever the letter appears (the lipsync face size S); "?" is any
size, variable (-1) included.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import ContractMismatch

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.datatype} [{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class TensorContract:
    name: str
    datatype: str
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        return f"{self.datatype} [{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class ModelContract:
    inputs: tuple[TensorContract, ...]
    outputs: tuple[TensorContract, ...]


# Wav2Lip's generator contract (docs/models.md): 80 mel bands x 16 mel frames, a 6-channel face
# stack (masked target over reference) of side S, and a 3-channel prediction of side S.
LIPSYNC = ModelContract(
    inputs=(
        TensorContract("mel", "FP32", (1, 80, 16)),
        TensorContract("face", "FP32", (6, "S", "S")),
    ),
    outputs=(TensorContract("pred", "FP32", (3, "S", "S")),),
)
# An optional face restorer (GFPGAN, the analytic unsharp mask): one face crop of side S in,
# the restored crop out. BGR in [0, 1] like lipsync's `pred`, so the generator's output goes
# in as it is; a converter for an RGB model (GFPGAN wants RGB in [-1, 1]) flips the channels
# and rescales inside its graph. S is the restorer's own size (512 for GFPGAN).
FACE_RESTORE = ModelContract(
    inputs=(TensorContract("face", "FP32", (3, "S", "S")),),
    outputs=(TensorContract("restored", "FP32", (3, "S", "S")),),
)
# S3FD with in-graph box decoding: any image size in, one row per prior box out.
FACE_DETECTOR = ModelContract(
    inputs=(TensorContract("image", "FP32", (3, "?", "?")),),
    outputs=(
        TensorContract("boxes", "FP32", ("?", 4)),
        TensorContract("scores", "FP32", ("?",)),
    ),
)


def _match(
    model: str, kind: str, want: TensorContract, found: TensorSpec, bound: dict[str, int]
) -> None:
    def fail() -> ContractMismatch:
        return ContractMismatch(
            model,
            f"{kind} '{want.name}' should be {want.describe()} but is {found.describe()}",
        )

    if found.datatype != want.datatype or len(found.shape) != len(want.shape):
        raise fail()
    for expected, actual in zip(want.shape, found.shape, strict=True):
        if expected == "?":
            continue
        if isinstance(expected, int):
            if actual != expected:
                raise fail()
        elif actual <= 0 or bound.setdefault(expected, actual) != actual:
            raise fail()


def check_contract(
    model: str,
    contract: ModelContract,
    inputs: dict[str, TensorSpec],
    outputs: dict[str, TensorSpec],
) -> dict[str, int]:
    """Raises ContractMismatch naming the model, tensor, expectation and finding; returns
    the sizes the letters bound to (e.g. {"S": 96})."""
    bound: dict[str, int] = {}
    for kind, wanted, found in (
        ("input", contract.inputs, inputs),
        ("output", contract.outputs, outputs),
    ):
        for want in wanted:
            if want.name not in found:
                have = ", ".join(f"{t.name} {t.describe()}" for t in found.values()) or "none"
                raise ContractMismatch(
                    model,
                    f"has no {kind} '{want.name}' (expected {want.describe()}); it has: {have}",
                )
            _match(model, kind, want, found[want.name], bound)
    return bound
