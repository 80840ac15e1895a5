"""The analytic face restorer: the face_restore contract with an unsharp mask for a model.

No face-restoration weights ship with this repository, so `python -m modelkit.build
--face-restore unsharp` builds this one: it sharpens, as a restorer's output looks sharper
than its input, and it is exact, so tests can tell what restoration did to which pixels.

    blurred  = gaussian(face)          separable, SIGMA px, edges replicated
    restored = clip(face + AMOUNT * (face - blurred), 0, 1)

The contract (orchestrator/contracts.py, FACE_RESTORE): input `face` FP32 [B, 3, S, S] and
output `restored` of the same shape, BGR in [0, 1] like lipsync's `pred` (the unsharp mask
treats every channel alike, so the order only matters to a learned restorer). The graph
takes any S; the config says which one the orchestrator sends. Written with onnx.helper,
so building it needs no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from modelkit.reference import OPSET

MODEL_NAME = "face_restore"
# The side the orchestrator resizes faces to: a 1080p face box is ~250 px, so 256 keeps
# about the detail a frame has, at a quarter of GFPGAN's 512 in pixels sent.
FACE_SIZE = 256
# Unsharp-mask strength and the blur it subtracts: a visible but moderate sharpening at
# 256 px (photo editors' "amount 60 %, radius 2 px").
AMOUNT = 0.6
SIGMA = 2.0
RADIUS = 6  # 3 sigma: the kernel's tail beyond it is under 1 % of its weight
CHANNELS = 3
MAX_BATCH_SIZE = 16


def gaussian_kernel(sigma: float = SIGMA, radius: int = RADIUS) -> np.ndarray:
    """[2 * radius + 1] float32 weights summing to 1."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    weights: np.ndarray = (kernel / kernel.sum()).astype(np.float32)
    return weights


def expected_restored(face: np.ndarray) -> np.ndarray:
    """The model's formula in numpy ([B, 3, S, S] in [0, 1]): what Triton must return."""
    kernel = gaussian_kernel()
    padded = np.pad(face, ((0, 0), (0, 0), (RADIUS, RADIUS), (RADIUS, RADIUS)), mode="edge")
    size_y, size_x = face.shape[-2:]
    rows = sum(w * padded[..., i : i + size_y, :] for i, w in enumerate(kernel))
    blurred = sum(w * rows[..., :, i : i + size_x] for i, w in enumerate(kernel))
    sharpened: np.ndarray = np.clip(face + AMOUNT * (face - blurred), 0.0, 1.0).astype(np.float32)
    return sharpened


def build_unsharp_model() -> onnx.ModelProto:
    kernel = gaussian_kernel()
    taps = kernel.size
    # Depthwise (group = 3) convolutions: each channel blurred on its own, rows then columns.
    vertical = np.tile(kernel.reshape(1, 1, taps, 1), (CHANNELS, 1, 1, 1))
    horizontal = np.tile(kernel.reshape(1, 1, 1, taps), (CHANNELS, 1, 1, 1))
    pads = [0, 0, RADIUS, RADIUS, 0, 0, RADIUS, RADIUS]  # [begin N C H W, end N C H W]
    constants = [
        numpy_helper.from_array(vertical, "blur_rows"),
        numpy_helper.from_array(horizontal, "blur_cols"),
        numpy_helper.from_array(np.array(pads, np.int64), "pads"),
        numpy_helper.from_array(np.array(AMOUNT, np.float32), "amount"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Pad", ["face", "pads"], ["padded"], mode="edge"),
        helper.make_node("Conv", ["padded", "blur_rows"], ["rows_blurred"], group=CHANNELS),
        helper.make_node("Conv", ["rows_blurred", "blur_cols"], ["blurred"], group=CHANNELS),
        helper.make_node("Sub", ["face", "blurred"], ["detail"]),
        helper.make_node("Mul", ["detail", "amount"], ["boost"]),
        helper.make_node("Add", ["face", "boost"], ["sharpened"]),
        helper.make_node("Clip", ["sharpened", "zero", "one"], ["restored"]),
    ]
    shape: list[str | int | None] = ["batch", CHANNELS, "height", "width"]
    graph = helper.make_graph(
        nodes,
        "unsharp_face_restore",
        inputs=[helper.make_tensor_value_info("face", TensorProto.FLOAT, shape)],
        outputs=[helper.make_tensor_value_info("restored", TensorProto.FLOAT, shape)],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    # IR 8 keeps the file loadable by older onnxruntime builds such as Triton's.
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def export_unsharp(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_unsharp_model(), str(out))


def face_restore_config(
    size: int = FACE_SIZE, max_batch_size: int = MAX_BATCH_SIZE
) -> model_config_pb2.ModelConfig:
    """The face_restore config.pbtxt: the contract at `size`, batched, on the GPU."""
    config = model_config_pb2.ModelConfig(
        name=MODEL_NAME, platform="onnxruntime_onnx", max_batch_size=max_batch_size
    )
    for tensors, name in ((config.input, "face"), (config.output, "restored")):
        tensor = tensors.add(name=name, data_type=model_config_pb2.TYPE_FP32)
        tensor.dims.extend([CHANNELS, size, size])
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    group = config.instance_group.add(count=1)
    group.kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
    return config
