"""avatar_cache: a prepared avatar on disk, keyed by its video's content hash.

Layout, under the data directory:

    avatars/<avatar_id>/frames.bin, frames.idx.npy   the frame store (frame_store.py)
    avatars/<avatar_id>/boxes.npy                    largest face's box per frame, int32 [N, 4]
    avatars/<avatar_id>/faces.npz                    every face of each keyframe (faces.py)
    avatars/<avatar_id>/meta.json                    what load_avatar needs, STORE_VERSION
    avatars/.<avatar_id>.<random>.partial/           a cache being written or removed

A cache is only ever complete: it is written in a `.partial` folder beside its place and
renamed into place at the end (`install`), so a folder named by an avatar id is whole. A
partial folder is never read, and one a killed process left is removed at start-up
(`remove_partials`, via the storage). The pipeline (avatar.py) writes caches, the storage
copies them between replicas (storage/s3.py); both go through this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.files import Partial, is_partial, partial_path, remove_path
from orchestrator.pipeline import boxes as face_boxes
from orchestrator.pipeline.faces import KeyframeFaces, first_frame_faces
from orchestrator.pipeline.frame_store import FrameCodec, FrameStore

AVATARS_FOLDER = "avatars"
BOXES_FILE = "boxes.npy"
FACES_FILE = "faces.npz"
META_FILE = "meta.json"
HASH_CHUNK = 1 << 20
# The avatar id is this many hex digits of the video's SHA-256.
CONTENT_ID_HEX = 32
# Bump when the store's layout or the box maths change, so old caches are not reused.
STORE_VERSION = 4  # 3: adaptive stride, smaller detector input; 4: every face kept


@dataclass(frozen=True)
class Avatar:
    """A prepared avatar: metadata, per-frame face boxes and the path of its frame store."""

    avatar_id: str
    directory: Path
    width: int
    height: int
    fps: float
    frame_count: int
    boxes: np.ndarray  # [frame_count, 4] int32, -1 rows where no face was found
    detected_frames: int  # frames the detector looked at
    frame_codec: FrameCodec
    faces: KeyframeFaces  # every face of each keyframe, for a job choosing another one

    @property
    def frames_with_face(self) -> int:
        return int(face_boxes.has_face(self.boxes).sum())

    def open_frames(self) -> FrameStore:
        return FrameStore(self.directory, self.frame_codec, self.width, self.height)

    def summary(self) -> dict[str, object]:
        return {
            "avatar_id": self.avatar_id,
            "frames": self.frame_count,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "frames_with_face": self.frames_with_face,
            "detected_frames": self.detected_frames,
            "faces": self.first_faces(),
        }

    def first_faces(self) -> list[dict[str, Any]]:
        """The faces a job may choose: those of the first frame with faces, left to right."""
        first = first_frame_faces(self.faces)
        if first is None:
            return []
        frame, found = first
        return [{"index": i, "frame": frame, "box": list(box)} for i, box in enumerate(found)]


def content_id(path: Path) -> str:
    """The avatar id: a hash of the video's bytes, so renamed copies share one cache."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:CONTENT_ID_HEX]


def avatars_dir(data_dir: Path) -> Path:
    """The folder of every prepared avatar's cache."""
    return data_dir / AVATARS_FOLDER


def load_avatar(directory: Path) -> Avatar | None:
    """A completely prepared avatar from its directory, or None (absent, of an older
    STORE_VERSION, or damaged)."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if meta.get("store_version") != STORE_VERSION:
        return None
    return Avatar(
        avatar_id=meta["avatar_id"],
        directory=directory,
        width=meta["width"],
        height=meta["height"],
        fps=meta["fps"],
        frame_count=meta["frame_count"],
        boxes=np.load(directory / BOXES_FILE),
        detected_frames=meta["detected_frames"],
        frame_codec=meta["frame_codec"],
        faces=KeyframeFaces.load(directory / FACES_FILE),
    )


def is_complete(directory: Path) -> bool:
    """Whether a cache is in place (of any STORE_VERSION): its metadata is written before
    the folder is renamed into place, so a folder without it is not a cache."""
    return (directory / META_FILE).is_file()


def cache_files(directory: Path) -> dict[str, int]:
    """The files of a cache folder and their sizes, by name: what a copy must match."""
    return {
        entry.name: entry.stat().st_size for entry in sorted(directory.iterdir()) if entry.is_file()
    }


def new_scratch(directory: Path) -> Partial:
    """An empty partial folder for writing the cache that `directory` will hold."""
    scratch = Partial(directory)
    scratch.path.mkdir(parents=True)
    return scratch


def write_avatar(
    folder: Path,
    *,
    avatar_id: str,
    source_name: str,
    width: int,
    height: int,
    fps: float,
    frame_count: int,
    detected_frames: int,
    frame_codec: FrameCodec,
    boxes: np.ndarray,
    faces: KeyframeFaces,
) -> None:
    """Writes the boxes, the faces and the metadata beside a frame store already in
    `folder`; the metadata last, since it marks the cache complete."""
    np.save(folder / BOXES_FILE, boxes)
    faces.save(folder / FACES_FILE)
    meta = {
        "store_version": STORE_VERSION,
        "avatar_id": avatar_id,
        "source_name": source_name,
        "width": width,
        "height": height,
        "fps": fps,
        "frame_count": frame_count,
        "detected_frames": detected_frames,
        "frame_codec": frame_codec,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


def install(scratch: Partial) -> None:
    """Renames a completely written cache folder into place; the scratch folder is gone
    afterwards either way.

    A folder in place that does not load (an older STORE_VERSION, or damaged) is moved
    aside as a partial (start-up removes it if this is cut short) and removed: complete
    caches only appear by this rename, so nobody is writing it. A complete one, prepared
    or fetched by another job or replica meanwhile, is as good as this one and stays."""
    directory = scratch.target
    try:
        if directory.exists() and load_avatar(directory) is None:
            with contextlib.suppress(OSError):
                stale = partial_path(directory)
                directory.rename(stale)
                remove_path(stale)
        try:
            scratch.commit()
        except OSError:
            if not is_complete(directory):
                raise
    finally:
        scratch.discard()


def remove_partials(avatars: Path) -> list[str]:
    """Removes the partial folders under `avatars` and returns their names. Only while
    nothing writes a cache (start-up): a partial is never finished by another process."""
    found = sorted(p for p in avatars.iterdir() if is_partial(p)) if avatars.is_dir() else []
    for leftover in found:
        remove_path(leftover)
    return [leftover.name for leftover in found]
