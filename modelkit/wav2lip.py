"""Wav2Lip generators of every accepted face size: random weights or a checkpoint, to ONNX.

The layers, attribute names and layer order are those of the public Wav2Lip repository
(models/wav2lip.py and models/conv.py), so its checkpoints load with strict key checking;
the larger faces follow the layouts in modelkit/wav2lip_layouts.py. The exported graph is
the lipsync contract: `mel` [B, 1, 80, 16] and `face` [B, 6, S, S] in, `pred` [B, 3, S, S]
in [0, 1] out, S the layout's face size.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from modelkit.errors import ModelBuildError, load_exactly, read_torch_file
from modelkit.wav2lip_layouts import (
    LAYOUTS,
    WAV2LIP_96,
    Down,
    Layout,
    Up,
    describe_layouts,
    layout_for_size,
)

# Wav2Lip's input sizes: 80 mel bands x 16 mel frames per window; the face crop is the
# target with its lower half masked, stacked on a reference: 6 channels.
MEL_BANDS = 80
MEL_WINDOW = 16
FACE_CHANNELS = 6
# Kept for callers that mean Wav2Lip-96.
FACE_SIZE = WAV2LIP_96.face_size
# nn.DataParallel, which Wav2Lip trains under, prefixes every key of its checkpoints.
DATA_PARALLEL_PREFIX = "module."
# BatchNorm's step counter: torch fills it in when a checkpoint predates it, and it says
# nothing about the layout.
STEP_COUNTER = ".num_batches_tracked"
OPSET = 17
# Batch of the traced example: above 1 so nothing in the trace can specialise on it.
EXPORT_BATCH = 2
# Wav2Lip's bottleneck and the width of its output block's hidden conv.
EMBEDDING = 512
OUTPUT_HIDDEN = 32


def _activation(kind: str) -> nn.Module:
    return nn.PReLU() if kind == "prelu" else nn.ReLU()


class ConvBlock(nn.Module):
    """Conv, BatchNorm, optional residual add, activation (Wav2Lip's `Conv2d`)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout)
        )
        self.act = _activation(activation)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv_block(x)
        if self.residual:
            out = out + x
        activated: torch.Tensor = self.act(out)
        return activated


class ConvTransposeBlock(nn.Module):
    """Transposed conv, BatchNorm, activation (Wav2Lip's `Conv2dTranspose`)."""

    def __init__(self, cin: int, up: Up, activation: str) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, up.cout, up.kernel, up.stride, up.padding, up.output_padding),
            nn.BatchNorm2d(up.cout),
        )
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated: torch.Tensor = self.act(self.conv_block(x))
        return activated


def _residuals(channels: int, count: int, activation: str) -> list[nn.Module]:
    return [
        ConvBlock(channels, channels, 3, 1, 1, residual=True, activation=activation)
        for _ in range(count)
    ]


