"""The Wav2Lip-96 generator: random weights for honest timings, or a real checkpoint, to ONNX.

The layers, attribute names and layer order are those of the public Wav2Lip repository
(models/wav2lip.py and models/conv.py), so its checkpoints load with strict key checking.
The exported graph is the lipsync contract: `mel` [B, 1, 80, 16] and `face` [B, 6, 96, 96]
in, `pred` [B, 3, 96, 96] in [0, 1] out.
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

# Wav2Lip's input sizes: 80 mel bands x 16 mel frames per window, 96-pixel face crops
# (the target with its lower half masked, stacked on a reference: 6 channels).
MEL_BANDS = 80
MEL_WINDOW = 16
FACE_SIZE = 96
FACE_CHANNELS = 6
# nn.DataParallel, which Wav2Lip trains under, prefixes every key of its checkpoints.
DATA_PARALLEL_PREFIX = "module."
OPSET = 17
# Batch of the traced example: above 1 so nothing in the trace can specialise on it.
EXPORT_BATCH = 2


class ConvBlock(nn.Module):
    """Conv, BatchNorm, optional residual add, ReLU (Wav2Lip's `Conv2d`)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class ConvTransposeBlock(nn.Module):
    """Transposed conv, BatchNorm, ReLU (Wav2Lip's `Conv2dTranspose`)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int,
        padding: int,
        output_padding: int = 0,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _residuals(channels: int, count: int) -> list[ConvBlock]:
    return [ConvBlock(channels, channels, 3, 1, 1, residual=True) for _ in range(count)]


class Wav2Lip(nn.Module):
    """Encodes the mel window and the face, then decodes a face with U-Net skip connections."""

    def __init__(self) -> None:
        super().__init__()
        # Comments give each block's output side for a 96-pixel face.
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(6, 16, 7, 1, 3)),  # 96
                nn.Sequential(ConvBlock(16, 32, 3, 2, 1), *_residuals(32, 2)),  # 48
                nn.Sequential(ConvBlock(32, 64, 3, 2, 1), *_residuals(64, 3)),  # 24
                nn.Sequential(ConvBlock(64, 128, 3, 2, 1), *_residuals(128, 2)),  # 12
                nn.Sequential(ConvBlock(128, 256, 3, 2, 1), *_residuals(256, 2)),  # 6
                nn.Sequential(ConvBlock(256, 512, 3, 2, 1), *_residuals(512, 1)),  # 3
                nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),  # 1
            ]
        )
        self.audio_encoder = nn.Sequential(
            ConvBlock(1, 32, 3, 1, 1),
            *_residuals(32, 2),
            ConvBlock(32, 64, 3, (3, 1), 1),
            *_residuals(64, 2),
            ConvBlock(64, 128, 3, 3, 1),
            *_residuals(128, 2),
            ConvBlock(128, 256, 3, (3, 2), 1),
            *_residuals(256, 1),
            ConvBlock(256, 512, 3, 1, 0),
            ConvBlock(512, 512, 1, 1, 0),
        )
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),  # 1
                nn.Sequential(ConvTransposeBlock(1024, 512, 3, 1, 0), *_residuals(512, 1)),  # 3
                nn.Sequential(ConvTransposeBlock(1024, 512, 3, 2, 1, 1), *_residuals(512, 2)),  # 6
                nn.Sequential(ConvTransposeBlock(768, 384, 3, 2, 1, 1), *_residuals(384, 2)),  # 12
                nn.Sequential(ConvTransposeBlock(512, 256, 3, 2, 1, 1), *_residuals(256, 2)),  # 24
                nn.Sequential(ConvTransposeBlock(320, 128, 3, 2, 1, 1), *_residuals(128, 2)),  # 48
                nn.Sequential(ConvTransposeBlock(160, 64, 3, 2, 1, 1), *_residuals(64, 2)),  # 96
            ]
        )
        self.output_block = nn.Sequential(
            ConvBlock(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid()
        )

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """mel [B, 1, 80, 16], face [B, 6, 96, 96] -> predicted face [B, 3, 96, 96] in [0, 1]."""
        skips = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(mel)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        return self.output_block(x)


def random_generator(seed: int) -> Wav2Lip:
    """Wav2Lip with PyTorch's default initialisation drawn from `seed`, in eval mode."""
    # A private RNG stream: building the model leaves the caller's random state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Lip()
    return model.eval()


def load_checkpoint(path: Path) -> Wav2Lip:
    """Wav2Lip with the weights of a Wav2Lip training checkpoint, in eval mode."""
    checkpoint = read_torch_file(path)
    if not isinstance(checkpoint, Mapping):
        raise ModelBuildError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint")
    # Training checkpoints wrap the weights in "state_dict"; a bare state dict is accepted too.
    state_dict: Mapping[str, Any] = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ModelBuildError(f"{path}: 'state_dict' is a {type(state_dict).__name__}, not a dict")
    model = Wav2Lip()
    load_exactly(model, _without_data_parallel_prefix(state_dict), path)
    return model.eval()


def _without_data_parallel_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    return {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in state_dict.items()}


def export_wav2lip(model: Wav2Lip, out: Path) -> None:
    """Writes `model` to `out` as ONNX with the lipsync contract; only the batch is dynamic."""
    model = model.eval()
    example = (
        torch.zeros(EXPORT_BATCH, 1, MEL_BANDS, MEL_WINDOW),
        torch.zeros(EXPORT_BATCH, FACE_CHANNELS, FACE_SIZE, FACE_SIZE),
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
