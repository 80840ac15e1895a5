"""An avatar's frames on disk, for random access: the drive stage walks them forwards and
backwards (ping-pong) without decoding the video again or holding frames in memory.

One file of frame records and an index of their offsets. Records are JPEG by default:
a raw BGR 1080p frame is 6.2 MB, so a ten-minute avatar would take 93 GB; at quality 95
the change is below what the H.264 output keeps anyway. "raw" stores exact pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import cv2
import numpy as np

from orchestrator.errors import BadInput, PipelineError

FRAMES_FILE = "frames.bin"
INDEX_FILE = "frames.idx.npy"
FrameCodec = Literal["jpeg", "raw"]
STAGE = "avatar"


class FrameWriter:
    """Appends frames in order; `close()` writes the index."""

    def __init__(self, directory: Path, codec: FrameCodec, jpeg_quality: int) -> None:
        self._directory = directory
        self._codec = codec
        self._params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        self._file: BinaryIO = (directory / FRAMES_FILE).open("wb")
        self._offsets = [0]

    def append(self, frame: np.ndarray) -> None:
        if self._codec == "raw":
            record = frame.tobytes()
        else:
            ok, encoded = cv2.imencode(".jpg", frame, self._params)
            if not ok:
                raise BadInput(STAGE, f"frame {len(self._offsets) - 1} could not be stored")
            record = encoded.tobytes()
        self._file.write(record)
        # Flushed before the offset is published: a reader of the growing store (drive,
        # while the avatar is still being prepared) preads the file directly.
        self._file.flush()
        self._offsets.append(self._offsets[-1] + len(record))

    @property
    def frames(self) -> int:
        return len(self._offsets) - 1

    def reader(self, width: int, height: int) -> FrameStore:
        """A store reading the frames written so far, and later ones once written: it
        shares this writer's offsets. Its file stays readable after the directory is
        renamed or removed (it holds the file open)."""
        return FrameStore(self._directory, self._codec, width, height, self._offsets)

    def close(self) -> None:
        self._file.close()
        np.save(self._directory / INDEX_FILE, np.array(self._offsets, np.int64))


class FrameStore:
    """Reads frame `i` with one pread and (for JPEG) one decode; nothing is cached."""

    def __init__(
        self,
        directory: Path,
        codec: FrameCodec,
        width: int,
        height: int,
        offsets: Sequence[int] | None = None,
    ) -> None:
        self._codec = codec
        self._shape = (height, width, 3)
        self._offsets = np.load(directory / INDEX_FILE) if offsets is None else offsets
        self._fd = os.open(directory / FRAMES_FILE, os.O_RDONLY)

    def read(self, index: int) -> np.ndarray:
        if index + 1 >= len(self._offsets):
            raise PipelineError(STAGE, f"frame {index} is not in the avatar's frame store yet")
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        data = os.pread(self._fd, end - start, start)
        if len(data) != end - start:
            raise BadInput(STAGE, f"the avatar's frame store is truncated at frame {index}")
        if self._codec == "raw":
            return np.frombuffer(data, np.uint8).reshape(self._shape)
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if frame is None or frame.shape != self._shape:
            raise BadInput(STAGE, f"the avatar's frame store is damaged at frame {index}")
        return frame

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
