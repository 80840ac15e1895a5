"""Files and folders that appear whole or not at all.

A result, a kept upload or a prepared avatar is written under a partial name beside its
target (same folder, so the same file system and an atomic rename), flushed to disk, then
renamed onto the target; on any failure the partial is removed. A reader therefore never
sees half a file, and a power cut after the rename cannot leave a complete-looking name
over data that never reached the disk. Partial names are hidden and end in `.partial`, so
what a killed process left is recognisable (`is_partial`) and removed at start-up.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_path(target: Path) -> Path:
    """A fresh partial name for `target`: `.<name>.<random>.partial` in its folder. Random,
    so two writers of one target never share a partial."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")


def is_partial(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)


def replace_durably(source: Path, target: Path) -> None:
    """Renames a completely written file or folder (of files) onto `target`, its bytes
    flushed to disk first and the rename itself after. A folder replaces only an empty
    folder: over one with files the rename fails (OSError) and `source` stays."""
    _sync(source)
    os.replace(source, target)
    _sync_folder(target.parent)


@contextmanager
def atomic_write(target: Path) -> Iterator[Path]:
    """The path to write `target`'s content at; once the block ends cleanly it becomes
    `target`, and on any failure (the rename's included) it is removed."""
    partial = Partial(target)
    try:
        yield partial.path
        partial.commit()
    finally:
        partial.discard()


class Partial:
    """A file or folder being written under a partial name, for writers that outlive one
    block (an encoder, an avatar's preparation): `commit()` makes it the target,
    `discard()` removes whatever is left of it."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = partial_path(target)

    def commit(self) -> None:
        replace_durably(self.path, self.target)

    def discard(self) -> None:
        """Removes the partial; nothing to do once it was committed."""
        remove_path(self.path)


def remove_path(path: Path) -> None:
    """Removes a file or a folder with everything in it; nothing to do if it is gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _sync(path: Path) -> None:
    if path.is_dir():
        for entry in path.iterdir():
            if entry.is_file():
                _fsync(entry, os.O_RDONLY)
        _sync_folder(path)
    else:
        _fsync(path, os.O_RDONLY)


def _sync_folder(folder: Path) -> None:
    # A folder's entries (a rename into it) are durable once the folder itself is synced.
    # Some file systems (network and FUSE mounts) refuse fsync on a folder: the rename
    # is still atomic there, only not forced to disk yet.
    try:
        _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
