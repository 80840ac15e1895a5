"""A contact sheet of a video: frames evenly across it, each with its mouth enlarged below.

So a user can see what a lip-sync render did without a player: each tile is one frame,
the region around the mouth blown up under it, and a label with the frame's time and the
loudness of the audio while it is on screen (a bar and dBFS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

# Tile width in the sheet: frames and their enlarged mouths are scaled to it.
TILE_WIDTH = 240
# Height of the label strip under each tile, and the gap between tiles.
LABEL_HEIGHT = 34
GAP = 6
# The loudness bar spans this range of dBFS: -60 dB is near silence, 0 dB full scale.
LOUDNESS_FLOOR_DB = -60.0
# Audio is resampled to this rate for the loudness; speech needs no more.
_LOUDNESS_RATE = 16000
_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)
_BAR = (80, 200, 250)


@dataclass(frozen=True)
class SheetLayout:
    frames: int
    columns: int
    frame_size: tuple[int, int]  # (width, height) of the video
    region: tuple[int, int, int, int]  # (x, y, width, height) to enlarge

    @property
    def rows(self) -> int:
        return math.ceil(self.frames / self.columns)

    @property
    def frame_height(self) -> int:
        width, height = self.frame_size
        return round(height * TILE_WIDTH / width)

    @property
    def region_height(self) -> int:
        _, _, width, height = self.region
        return round(height * TILE_WIDTH / width)

    @property
    def tile_height(self) -> int:
        return self.frame_height + self.region_height + LABEL_HEIGHT

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the sheet in pixels."""
        width = self.columns * TILE_WIDTH + (self.columns + 1) * GAP
        return width, self.rows * self.tile_height + (self.rows + 1) * GAP


def pick_frames(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `total` frames, first and last included."""
    if total <= 0:
        return []
    if count <= 1 or total == 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def _read_frames(video: Path) -> tuple[list[np.ndarray], float, np.ndarray | None]:
    """Every frame (BGR), the frame rate, and the audio as 16 kHz mono float (or None)."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(stream)]
    with av.open(str(video)) as container:
        if not container.streams.audio:
            return frames, fps, None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=_LOUDNESS_RATE)
        chunks = [
            piece.to_ndarray().reshape(-1)
            for frame in container.decode(container.streams.audio[0])
            for piece in resampler.resample(frame)
        ]
        chunks += [piece.to_ndarray().reshape(-1) for piece in resampler.resample(None)]
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return frames, fps, audio


def loudness_db(audio: np.ndarray, start_s: float, seconds: float) -> float:
    """RMS level in dBFS of `audio` (16 kHz) over [start_s, start_s + seconds)."""
    first = max(0, round(start_s * _LOUDNESS_RATE))
    piece = audio[first : first + max(1, round(seconds * _LOUDNESS_RATE))]
    rms = float(np.sqrt(np.mean(np.square(piece, dtype=np.float64)))) if piece.size else 0.0
    return max(LOUDNESS_FLOOR_DB, 20 * math.log10(rms)) if rms > 0 else LOUDNESS_FLOOR_DB


def _tile(frame: np.ndarray, layout: SheetLayout, label: str, level: float | None) -> np.ndarray:
    x, y, w, h = layout.region
    small = cv2.resize(frame, (TILE_WIDTH, layout.frame_height), interpolation=cv2.INTER_AREA)
    scale = TILE_WIDTH / layout.frame_size[0]
    corner = (round(x * scale), round(y * scale))
    far = (round((x + w) * scale), round((y + h) * scale))
    cv2.rectangle(small, corner, far, _BAR, 1)
    mouth = cv2.resize(
        frame[y : y + h, x : x + w],
        (TILE_WIDTH, layout.region_height),
        interpolation=cv2.INTER_CUBIC,
    )
    strip = np.full((LABEL_HEIGHT, TILE_WIDTH, 3), _BACKGROUND, np.uint8)
    cv2.putText(strip, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, _TEXT, 1, cv2.LINE_AA)
    if level is not None:
        fill = (level - LOUDNESS_FLOOR_DB) / -LOUDNESS_FLOOR_DB
        cv2.rectangle(strip, (4, 22), (TILE_WIDTH - 4, 29), (90, 90, 90), 1)
        cv2.rectangle(strip, (4, 22), (4 + round(fill * (TILE_WIDTH - 8)), 29), _BAR, -1)
    return np.concatenate([small, mouth, strip])


def write_contact_sheet(
    video: Path,
    out: Path,
    region: tuple[int, int, int, int],
    *,
    frames: int = 12,
    columns: int = 6,
) -> tuple[int, int]:
    """Write the contact sheet of `video` to `out` (PNG); returns its (width, height).

    `region` is (x, y, width, height) in the video's pixels: the part shown enlarged.
    """
    decoded, fps, audio = _read_frames(video)
    if not decoded:
        raise ValueError(f"{video}: no video frames")
    height, width = decoded[0].shape[:2]
    x, y, w, h = region
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"region {region} is not inside the {width}x{height} video")
    picked = pick_frames(len(decoded), frames)
    layout = SheetLayout(len(picked), min(columns, len(picked)), (width, height), region)
    sheet_width, sheet_height = layout.size
    sheet = np.full((sheet_height, sheet_width, 3), _BACKGROUND, np.uint8)
    for slot, index in enumerate(picked):
        start = index / fps
        level = None if audio is None else loudness_db(audio, start, 1 / fps)
        label = f"{start:5.2f} s" + ("" if level is None else f"   {level:5.1f} dBFS")
        row, column = divmod(slot, layout.columns)
        top = GAP + row * (layout.tile_height + GAP)
        left = GAP + column * (TILE_WIDTH + GAP)
        sheet[top : top + layout.tile_height, left : left + TILE_WIDTH] = _tile(
            decoded[index], layout, label, level
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), sheet):
        raise ValueError(f"{out}: could not write the PNG")
    return sheet_width, sheet_height
