"""File storage of the service: uploads, job inputs and results, avatar sources.

`Storage` is the interface; `LocalStorage` keeps everything under the data directory.
An S3-compatible store can implement the same methods later (the pipeline still reads
local files, so it would download inputs to `staging_path` and upload results).

Layout under the data directory:
    avatars/<avatar_id>/        the pipeline's avatar cache (frames, boxes), owned by it
    service/avatar-sources/<avatar_id>/<name>   the uploaded avatar video
    service/jobs/<job_id>/      a job's inputs and its result.mp4
    service/staging/            uploads and fetches in progress
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")

RESULT_NAME = "result.mp4"
# Scratch folders of avatar preparations: orchestrator.pipeline.avatar names them
# ".<avatar_id>.<random>.partial" and renames them into place when done.
PARTIAL_AVATAR_SUFFIX = ".partial"
# A name from a client is kept only for these characters, to be safe in a path.
_SAFE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_MAX_SUFFIX = 10


def safe_suffix(filename: str | None) -> str:
    """The file's extension if it is short and plain (PyAV sniffs content; the suffix only
    helps formats without a header), else ''."""
    suffix = Path(filename or "").suffix.lower()
    if len(suffix) > _MAX_SUFFIX or not set(suffix) <= _SAFE_NAME_CHARS:
        return ""
    return suffix


class Storage(Protocol):
    def staging_path(self, suffix: str) -> Path: ...
    def job_dir(self, job_id: str) -> Path: ...
    def result_path(self, job_id: str) -> Path: ...
    def avatar_source_dir(self, avatar_id: str) -> Path: ...
    def avatar_cache_dir(self, avatar_id: str) -> Path: ...
    async def adopt(self, staged: Path, destination: Path) -> Path: ...
    async def discard(self, path: Path) -> None: ...
    async def remove_job(self, job_id: str) -> None: ...
    async def remove_job_inputs(self, job_id: str) -> None: ...
    async def remove_avatar_cache(self, avatar_id: str) -> None: ...
    async def remove_avatar(self, avatar_id: str) -> None: ...
    async def job_ids(self) -> list[str]: ...
    async def avatar_source_ids(self) -> list[str]: ...
    async def remove_partial_avatars(self) -> list[str]: ...


class LocalStorage:
    def __init__(self, data_dir: Path, pool: Executor) -> None:
        self.data_dir = data_dir
        self.root = data_dir / "service"
        self._pool = pool
        for folder in ("staging", "jobs", "avatar-sources"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        # Staged files of a process that was killed are never adopted: start clean.
        for leftover in (self.root / "staging").iterdir():
            _remove(leftover)

    def staging_path(self, suffix: str) -> Path:
        return self.root / "staging" / f"{uuid.uuid4().hex}{suffix}"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def result_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / RESULT_NAME

    def avatar_source_dir(self, avatar_id: str) -> Path:
        return self.root / "avatar-sources" / avatar_id

    def avatar_cache_dir(self, avatar_id: str) -> Path:
        # Where the pipeline keeps the prepared avatar (orchestrator.pipeline.avatar).
        return self.data_dir / "avatars" / avatar_id

    async def adopt(self, staged: Path, destination: Path) -> Path:
        """Moves a finished upload into place (a rename: same file system)."""

        def move() -> Path:
            destination.parent.mkdir(parents=True, exist_ok=True)
            return staged.replace(destination)

        return await self._in_pool(move)

    async def discard(self, path: Path) -> None:
        await self._in_pool(_remove, path)

    async def remove_job(self, job_id: str) -> None:
        await self._in_pool(_remove, self.job_dir(job_id))

    async def remove_job_inputs(self, job_id: str) -> None:
        """Everything of a finished job but its result."""

        def remove() -> None:
            job_dir = self.job_dir(job_id)
            if job_dir.is_dir():
                for entry in job_dir.iterdir():
                    if entry.name != RESULT_NAME:
                        _remove(entry)

        await self._in_pool(remove)

    async def remove_avatar_cache(self, avatar_id: str) -> None:
        await self._in_pool(_remove, self.avatar_cache_dir(avatar_id))

    async def remove_avatar(self, avatar_id: str) -> None:
        await self._in_pool(_remove, self.avatar_source_dir(avatar_id))
        await self.remove_avatar_cache(avatar_id)

    async def job_ids(self) -> list[str]:
        """Ids of the job folders on disk (start-up cleanup compares them with the rows)."""
        return await self._in_pool(_folders, self.root / "jobs")

    async def avatar_source_ids(self) -> list[str]:
        return await self._in_pool(_folders, self.root / "avatar-sources")

    async def remove_partial_avatars(self) -> list[str]:
        """Removes the scratch folders of avatar preparations that were cut off (the
        pipeline renames a finished one into place, so a leftover is never finished).
        Call only while nothing prepares avatars: at start-up."""

        def remove() -> list[str]:
            avatars = self.data_dir / "avatars"
            found = sorted(avatars.glob(f".*{PARTIAL_AVATAR_SUFFIX}")) if avatars.is_dir() else []
            for leftover in found:
                _remove(leftover)
            return [leftover.name for leftover in found]

        return await self._in_pool(remove)

    async def _in_pool(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


def _folders(parent: Path) -> list[str]:
    return sorted(entry.name for entry in parent.iterdir() if entry.is_dir())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
