"""GFPGAN v1.4, the "clean" architecture (no custom CUDA ops), from a user's .pth to ONNX.

GFPGAN restores a face: a U-Net encodes the degraded 512-pixel face into one style code per
decoder layer and a pyramid of spatial features; a StyleGAN2 decoder (the face prior) draws
the face from those codes while the U-Net features steer it through spatial feature
transforms (SFT: a per-pixel scale and shift on half of each layer's channels).

The module and attribute names follow the published GFPGANv1Clean, so the released
GFPGANv1.4.pth (weights under `params_ema`) loads with strict key checking. The exported
graph is the `face_restore` contract: `face` FP32 [B, 3, S, S] BGR in [0, 1] in, `restored`
FP32 [B, 3, S, S] BGR in [0, 1] out; GFPGAN's own RGB order and [-1, 1] scaling live inside
the graph.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import torch
from google.protobuf import text_format
from torch import nn
from torch.nn import functional as F
from tritonclient.grpc import model_config_pb2

from modelkit.errors import ModelBuildError, load_exactly, read_torch_file

# GFPGAN v1.4's constructor arguments, as GFPGANer builds it for inference (v1.2 and v1.3
# use the same ones).
OUT_SIZE = 512
NUM_STYLE_FEAT = 512
CHANNEL_MULTIPLIER = 2
NARROW = 1.0
NUM_MLP = 8
# StyleGAN2's activation, and the gain that keeps a leaky-ReLU layer's variance at 1.
LEAKY_SLOPE = 0.2
STYLE_CONV_GAIN = math.sqrt(2.0)
# StyleGAN2's epsilon under the square roots of demodulation and style normalisation.
DEMODULATION_EPS = 1e-8
# Where GFPGAN's training keeps the weights: the EMA copy is the one released and used.
CHECKPOINT_KEYS = ("params_ema", "params")

MODEL_NAME = "face_restore"
OPSET = 17
# Batch of the traced example: above 1 so nothing in the trace can specialise on it.
EXPORT_BATCH = 2
# Triton serving: a face is ~396 GFLOPs (docs/models.md), so batches stay small.
MAX_BATCH_SIZE = 8
PREFERRED_BATCH_SIZES = (4, 8)
MAX_QUEUE_DELAY_US = 5000
MAX_QUEUE_SIZE = 256
QUEUE_TIMEOUT_US = 60_000_000


def _channels(multiplier: float, narrow: float) -> dict[int, int]:
    """StyleGAN2's channels per feature-map side; the U-Net uses half of each."""
    wide = {4: 512, 8: 512, 16: 512, 32: 512}
    tapering = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    return {side: int(c * narrow) for side, c in wide.items()} | {
        side: int(c * multiplier * narrow) for side, c in tapering.items()
    }


def _resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


