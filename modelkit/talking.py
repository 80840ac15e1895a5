"""The talking reference model: the Wav2Lip contract, a jaw that drops with the loudness.

No lip-sync weights can be downloaded here, so the default `lipsync` model is analytic,
but it should look like speech. Everything is in pixels of the S x S crop (S = 96 for
Wav2Lip), rows y and columns x counted from the top left, `reference` = face[:, 3:6]:

    e    = clip(mean((mel + 4) / 8), 0, 1)    over the first ENERGY_MEL_FRAMES mel frames
                                               (a NaN mean counts as 0: silence)
    u    = clip((e - QUIET_ENERGY) / (LOUD_ENERGY - QUIET_ENERGY), 0, 1)
    a    = u * u * (3 - 2 * u)                 openness in [0, 1]; exactly 0 when e <= QUIET
    drop = a * JAW_DROP * S                    how far the lower lip moves down, in pixels
    D    = jaw(x) * chin(y) * min(max(y - m, 0), drop)       m = MOUTH_LINE * S
    warped[y, x] = reference[y - D, x]         bilinear between rows, clamped to the crop
    h    = lips(x) * jaw(x) * drop / 2         half height of the opening at column x
    q    = h^2 - (y - m - h)^2                 > 0 between the upper and the moved lower lip
    alpha = OPENING_ALPHA * clip(q / OPENING_SOFTNESS, 0, 1)
    pred = warped + (OPENING_BGR - warped) * alpha

`jaw(x)` and `chin(y)` are fixed smoothstep profiles (1 in the middle, 0 towards the sides
or at the bottom of the crop); `lips(x)` = sqrt(1 - (dx / LIPS_HALF_WIDTH)^2) makes the
opening an ellipse. Above the mouth line D is 0, so the upper face never
moves; just below it D grows with slope 1 up to `drop`, so the rows there all show the
seam between the lips (the gap the dark opening fills) and the lower lip and chin below it
are moved down whole. At a = 0, D and alpha are exactly 0 and `pred` equals the reference
crop bit for bit: silence changes nothing, and end-to-end tests can tell exactly which
frames a sound drove. The graph is written with onnx.helper, so building it needs no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Wav2Lip's contract, shared with the grey-box model.
from modelkit.reference import MEL_BANDS, MEL_FLOOR, MEL_SPAN, MEL_WINDOW, OPSET

# The window of frame i starts at frame i's own time (DESIGN.md, "drive"); its first four
# mel frames (12.5 ms apart) are the sound while the frame is on screen at 25 fps, so the
# mouth moves with the syllable heard, not with the 200 ms average of the whole window.
ENERGY_MEL_FRAMES = 4
# Energy at which the mouth starts to open and at which it is fully open: measured on the
# demo speech; the generated voiced signal peaks near 0.27 between dips to ~0.05, espeak-ng
# runs 0.2-0.44, a white-noise click near full scale reaches ~0.65.
QUIET_ENERGY = 0.05
LOUD_ENERGY = 0.36
# Where the lips meet, as a fraction of the crop's height: face boxes padded the Wav2Lip
# way (10 % below the chin) put the mouth two thirds of the way down.
MOUTH_LINE = 0.675
# How far the jaw drops at full openness, as a fraction of the crop (8.6 px at S = 96).
JAW_DROP = 0.09
# The jaw's column profile, as fractions of the crop from its centre: (full up to, zero
# from); it fades smoothly so no column shears against its neighbour.
JAW_WIDTH = (0.16, 0.36)
# The opening between the lips is an ellipse this wide (half width, fraction of the crop).
LIPS_HALF_WIDTH = 0.18
# Row profile of the jaw below the mouth: full down to the chin, zero at the crop's bottom
# edge, so the composite's edge (where its mask is 0) sees no displacement.
CHIN = (0.86, 1.0)
# The inside of an open mouth, BGR in [0, 1] like the crop: dark reddish brown.
OPENING_BGR = (0.05, 0.07, 0.24)
OPENING_ALPHA = 0.9
# q is in pixels squared: a wide-open mouth (h ~ 4 px) is dark in its middle with an edge
# under a pixel wide; a barely open one (h < 2 px) is only a faint shadow between the lips.
OPENING_SOFTNESS = 6.0


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    smooth: np.ndarray = (u * u * (3.0 - 2.0 * u)).astype(np.float32)
    return smooth


def _centre_profile(size: int, width: tuple[float, float]) -> np.ndarray:
    """[size] float32: 1 within width[0] of the centre, falling smoothly to 0 at width[1]."""
    full, zero = width
    offset = np.abs((np.arange(size, dtype=np.float32) + 0.5) / size - 0.5)
    return _smoothstep((zero - offset) / (zero - full))


def jaw_profile(size: int) -> np.ndarray:
    return _centre_profile(size, JAW_WIDTH)


def lips_profile(size: int) -> np.ndarray:
    """[size] float32 over columns: the opening's half height relative to its middle,
    an ellipse of half width LIPS_HALF_WIDTH."""
    offset = ((np.arange(size, dtype=np.float32) + 0.5) / size - 0.5) / LIPS_HALF_WIDTH
    return np.sqrt(np.clip(1.0 - offset * offset, 0.0, 1.0)).astype(np.float32)


def chin_profile(size: int) -> np.ndarray:
    """[size] float32 over rows: 1 down to the chin, 0 at the crop's last row."""
    rows = np.arange(size, dtype=np.float32) / (size - 1)
    start, end = CHIN
    return _smoothstep((end - rows) / (end - start))


