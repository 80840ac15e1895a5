"""What the lip-sync model needs per frame: multiply-adds of its convolutions, from the graph.

    python -m benchmarks.flops [MODEL.onnx]     # default: the Wav2Lip-96 ONNX (random weights)

Counts Conv and ConvTranspose nodes at batch 1 from ONNX shape inference (they are all
but a fraction of a percent of Wav2Lip's arithmetic); one multiply-add is two FLOPs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import onnx
from onnx import shape_inference


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for value in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        dims = [
            d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim
        ]
        shapes[value.name] = dims  # a symbolic (batch) axis counts as 1
    return shapes


def conv_macs(path: Path) -> int:
    """Multiply-adds of one frame through every Conv and ConvTranspose of the graph."""
    model = shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = _shapes(model)
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        kernel = weights[node.input[1]]
        if node.op_type == "Conv":
            # weight [Cout, Cin/g, kh, kw]: every output element costs Cin/g * kh * kw.
            total += math.prod(shapes[node.output[0]]) * math.prod(kernel[1:])
        else:
            # weight [Cin, Cout/g, kh, kw]: every input element is spread over Cout/g * kh * kw.
            total += math.prod(shapes[node.input[0]]) * math.prod(kernel[1:])
    return total


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        path = Path(args[0])
    else:
        from benchmarks.common import wav2lip_onnx

        path = wav2lip_onnx()
    macs = conv_macs(path)
    print(f"{path.name}: {macs / 1e9:.2f} GMAC = {2 * macs / 1e9:.2f} GFLOP per frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