class ResBlock(nn.Module):
    """Two 3x3 convs around a bilinear resize, plus a resized 1x1 skip (GFPGAN's U-Net)."""

    def __init__(self, cin: int, cout: int, scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1)
        self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _resize(F.leaky_relu(self.conv1(x), LEAKY_SLOPE), self.scale)
        skipped: torch.Tensor = self.skip(_resize(x, self.scale))
        return F.leaky_relu(self.conv2(out), LEAKY_SLOPE) + skipped


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution, computed by scaling the input instead of the weight.

    The published code scales the weight per sample and runs one grouped conv with
    groups=batch; ONNX fixes `group` when the graph is traced, so that form cannot have a
    dynamic batch. conv(x * s, w) * d equals conv(x, w * s * d) exactly in real arithmetic.
    """

    def __init__(
        self, cin: int, cout: int, kernel: int, style_dim: int, demodulate: bool, upsample: bool
    ) -> None:
        super().__init__()
        self.modulation = nn.Linear(style_dim, cin)
        # StyleGAN2 starts the modulation at 1 (bias 1), so a fresh layer passes features on.
        nn.init.ones_(self.modulation.bias)
        fan_in = cin * kernel * kernel
        self.weight = nn.Parameter(torch.randn(1, cout, cin, kernel, kernel) / math.sqrt(fan_in))
        self.demodulate = demodulate
        self.upsample = upsample

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale = self.modulation(style)  # [B, cin]
        weight = self.weight[0]  # [cout, cin, k, k]
        if self.upsample:
            x = _resize(x, 2.0)
        out = F.conv2d(x * scale[:, :, None, None], weight, padding=weight.shape[-1] // 2)
        if self.demodulate:
            # The L2 norm of each sample's modulated kernel: sum over cin, k, k of (w * s)^2.
            energy = scale.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t()  # [B, cout]
            out = out * torch.rsqrt(energy + DEMODULATION_EPS)[:, :, None, None]
        return out


class StyleConv(nn.Module):
    """Modulated 3x3 conv, scaled noise, bias, leaky ReLU."""

    def __init__(self, cin: int, cout: int, style_dim: int, upsample: bool) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(cin, cout, 3, style_dim, True, upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # the noise strength
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.modulated_conv(x, style) * STYLE_CONV_GAIN + self.weight * noise + self.bias
        return F.leaky_relu(out, LEAKY_SLOPE)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB, added to the upsampled RGB of the layer below."""

    def __init__(self, cin: int, style_dim: int) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(cin, 3, 1, style_dim, False, False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(
        self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None
    ) -> torch.Tensor:
        out: torch.Tensor = self.modulated_conv(x, style) + self.bias
        return out if skip is None else out + _resize(skip, 2.0)


class NormStyleCode(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + DEMODULATION_EPS)


class ConstantInput(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, 4, 4))


class StyleGAN2GeneratorCSFT(nn.Module):
    """The StyleGAN2 decoder with SFT on its first conv of every resolution."""

    def __init__(self, out_size: int, style_dim: int, multiplier: float, narrow: float) -> None:
        super().__init__()
        channels = _channels(multiplier, narrow)
        log_size = int(math.log2(out_size))
        # The style MLP maps noise to latents when StyleGAN2 samples; GFPGAN feeds latents
        # straight from its encoder (input_is_latent), so it is kept only for its weights.
        mlp: list[nn.Module] = [NormStyleCode()]
        for _ in range(NUM_MLP):
            mlp += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(LEAKY_SLOPE)]
        self.style_mlp = nn.Sequential(*mlp)
        self.constant_input = ConstantInput(channels[4])
        self.style_conv1 = StyleConv(channels[4], channels[4], style_dim, upsample=False)
        self.to_rgb1 = ToRGB(channels[4], style_dim)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        # Fixed noise per conv layer, stored in the checkpoint: the deterministic noise that
        # GFPGAN's randomize_noise=False uses, and the one this export always uses.
        self.noises = nn.Module()
        self.num_layers = (log_size - 2) * 2 + 1
        for layer in range(self.num_layers):
            side = 2 ** ((layer + 5) // 2)
            self.noises.register_buffer(f"noise{layer}", torch.randn(1, 1, side, side))
        cin = channels[4]
        for log_side in range(3, log_size + 1):
            cout = channels[2**log_side]
            self.style_convs.append(StyleConv(cin, cout, style_dim, upsample=True))
            self.style_convs.append(StyleConv(cout, cout, style_dim, upsample=False))
            self.to_rgbs.append(ToRGB(cout, style_dim))
            cin = cout

    def forward(self, latent: torch.Tensor, conditions: list[torch.Tensor]) -> torch.Tensor:
        """latent [B, 2 log2(S) - 2, style_dim]; conditions: (scale, shift) per resolution."""
        noise = [getattr(self.noises, f"noise{layer}") for layer in range(self.num_layers)]
        # The constant [1, C, 4, 4] meets each sample's style by broadcasting; an explicit
        # expand to the batch would be traced as the example's batch size.
        out = self.style_conv1(self.constant_input.weight, latent[:, 0], noise[0])
        rgb: torch.Tensor = self.to_rgb1(out, latent[:, 1], None)
        for level, to_rgb in enumerate(self.to_rgbs):
            i = 2 * level + 1  # latent and noise index of this resolution's first conv
            out = self.style_convs[2 * level](out, latent[:, i], noise[i])
            # sft_half: half of the channels pass untouched, the other half is steered.
            kept, steered = torch.chunk(out, 2, dim=1)
            scale, shift = conditions[2 * level], conditions[2 * level + 1]
            out = torch.cat([kept, steered * scale + shift], dim=1)
            out = self.style_convs[2 * level + 1](out, latent[:, i + 1], noise[i + 1])
            rgb = to_rgb(out, latent[:, i + 2], rgb)
        return rgb


def _sft_branch(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1),
        nn.LeakyReLU(LEAKY_SLOPE),
        nn.Conv2d(channels, channels, 3, 1, 1),
    )