def mouth_line(size: int) -> float:
    return MOUTH_LINE * size


def _rows_from_line(size: int) -> np.ndarray:
    """[1, 1, size, 1] float32: each row's signed distance below the mouth line."""
    return (np.arange(size, dtype=np.float32) - np.float32(mouth_line(size)))[None, None, :, None]


def openness(mel: np.ndarray) -> np.ndarray:
    """Openness a in [0, 1] of each mel window in a [B, 1, 80, 16] batch, shape [B]."""
    head = mel[..., :ENERGY_MEL_FRAMES].astype(np.float32)
    energy = ((head - MEL_FLOOR) * np.float32(1.0 / MEL_SPAN)).mean(axis=(1, 2, 3))
    energy = np.clip(np.where(np.isnan(energy), np.float32(0), energy), 0, 1)
    u = (energy - np.float32(QUIET_ENERGY)) * np.float32(1.0 / (LOUD_ENERGY - QUIET_ENERGY))
    return _smoothstep(u)


def expected_prediction(mel: np.ndarray, face: np.ndarray) -> np.ndarray:
    """The model's formula in numpy: what Triton must return for these inputs."""
    size = face.shape[-1]
    reference = face[:, 3:6].astype(np.float32)
    drop = (openness(mel) * np.float32(JAW_DROP * size))[:, None, None, None]
    rows = np.arange(size, dtype=np.float32)[None, None, :, None]
    from_line = _rows_from_line(size)
    below = np.maximum(from_line, 0)
    jaw = jaw_profile(size)[None, None, None, :]
    displacement = jaw * chin_profile(size)[None, None, :, None] * np.minimum(below, drop)
    source = np.clip(rows - displacement, 0, size - 1)
    upper = np.floor(source)
    fraction = source - upper
    lower = np.minimum(upper + 1, size - 1)
    take = np.broadcast_to(upper.astype(np.int64), reference.shape)
    take_next = np.broadcast_to(lower.astype(np.int64), reference.shape)
    row_a = np.take_along_axis(reference, take, axis=2)
    row_b = np.take_along_axis(reference, take_next, axis=2)
    warped = row_a + (row_b - row_a) * fraction
    half = lips_profile(size)[None, None, None, :] * jaw * drop * np.float32(0.5)
    inside = half * half - np.square(from_line - half)
    alpha = np.float32(OPENING_ALPHA) * np.clip(inside * np.float32(1 / OPENING_SOFTNESS), 0, 1)
    colour = np.asarray(OPENING_BGR, np.float32)[None, :, None, None]
    opened: np.ndarray = (warped + (colour - warped) * alpha).astype(np.float32)
    return opened


