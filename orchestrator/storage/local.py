"""`LocalStorage`: every file under the data directory (the single-host default).

Layout under the data directory:
    avatars/<avatar_id>/        the pipeline's avatar cache (pipeline/avatar_cache.py)
    service/avatar-sources/<avatar_id>/<name>   the uploaded avatar video
    service/jobs/<job_id>/      a job's inputs and its result.mp4
    service/staging/            uploads and fetches in progress
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from starlette.responses import FileResponse, Response

from orchestrator.blocking import run_blocking
from orchestrator.errors import NotFound
from orchestrator.files import remove_path, replace_durably
from orchestrator.pipeline import avatar_cache
from orchestrator.storage.base import (
    RESULT_MEDIA_TYPE,
    RESULT_NAME,
    STAGE,
    JobFiles,
    Leftover,
    LeftoverKind,
)

if TYPE_CHECKING:
    from orchestrator.jobs.store import JobRecord

__all__ = ["LocalStorage", "remove_path"]
P = ParamSpec("P")
T = TypeVar("T")


class LocalStorage:
    def __init__(self, data_dir: Path, pool: Executor) -> None:
        self.data_dir = data_dir
        self.root = data_dir / "service"
        self._pool = pool
        for folder in ("staging", "jobs", "avatar-sources"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        # Staged files of a process that was killed are never adopted: start clean.
        for leftover in (self.root / "staging").iterdir():
            remove_path(leftover)

    def staging_path(self, suffix: str) -> Path:
        return self.root / "staging" / f"{uuid.uuid4().hex}{suffix}"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def result_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / RESULT_NAME

    def avatar_source_dir(self, avatar_id: str) -> Path:
        return self.root / "avatar-sources" / avatar_id

    def avatar_cache_dir(self, avatar_id: str) -> Path:
        return avatar_cache.avatars_dir(self.data_dir) / avatar_id

    async def adopt(self, staged: Path, destination: Path) -> Path:
        """Moves a finished upload into place (a rename: same file system)."""

        def move() -> Path:
            destination.parent.mkdir(parents=True, exist_ok=True)
            replace_durably(staged, destination)
            return destination

        return await self.in_pool(move)

    async def discard(self, path: Path) -> None:
        await self.in_pool(remove_path, path)

    async def remove_job(self, job_id: str) -> None:
        await self.in_pool(remove_path, self.job_dir(job_id))

    async def remove_job_inputs(self, job_id: str) -> None:
        """Everything of a finished job but its result."""

        def remove() -> None:
            job_dir = self.job_dir(job_id)
            if job_dir.is_dir():
                for entry in job_dir.iterdir():
                    if entry.name != RESULT_NAME:
                        remove_path(entry)

        await self.in_pool(remove)

    async def remove_avatar_cache(self, avatar_id: str) -> None:
        await self.in_pool(remove_path, self.avatar_cache_dir(avatar_id))

    async def remove_avatar_source(self, avatar_id: str) -> None:
        await self.in_pool(remove_path, self.avatar_source_dir(avatar_id))

    async def leftovers(self, unchanged_since: float) -> list[Leftover]:
        def scan() -> list[Leftover]:
            found: list[Leftover] = []
            folders: dict[LeftoverKind, Path] = {
                "job": self.root / "jobs",
                "avatar-source": self.root / "avatar-sources",
                "avatar": self.avatar_cache_dir("x").parent,
            }
            for kind, folder in folders.items():
                for name in _folders(folder) if folder.is_dir() else []:
                    # A dot-name is a scratch folder (an avatar being prepared): not a row's.
                    if name.startswith("."):
                        continue
                    try:
                        changed = (folder / name).stat().st_mtime
                    except FileNotFoundError:  # removed meanwhile by its owner
                        continue
                    if changed < unchanged_since:
                        found.append(Leftover(kind, name))
            return found

        return await self.in_pool(scan)

    async def remove_avatar(self, avatar_id: str) -> None:
        await self.in_pool(remove_path, self.avatar_source_dir(avatar_id))
        await self.remove_avatar_cache(avatar_id)

    async def job_ids(self) -> list[str]:
        """Ids of the job folders on disk (start-up cleanup compares them with the rows)."""
        return await self.in_pool(_folders, self.root / "jobs")

    async def avatar_source_ids(self) -> list[str]:
        return await self.in_pool(_folders, self.root / "avatar-sources")

    async def remove_partial_avatars(self) -> list[str]:
        """Removes the scratch folders of avatar caches that were cut off (a finished one is
        renamed into place, so a leftover is never finished). Call only while nothing
        prepares or fetches avatars: at start-up."""
        return await self.in_pool(
            avatar_cache.remove_partials, avatar_cache.avatars_dir(self.data_dir)
        )

    # The files are where the pipeline reads and writes them: nothing to fetch or keep.

    @asynccontextmanager
    async def job_files(self, job: JobRecord) -> AsyncIterator[JobFiles]:
        yield JobFiles(Path(job.audio_path), Path(job.video_path), self.result_path(job.id))

    @asynccontextmanager
    async def avatar_source(self, avatar_id: str, source: Path) -> AsyncIterator[Path]:
        yield source

    async def fetch_avatar(self, avatar_id: str) -> None:
        return None

    async def publish_avatar(self, avatar_id: str) -> None:
        return None

    async def has_result(self, job_id: str) -> bool:
        return await self.in_pool(self.result_path(job_id).is_file)

    async def result_response(
        self, job_id: str, range_header: str | None, filename: str
    ) -> Response:
        path = self.result_path(job_id)
        if not await self.in_pool(path.is_file):
            raise NotFound(STAGE, f"the result of job '{job_id}' is no longer on this server")
        # FileResponse answers the request's Range with 206 and Content-Range itself
        # (Starlette >= 0.39): `range_header` is for backends that must pass it on.
        return FileResponse(path, media_type=RESULT_MEDIA_TYPE, filename=filename)

    async def check(self) -> None:
        return None  # the local disk: nothing to reach

    def describe(self) -> dict[str, str]:
        return {"kind": "local"}

    async def close(self) -> None:
        return None

    async def in_pool(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await run_blocking(self._pool, fn, *args, **kwargs)


def _folders(parent: Path) -> list[str]:
    return sorted(entry.name for entry in parent.iterdir() if entry.is_dir())