class GFPGANv1Clean(nn.Module):
    """U-Net encoder and SFT conditions around a StyleGAN2 decoder; [-1, 1] in and out.

    Only v1.4's switches are built (different_w, sft_half, input_is_latent all on); the
    sizes are parameters so tests can build a small instance of the same graph.
    """

    def __init__(
        self,
        out_size: int = OUT_SIZE,
        style_dim: int = NUM_STYLE_FEAT,
        multiplier: float = CHANNEL_MULTIPLIER,
        narrow: float = NARROW,
    ) -> None:
        super().__init__()
        unet = {side: c // 2 for side, c in _channels(multiplier, narrow).items()}
        self.log_size = int(math.log2(out_size))
        if 2**self.log_size != out_size or self.log_size < 3:
            raise ModelBuildError(f"GFPGAN needs a power-of-two face size >= 8, not {out_size}")
        self.out_size = out_size
        self.style_dim = style_dim
        self.conv_body_first = nn.Conv2d(3, unet[out_size], 1)
        sides_down = [2**i for i in range(self.log_size - 1, 1, -1)]  # S/2 ... 4
        sides_up = [2**i for i in range(3, self.log_size + 1)]  # 8 ... S
        self.conv_body_down = nn.ModuleList(
            ResBlock(unet[2 * side], unet[side], 0.5) for side in sides_down
        )
        self.final_conv = nn.Conv2d(unet[4], unet[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList(
            ResBlock(unet[side // 2], unet[side], 2.0) for side in sides_up
        )
        # Intermediate RGB outputs for the training losses; inference never runs them.
        self.toRGB = nn.ModuleList(nn.Conv2d(unet[side], 3, 1) for side in sides_up)
        # different_w: one style code per decoder latent, 2 log2(S) - 2 of them.
        self.final_linear = nn.Linear(unet[4] * 4 * 4, (2 * self.log_size - 2) * style_dim)
        self.stylegan_decoder = StyleGAN2GeneratorCSFT(out_size, style_dim, multiplier, narrow)
        self.condition_scale = nn.ModuleList(_sft_branch(unet[side]) for side in sides_up)
        self.condition_shift = nn.ModuleList(_sft_branch(unet[side]) for side in sides_up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.leaky_relu(self.conv_body_first(x), LEAKY_SLOPE)
        skips = []
        for down in self.conv_body_down:
            feat = down(feat)
            skips.append(feat)
        feat = F.leaky_relu(self.final_conv(feat), LEAKY_SLOPE)
        latent = self.final_linear(feat.flatten(1)).unflatten(1, (-1, self.style_dim))
        conditions = []
        for up, scale, shift in zip(
            self.conv_body_up, self.condition_scale, self.condition_shift, strict=True
        ):
            feat = up(feat + skips.pop())
            conditions += [scale(feat), shift(feat)]
        rgb: torch.Tensor = self.stylegan_decoder(latent, conditions)
        return rgb


class FaceRestorer(nn.Module):
    """The face_restore contract around GFPGAN (orchestrator/contracts.py): BGR in [0, 1] in
    and out, as lipsync's `pred` is; GFPGAN itself sees RGB in [-1, 1]."""

    def __init__(self, gfpgan: GFPGANv1Clean) -> None:
        super().__init__()
        self.gfpgan = gfpgan

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        rgb = face.flip(1)  # the contract's BGR to GFPGAN's RGB
        # GFPGANer normalises with mean 0.5, std 0.5 and clamps the output to [-1, 1].
        restored: torch.Tensor = self.gfpgan(rgb * 2.0 - 1.0)
        return ((restored + 1.0) * 0.5).clamp(0.0, 1.0).flip(1)


def random_gfpgan(seed: int, **sizes: Any) -> GFPGANv1Clean:
    """GFPGAN with PyTorch's default initialisation drawn from `seed`, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GFPGANv1Clean(**sizes)
    return model.eval()


def weights_of(checkpoint: object, path: Path) -> Mapping[str, Any]:
    """The state dict in a GFPGAN training checkpoint (EMA weights first) or a bare one."""
    if not isinstance(checkpoint, Mapping):
        raise ModelBuildError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint")
    state_dict = next((checkpoint[k] for k in CHECKPOINT_KEYS if k in checkpoint), checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ModelBuildError(f"{path}: the weights are a {type(state_dict).__name__}, not a dict")
    return state_dict


def load_checkpoint(path: Path) -> GFPGANv1Clean:
    """GFPGAN v1.4 with the weights of a released .pth, in eval mode."""
    model = GFPGANv1Clean()
    try:
        load_exactly(model, weights_of(read_torch_file(path), path), path)
    except ModelBuildError as exc:
        raise ModelBuildError(
            f"{exc} (expected GFPGAN v1.4's layout, under 'params_ema', 'params' or bare)"
        ) from None
    return model.eval()


def export_gfpgan(model: GFPGANv1Clean, out: Path) -> None:
    """Writes `model` to `out` as ONNX with the face_restore contract; only the batch is dynamic."""
    restorer = FaceRestorer(model.eval()).eval()
    example = torch.zeros(EXPORT_BATCH, 3, model.out_size, model.out_size)
    batch = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (no onnxscript); its deprecation
        # notice is known.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            restorer,
            (example,),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=["face"],
            output_names=["restored"],
            dynamic_axes={"face": batch, "restored": batch},
        )
    onnx.checker.check_model(str(out))


def triton_config(face_size: int = OUT_SIZE) -> model_config_pb2.ModelConfig:
    """The face_restore config.pbtxt: the contract above, batched on GPU instances."""
    dims = [3, face_size, face_size]
    return text_format.Parse(
        f"""
        name: "{MODEL_NAME}"
        platform: "onnxruntime_onnx"
        max_batch_size: {MAX_BATCH_SIZE}
        input [{{ name: "face" data_type: TYPE_FP32 dims: {dims} }}]
        output [{{ name: "restored" data_type: TYPE_FP32 dims: {dims} }}]
        dynamic_batching {{
          preferred_batch_size: {list(PREFERRED_BATCH_SIZES)}
          max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}
          default_queue_policy {{
            max_queue_size: {MAX_QUEUE_SIZE}
            timeout_action: REJECT
            default_timeout_microseconds: {QUEUE_TIMEOUT_US}
          }}
        }}
        instance_group [{{ count: 1 kind: KIND_GPU }}]
        model_warmup [{{
          name: "zero_face"
          batch_size: 1
          inputs {{ key: "face" value {{ data_type: TYPE_FP32 dims: {dims} zero_data: true }} }}
        }}]
        """,
        model_config_pb2.ModelConfig(),
    )