def _constant(name: str, value: object, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def build_talking_model(face_size: int = 96) -> onnx.ModelProto:
    size = face_size
    constants = [
        _constant("ref_start", [3], np.int64),
        _constant("ref_end", [6], np.int64),
        _constant("channel_axis", [1], np.int64),
        _constant("head_start", [0], np.int64),
        _constant("head_end", [ENERGY_MEL_FRAMES], np.int64),
        _constant("time_axis", [3], np.int64),
        _constant("mel_offset", -MEL_FLOOR),
        _constant("mel_scale", 1.0 / MEL_SPAN),
        _constant("quiet", QUIET_ENERGY),
        _constant("ramp_scale", 1.0 / (LOUD_ENERGY - QUIET_ENERGY)),
        _constant("zero", 0.0),
        _constant("one", 1.0),
        _constant("two", 2.0),
        _constant("three", 3.0),
        _constant("half", 0.5),
        _constant("jaw_px", JAW_DROP * size),
        _constant("last_row", float(size - 1)),
        _constant("rows", np.arange(size, dtype=np.float32)[None, None, :, None]),
        _constant("below", np.maximum(_rows_from_line(size), 0)),
        _constant("from_line", _rows_from_line(size)),
        _constant("jaw_chin", jaw_profile(size)[None, :] * chin_profile(size)[:, None]),
        _constant("lips_jaw", (lips_profile(size) * jaw_profile(size))[None, None, None, :]),
        _constant("opening_alpha", OPENING_ALPHA),
        _constant("softness", 1.0 / OPENING_SOFTNESS),
        _constant("opening_bgr", np.asarray(OPENING_BGR)[None, :, None, None]),
    ]
    node = helper.make_node
    nodes = [
        node("Slice", ["face", "ref_start", "ref_end", "channel_axis"], ["reference"]),
        # openness a from the head of the mel window
        node("Slice", ["mel", "head_start", "head_end", "time_axis"], ["mel_head"]),
        node("Add", ["mel_head", "mel_offset"], ["mel_shifted"]),
        node("Mul", ["mel_shifted", "mel_scale"], ["mel_unit"]),
        node("ReduceMean", ["mel_unit"], ["energy_raw"], axes=[1, 2, 3], keepdims=1),
        # NaN energy (Triton's random warm-up data holds NaNs) would become an index out of
        # range in GatherElements and kill the server: read it as silence.
        node("IsNaN", ["energy_raw"], ["energy_nan"]),
        node("Where", ["energy_nan", "zero", "energy_raw"], ["energy_number"]),
        node("Clip", ["energy_number", "zero", "one"], ["energy"]),
        node("Sub", ["energy", "quiet"], ["over_quiet"]),
        node("Mul", ["over_quiet", "ramp_scale"], ["u_raw"]),
        node("Clip", ["u_raw", "zero", "one"], ["u"]),
        node("Mul", ["u", "two"], ["two_u"]),
        node("Sub", ["three", "two_u"], ["three_minus"]),
        node("Mul", ["u", "u"], ["u_squared"]),
        node("Mul", ["u_squared", "three_minus"], ["openness"]),
        node("Mul", ["openness", "jaw_px"], ["drop"]),
        # vertical displacement and the bilinear row sample
        node("Min", ["below", "drop"], ["gap"]),
        node("Mul", ["jaw_chin", "gap"], ["displacement"]),
        node("Sub", ["rows", "displacement"], ["source_raw"]),
        node("Clip", ["source_raw", "zero", "last_row"], ["source"]),
        node("Floor", ["source"], ["upper"]),
        node("Sub", ["source", "upper"], ["fraction"]),
        node("Add", ["upper", "one"], ["upper_next"]),
        node("Min", ["upper_next", "last_row"], ["lower"]),
        node("Shape", ["reference"], ["reference_shape"]),
        node("Cast", ["upper"], ["upper_index"], to=TensorProto.INT64),
        node("Cast", ["lower"], ["lower_index"], to=TensorProto.INT64),
        node("Expand", ["upper_index", "reference_shape"], ["take"]),
        node("Expand", ["lower_index", "reference_shape"], ["take_next"]),
        node("GatherElements", ["reference", "take"], ["row_a"], axis=2),
        node("GatherElements", ["reference", "take_next"], ["row_b"], axis=2),
        node("Sub", ["row_b", "row_a"], ["row_step"]),
        node("Mul", ["row_step", "fraction"], ["row_offset"]),
        node("Add", ["row_a", "row_offset"], ["warped"]),
        # the dark opening between the lips
        node("Mul", ["lips_jaw", "drop"], ["gap_height"]),
        node("Mul", ["gap_height", "half"], ["half_gap"]),
        node("Sub", ["from_line", "half_gap"], ["from_centre"]),
        node("Mul", ["from_centre", "from_centre"], ["from_centre_sq"]),
        node("Mul", ["half_gap", "half_gap"], ["half_gap_sq"]),
        node("Sub", ["half_gap_sq", "from_centre_sq"], ["inside"]),
        node("Mul", ["inside", "softness"], ["inside_unit"]),
        node("Clip", ["inside_unit", "zero", "one"], ["inside_clipped"]),
        node("Mul", ["inside_clipped", "opening_alpha"], ["alpha"]),
        node("Sub", ["opening_bgr", "warped"], ["towards_opening"]),
        node("Mul", ["towards_opening", "alpha"], ["shade"]),
        node("Add", ["warped", "shade"], ["pred"]),
    ]
    graph = helper.make_graph(
        nodes,
        "talking_reference_lipsync",
        inputs=[
            helper.make_tensor_value_info(
                "mel", TensorProto.FLOAT, ["batch", 1, MEL_BANDS, MEL_WINDOW]
            ),
            helper.make_tensor_value_info("face", TensorProto.FLOAT, ["batch", 6, size, size]),
        ],
        outputs=[
            helper.make_tensor_value_info("pred", TensorProto.FLOAT, ["batch", 3, size, size])
        ],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    # IR 8 keeps the file loadable by older onnxruntime builds such as Triton's.
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def export_talking(out: Path, face_size: int = 96) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_talking_model(face_size), str(out))
