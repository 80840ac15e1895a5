"""The grey-box lip-sync model: the Wav2Lip contract with an output you can compute by hand.

A test instrument (`python -m modelkit.build --lipsync grey-box`); the default `lipsync`
model is the talking one in modelkit/talking.py.

    energy = clip(mean((mel + 4) / 8), 0, 1)          over the whole 80x16 window
    pred   = reference * (1 - DARKENING * energy * mouth)

`reference` is channels 3..5 of `face` (the unmasked reference crop) and `mouth` is 1 inside
MOUTH_BOX and 0 elsewhere. A silent window (mel at its floor, -4) leaves the crop untouched;
a loud one darkens the mouth. End-to-end tests use this to see exactly which output frames
an audio burst drove. The graph is written with onnx.helper, so building it needs no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Wav2Lip's contract: 80 mel bands, 16 mel frames per window, mel normalised to [-4, 4].
MEL_BANDS = 80
MEL_WINDOW = 16
MEL_FLOOR = -4.0
MEL_SPAN = 8.0
# How much a full-energy window darkens the mouth: 0.8 keeps the result visible on video.
DARKENING = 0.8
# Mouth region as fractions of the crop (rows top..bottom, cols left..right): the lower
# middle of a face box padded the Wav2Lip way.
MOUTH_BOX = (0.62, 0.90, 0.28, 0.72)
OPSET = 17


def mouth_mask(face_size: int) -> np.ndarray:
    """1.0 inside the mouth region of a `face_size` square crop, 0.0 elsewhere."""
    top, bottom, left, right = (round(f * face_size) for f in MOUTH_BOX)
    mask = np.zeros((face_size, face_size), dtype=np.float32)
    mask[top:bottom, left:right] = 1.0
    return mask


def window_energy(mel: np.ndarray) -> np.ndarray:
    """Energy in [0, 1] of each mel window in a [B, 1, 80, 16] batch, shape [B]."""
    energy = ((mel.astype(np.float32) - MEL_FLOOR) / MEL_SPAN).mean(axis=(1, 2, 3))
    clipped: np.ndarray = np.clip(energy, 0.0, 1.0)
    return clipped


def expected_prediction(mel: np.ndarray, face: np.ndarray) -> np.ndarray:
    """The model's formula in numpy: what Triton must return for these inputs."""
    face_size = face.shape[-1]
    gain = 1.0 - DARKENING * window_energy(mel)[:, None, None, None] * mouth_mask(face_size)
    prediction: np.ndarray = (face[:, 3:6] * gain).astype(np.float32)
    return prediction


def build_reference_model(face_size: int = 96) -> onnx.ModelProto:
    mask = numpy_helper.from_array(mouth_mask(face_size)[None, None], "mouth_mask")
    constants = [
        mask,
        numpy_helper.from_array(np.array([3], np.int64), "ref_start"),
        numpy_helper.from_array(np.array([6], np.int64), "ref_end"),
        numpy_helper.from_array(np.array([1], np.int64), "channel_axis"),
        numpy_helper.from_array(np.array(-MEL_FLOOR, np.float32), "mel_offset"),
        numpy_helper.from_array(np.array(1.0 / MEL_SPAN, np.float32), "mel_scale"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(DARKENING, np.float32), "darkening"),
    ]
    nodes = [
        helper.make_node("Slice", ["face", "ref_start", "ref_end", "channel_axis"], ["reference"]),
        helper.make_node("Add", ["mel", "mel_offset"], ["mel_shifted"]),
        helper.make_node("Mul", ["mel_shifted", "mel_scale"], ["mel_unit"]),
        helper.make_node("ReduceMean", ["mel_unit"], ["energy_raw"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Clip", ["energy_raw", "zero", "one"], ["energy"]),
        helper.make_node("Mul", ["energy", "darkening"], ["strength"]),
        helper.make_node("Mul", ["strength", "mouth_mask"], ["shade"]),
        helper.make_node("Sub", ["one", "shade"], ["gain"]),
        helper.make_node("Mul", ["reference", "gain"], ["pred"]),
    ]
    graph = helper.make_graph(
        nodes,
        "reference_lipsync",
        inputs=[
            helper.make_tensor_value_info(
                "mel", TensorProto.FLOAT, ["batch", 1, MEL_BANDS, MEL_WINDOW]
            ),
            helper.make_tensor_value_info(
                "face", TensorProto.FLOAT, ["batch", 6, face_size, face_size]
            ),
        ],
        outputs=[
            helper.make_tensor_value_info(
                "pred", TensorProto.FLOAT, ["batch", 3, face_size, face_size]
            )
        ],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    # IR 8 keeps the file loadable by older onnxruntime builds such as Triton's.
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def export_reference(out: Path, face_size: int = 96) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_reference_model(face_size), str(out))
