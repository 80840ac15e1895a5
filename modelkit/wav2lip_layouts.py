"""The Wav2Lip generator layouts the converter accepts, one per face size, as plain data.

Every layout is Wav2Lip's design: a face encoder of strided conv stages with residual
blocks, the 80x16 mel audio encoder down to one 512-vector, and a decoder of transposed
conv stages that concatenates the encoder's output of the same size (U-Net skips). A larger
face adds encoder stages (and the decoder stages that mirror them); the audio encoder and
the 512-channel bottleneck never change. Which layout a checkpoint holds is told by its
tensor names and shapes alone (`modelkit.wav2lip.detect_layout`), so no two layouts here
may share them — tests/models/test_face_sizes.py checks that.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelkit.errors import ModelBuildError


@dataclass(frozen=True)
class Down:
    """An encoder stage: a conv of `cout` channels, then `residuals` same-size residual
    blocks; `pointwise` adds the 1x1 block that ends Wav2Lip's bottleneck stages."""

    cout: int
    kernel: int
    stride: int
    padding: int
    residuals: int = 0
    pointwise: bool = False


@dataclass(frozen=True)
class Up:
    """A decoder stage: a transposed conv of `cout` channels, then `residuals` blocks."""

    cout: int
    kernel: int
    stride: int
    padding: int
    output_padding: int
    residuals: int


@dataclass(frozen=True)
class Layout:
    name: str
    face_size: int
    # "relu" (Rudrabha's Wav2Lip) or "prelu" (primepake's wav2lip_288x288, whose PReLU
    # slopes are checkpoint tensors named `act.weight`).
    activation: str
    encoder: tuple[Down, ...]
    # One stage per encoder stage but the last; the decoder starts with Wav2Lip's 1x1 block
    # on the audio embedding, which every layout has.
    decoder: tuple[Up, ...]
    origin: str  # where the layout comes from, for the docs and error messages


# Wav2Lip's stages below the 96-pixel level, shared by the layouts built on it.
_DOWN_96 = (
    Down(64, 3, 2, 1, 3),
    Down(128, 3, 2, 1, 2),
    Down(256, 3, 2, 1, 2),
    Down(512, 3, 2, 1, 1),
    Down(512, 3, 1, 0, pointwise=True),
)
_UP_96 = (
    Up(512, 3, 1, 0, 0, 1),
    Up(512, 3, 2, 1, 1, 2),
    Up(384, 3, 2, 1, 1, 2),
    Up(256, 3, 2, 1, 1, 2),
    Up(128, 3, 2, 1, 1, 2),
)
_STEM = Down(16, 7, 1, 3)
# One extra stage per doubling of the face: stride 2 at 32 channels, mirrored by a
# 64-channel transposed stage (the pattern of wav2lip_288x288's two top stages).
_EXTRA_DOWN = Down(32, 3, 2, 1, 2)
_EXTRA_UP = Up(64, 3, 2, 1, 1, 2)

WAV2LIP_96 = Layout(
    name="wav2lip96",
    face_size=96,
    activation="relu",
    encoder=(_STEM, Down(32, 3, 2, 1, 2), *_DOWN_96),
    decoder=(*_UP_96, Up(64, 3, 2, 1, 1, 2)),
    origin="Rudrabha/Wav2Lip models/wav2lip.py: wav2lip.pth and wav2lip_gan.pth",
)
WAV2LIP_192 = Layout(
    name="wav2lip192",
    face_size=192,
    activation="relu",
    encoder=(_STEM, Down(32, 3, 2, 1, 2), _EXTRA_DOWN, *_DOWN_96),
    decoder=(*_UP_96, Up(64, 3, 2, 1, 1, 2), _EXTRA_UP),
    origin="Wav2Lip-96 with one extra stage per doubling (this project's layout)",
)
WAV2LIP_384 = Layout(
    name="wav2lip384",
    face_size=384,
    activation="relu",
    encoder=(_STEM, Down(32, 3, 2, 1, 2), _EXTRA_DOWN, _EXTRA_DOWN, *_DOWN_96),
    decoder=(*_UP_96, Up(64, 3, 2, 1, 1, 2), _EXTRA_UP, _EXTRA_UP),
    origin="Wav2Lip-96 with one extra stage per doubling (this project's layout)",
)
# 256 is no power-of-two multiple of 96: the encoder halves down to 4 and closes with two
# unpadded stages (4 -> 2 -> 1) where Wav2Lip-96 has one (3 -> 1).
WAV2LIP_256 = Layout(
    name="wav2lip256",
    face_size=256,
    activation="relu",
    encoder=(
        _STEM,
        Down(32, 3, 2, 1, 2),
        _EXTRA_DOWN,
        Down(64, 3, 2, 1, 3),
        Down(128, 3, 2, 1, 2),
        Down(256, 3, 2, 1, 2),
        Down(512, 3, 2, 1, 1),
        Down(512, 3, 1, 0, pointwise=True),
        Down(512, 2, 1, 0, pointwise=True),
    ),
    decoder=(
        Up(512, 2, 1, 0, 0, 1),
        Up(512, 3, 1, 0, 0, 2),
        Up(384, 3, 2, 1, 1, 2),
        Up(256, 3, 2, 1, 1, 2),
        Up(128, 3, 2, 1, 1, 2),
        Up(64, 3, 2, 1, 1, 2),
        _EXTRA_UP,
        _EXTRA_UP,
    ),
    origin="Wav2Lip-96 with one extra stage per doubling (this project's layout)",
)
# primepake/wav2lip_288x288 models/wav2lipv2.py (with conv2.py's PReLU blocks): 288 -> 144
# (kernel 5) -> 72 -> 36 -> 18 -> 9 -> 5 -> 3 -> 1, and the mirror image back up.
WAV2LIP_288 = Layout(
    name="wav2lip288",
    face_size=288,
    activation="prelu",
    encoder=(
        _STEM,
        Down(32, 5, 2, 2, 1),
        Down(32, 3, 2, 1, 2),
        Down(64, 3, 2, 1, 3),
        Down(128, 3, 2, 1, 2),
        Down(256, 3, 2, 1, 2),
        Down(512, 3, 2, 1, 1),
        Down(512, 3, 1, 0, pointwise=True),
        Down(512, 3, 1, 0, pointwise=True),
    ),
    decoder=(
        Up(512, 3, 1, 0, 0, 1),
        Up(512, 3, 2, 1, 0, 2),
        Up(512, 3, 2, 1, 0, 2),
        Up(384, 3, 2, 1, 1, 2),
        Up(256, 3, 2, 1, 1, 2),
        Up(128, 3, 2, 1, 1, 2),
        Up(64, 3, 2, 1, 1, 2),
        Up(64, 3, 2, 1, 1, 2),
    ),
    origin="primepake/wav2lip_288x288 models/wav2lipv2.py (PReLU)",
)

LAYOUTS = (WAV2LIP_96, WAV2LIP_192, WAV2LIP_256, WAV2LIP_288, WAV2LIP_384)
FACE_SIZES = tuple(layout.face_size for layout in LAYOUTS)


def layout_for_size(face_size: int) -> Layout:
    for layout in LAYOUTS:
        if layout.face_size == face_size:
            return layout
    sizes = ", ".join(str(size) for size in FACE_SIZES)
    raise ModelBuildError(f"no Wav2Lip layout for {face_size} px faces; sizes: {sizes}")


def describe_layouts() -> str:
    """One line naming every accepted layout, for error messages."""
    return "; ".join(f"{layout.name} ({layout.origin})" for layout in LAYOUTS)
