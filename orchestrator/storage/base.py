"""What the service needs from file storage, whichever backend keeps the files.

`LocalStorage` (local.py) keeps everything under the data directory; `S3Storage` (s3.py)
keeps uploads, prepared avatars and results in an S3-compatible bucket and uses the data
directory only as scratch. The pipeline reads and writes local files either way: a job's
inputs are fetched into scratch before it renders (`job_files`), and an avatar source
before it is prepared (`avatar_source`). A result is downloaded through the storage
(`result_response`), so no route knows the backend; whether the storage can be used now
is orchestrator.dependencies' question, which it answers with `check()`.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from orchestrator.errors import DependencyUnavailable

if TYPE_CHECKING:
    from starlette.responses import Response

    from orchestrator.jobs.store import JobRecord

STAGE = "storage"
RESULT_NAME = "result.mp4"
RESULT_MEDIA_TYPE = "video/mp4"
# A name from a client is kept only for these characters, to be safe in a path.
_SAFE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_MAX_SUFFIX = 10


class StorageUnavailable(DependencyUnavailable):
    """The object store cannot be reached or refuses the service (HTTP 503). The message
    names the endpoint and bucket, never credentials."""


def safe_suffix(filename: str | None) -> str:
    """The file's extension if it is short and plain (PyAV sniffs content; the suffix only
    helps formats without a header), else ''."""
    suffix = Path(filename or "").suffix.lower()
    if len(suffix) > _MAX_SUFFIX or not set(suffix) <= _SAFE_NAME_CHARS:
        return ""
    return suffix


@dataclass(frozen=True)
class JobFiles:
    """A job's files on local disk while it renders."""

    audio: Path
    video: Path
    result: Path


LeftoverKind = Literal["job", "avatar-source", "avatar"]


@dataclass(frozen=True)
class Leftover:
    """Files kept for a job, an avatar's source or a prepared avatar, named by the id of the
    row that should own them; the orphan sweep asks the store whether one does."""

    kind: LeftoverKind
    id: str


class Storage(Protocol):
    # Local paths: staging of uploads, a job's folder, the pipeline's avatar cache. With
    # object storage they are scratch, and `adopt` names where a file is kept.
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
    async def remove_avatar_source(self, avatar_id: str) -> None: ...
    async def leftovers(self, unchanged_since: float) -> list[Leftover]:
        """What is kept (folders, or bucket objects grouped by id) and has not changed since
        `unchanged_since` (epoch seconds)."""
        ...

    # Around rendering and preparation: files brought to local disk and kept afterwards.
    def job_files(self, job: JobRecord) -> AbstractAsyncContextManager[JobFiles]:
        """The job's inputs on local disk and where its result goes; on a clean exit the
        result (and the avatar cache the job prepared) is kept."""
        ...

    def avatar_source(self, avatar_id: str, source: Path) -> AbstractAsyncContextManager[Path]:
        """A registered avatar's source video on local disk, for its preparation."""
        ...

    async def fetch_avatar(self, avatar_id: str) -> None:
        """Brings a prepared avatar cache kept elsewhere to local disk, if there is one."""
        ...

    async def publish_avatar(self, avatar_id: str) -> None:
        """Keeps a freshly prepared local avatar cache where other replicas find it."""
        ...

    async def has_result(self, job_id: str) -> bool: ...
    async def result_response(
        self, job_id: str, range_header: str | None, filename: str
    ) -> Response:
        """The answer to a download of the job's result, whichever backend keeps it: the
        file (Range answered with 206), the object streamed with Range passed through, or
        a redirect to a presigned URL. NotFound when the result is gone."""
        ...

    async def check(self) -> None:
        """Returns if the storage can be used now; StorageUnavailable saying why if not.
        One quick try (orchestrator.dependencies puts the deadline on it)."""
        ...

    def describe(self) -> dict[str, str]:
        """Where files are kept, for reports: never credentials."""
        ...

    async def close(self) -> None: ...