def _encoder_stage(cin: int, down: Down, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = [
        ConvBlock(cin, down.cout, down.kernel, down.stride, down.padding, activation=activation),
        *_residuals(down.cout, down.residuals, activation),
    ]
    if down.pointwise:
        layers.append(ConvBlock(down.cout, down.cout, 1, 1, 0, activation=activation))
    return nn.Sequential(*layers)


def _audio_encoder(act: str) -> nn.Sequential:
    """Wav2Lip's, in every layout: [1, 80, 16] -> [512, 1, 1]."""
    return nn.Sequential(
        ConvBlock(1, 32, 3, 1, 1, activation=act),
        *_residuals(32, 2, act),
        ConvBlock(32, 64, 3, (3, 1), 1, activation=act),
        *_residuals(64, 2, act),
        ConvBlock(64, 128, 3, 3, 1, activation=act),
        *_residuals(128, 2, act),
        ConvBlock(128, 256, 3, (3, 2), 1, activation=act),
        *_residuals(256, 1, act),
        ConvBlock(256, EMBEDDING, 3, 1, 0, activation=act),
        ConvBlock(EMBEDDING, EMBEDDING, 1, 1, 0, activation=act),
    )


class Wav2Lip(nn.Module):
    """Encodes the mel window and the face, then decodes a face with U-Net skip connections."""

    def __init__(self, layout: Layout = WAV2LIP_96) -> None:
        super().__init__()
        self.layout = layout
        act = layout.activation
        skips = [down.cout for down in layout.encoder]
        cins = [FACE_CHANNELS, *skips[:-1]]
        self.face_encoder_blocks = nn.ModuleList(
            _encoder_stage(cin, down, act) for cin, down in zip(cins, layout.encoder, strict=True)
        )
        self.audio_encoder = _audio_encoder(act)
        decoder: list[nn.Module] = [
            nn.Sequential(ConvBlock(EMBEDDING, EMBEDDING, 1, 1, 0, activation=act))
        ]
        # Each stage reads the previous stage's output concatenated with the encoder output
        # of the same size, deepest first.
        width = EMBEDDING + skips[-1]
        for up, skip in zip(layout.decoder, reversed(skips[:-1]), strict=True):
            decoder.append(
                nn.Sequential(
                    ConvTransposeBlock(width, up, act), *_residuals(up.cout, up.residuals, act)
                )
            )
            width = up.cout + skip
        self.face_decoder_blocks = nn.ModuleList(decoder)
        self.output_block = nn.Sequential(
            ConvBlock(width, OUTPUT_HIDDEN, 3, 1, 1, activation=act),
            nn.Conv2d(OUTPUT_HIDDEN, 3, 1, 1, 0),
            nn.Sigmoid(),
        )

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """mel [B, 1, 80, 16], face [B, 6, S, S] -> predicted face [B, 3, S, S] in [0, 1]."""
        skips = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(mel)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        frame: torch.Tensor = self.output_block(x)
        return frame


def random_generator(seed: int, layout: Layout = WAV2LIP_96) -> Wav2Lip:
    """The generator with PyTorch's default initialisation drawn from `seed`, in eval mode."""
    # A private RNG stream: building the model leaves the caller's random state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Lip(layout)
    return model.eval()


def read_generator_weights(path: Path) -> dict[str, Any]:
    """The generator's tensors in a checkpoint file, without DataParallel's prefix.

    Accepted: a bare state dict, or a training checkpoint that holds it under "state_dict"
    (Wav2Lip's and Wav2Lip-GAN's, which also carry the optimiser and step counters)."""
    checkpoint = read_torch_file(path)
    if not isinstance(checkpoint, Mapping):
        raise ModelBuildError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint")
    state_dict: Mapping[str, Any] = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ModelBuildError(f"{path}: 'state_dict' is a {type(state_dict).__name__}, not a dict")
    return {str(key).removeprefix(DATA_PARALLEL_PREFIX): value for key, value in state_dict.items()}


def _layout_shapes(layout: Layout) -> dict[str, tuple[int, ...]]:
    # On the meta device: shapes without allocating (or initialising) any weight.
    with torch.device("meta"):
        model = Wav2Lip(layout)
    return {
        key: tuple(tensor.shape)
        for key, tensor in model.state_dict().items()
        if not key.endswith(STEP_COUNTER)
    }


def _mismatches(weights: Mapping[str, Any], shapes: dict[str, tuple[int, ...]]) -> int:
    found = {
        key: tuple(value.shape) if isinstance(value, torch.Tensor) else None
        for key, value in weights.items()
        if not key.endswith(STEP_COUNTER)
    }
    return sum(found.get(key) != shape for key, shape in shapes.items()) + sum(
        key not in shapes for key in found
    )


def detect_layout(weights: Mapping[str, Any], path: Path, face_size: int | None = None) -> Layout:
    """The layout whose tensor names and shapes the weights match exactly, or a
    ModelBuildError naming the first keys that do not fit the closest layout."""
    candidates = list(LAYOUTS) if face_size is None else [layout_for_size(face_size)]
    scored = [(_mismatches(weights, _layout_shapes(layout)), layout) for layout in candidates]
    misses, closest = min(scored, key=lambda pair: pair[0])
    if misses == 0:
        return closest
    try:
        load_exactly(Wav2Lip(closest), weights, path)
    except ModelBuildError as exc:
        raise ModelBuildError(
            f"{exc} (closest layout: {closest.name}); accepted layouts: {describe_layouts()}"
        ) from None
    return closest  # not reached: a mismatch always fails load_exactly


def load_checkpoint(path: Path, face_size: int | None = None) -> Wav2Lip:
    """The generator a checkpoint holds, its layout told by its tensors, in eval mode.
    `face_size`: refuse a checkpoint of any other size."""
    weights = read_generator_weights(path)
    return model_from_weights(weights, detect_layout(weights, path, face_size), path)


def model_from_weights(weights: Mapping[str, Any], layout: Layout, path: Path) -> Wav2Lip:
    model = Wav2Lip(layout)
    load_exactly(model, weights, path)
    return model.eval()


def export_wav2lip(model: Wav2Lip, out: Path) -> None:
    """Writes `model` to `out` as ONNX with the lipsync contract; only the batch is dynamic."""
    model = model.eval()
    size = model.layout.face_size
    example = (
        torch.zeros(EXPORT_BATCH, 1, MEL_BANDS, MEL_WINDOW),
        torch.zeros(EXPORT_BATCH, FACE_CHANNELS, size, size),
    )
    batch = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (no onnxscript); its deprecation
        # notice is known.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            example,
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=["mel", "face"],
            output_names=["pred"],
            dynamic_axes={"mel": batch, "face": batch, "pred": batch},
        )
    onnx.checker.check_model(str(out))
