"""`S3Storage`: uploads, prepared avatars and results kept in an S3-compatible bucket.

The data directory is scratch only: uploads are staged there and then kept in the bucket
(`adopt`); a job's inputs are fetched into its scratch folder before it renders and the
folder is removed when the job ends; the result is uploaded once the job succeeded. The
local layout is LocalStorage's, and a kept file's key is its path below `service/`:

    <prefix>/jobs/<job_id>/audio.<ext>, video.<ext>, result.mp4
    <prefix>/avatar-sources/<avatar_id>/source.<ext>
    <prefix>/avatars/<avatar_id>/<cache files>   a prepared avatar, keyed by content hash
    <prefix>/avatars/<avatar_id>/complete.json   written last: the cache is whole

Prepared avatars are shared: after a preparation the local cache is uploaded with its
completion marker last, and a replica that lacks a cache downloads it if the marker is
there, so it sends the detector nothing. The marker lists every file with its size, so a
half-uploaded or half-deleted cache is never used.

Outages: a call that fails raises StorageUnavailable; the work that met it reports it to
orchestrator.dependencies, which starts nothing until `check()` (HeadBucket) finds the
bucket again. Deleting is best effort: a removal that meets an outage is logged and
leaves the objects behind.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from orchestrator.errors import NotFound, PipelineError
from orchestrator.pipeline import avatar_cache
from orchestrator.settings import Settings
from orchestrator.storage.base import (
    RESULT_NAME,
    STAGE,
    JobFiles,
    Leftover,
    LeftoverKind,
    StorageUnavailable,
)
from orchestrator.storage.delivery import object_response
from orchestrator.storage.local import LocalStorage, remove_path
from orchestrator.storage.objects import Bucket, MissingObject, S3Location

if TYPE_CHECKING:
    from orchestrator.jobs.store import JobRecord

log = logging.getLogger(__name__)
AVATAR_MARKER = "complete.json"


class S3Storage:
    def __init__(self, settings: Settings, pool: Executor, bucket: Bucket) -> None:
        self.settings = settings
        self.local = LocalStorage(settings.data_dir, pool)
        self.bucket = bucket
        self.location = bucket.location
        # Scratch of jobs this process ran before a crash: every input is in the bucket.
        for leftover in (self.local.root / "jobs").iterdir():
            remove_path(leftover)

    @classmethod
    async def open(cls, settings: Settings, pool: Executor) -> S3Storage:
        """Connects and checks the bucket (HeadBucket): StorageUnavailable says which and
        where when it cannot be used."""
        return cls(settings, pool, await open_bucket(settings, pool))

    # Local paths: scratch, with LocalStorage's layout.

    def staging_path(self, suffix: str) -> Path:
        return self.local.staging_path(suffix)

    def job_dir(self, job_id: str) -> Path:
        return self.local.job_dir(job_id)

    def result_path(self, job_id: str) -> Path:
        return self.local.result_path(job_id)

    def avatar_source_dir(self, avatar_id: str) -> Path:
        return self.local.avatar_source_dir(avatar_id)

    def avatar_cache_dir(self, avatar_id: str) -> Path:
        return self.local.avatar_cache_dir(avatar_id)

    # Keys

    def key_of(self, destination: Path) -> str:
        """The key of a file kept at `destination` (a path below the scratch root)."""
        return self.location.key(destination.relative_to(self.local.root).as_posix())

    def job_key(self, job_id: str, name: str = "") -> str:
        return self.location.key("jobs", job_id, name)

    def avatar_source_key(self, avatar_id: str, name: str = "") -> str:
        return self.location.key("avatar-sources", avatar_id, name)

    def avatar_key(self, avatar_id: str, name: str = "") -> str:
        return self.location.key("avatars", avatar_id, name)

    # Keeping and removing

    async def adopt(self, staged: Path, destination: Path) -> Path:
        """Uploads a finished upload to its key; returns the local path it stands for
        (job rows name inputs by it; only the file name matters)."""
        await self.bucket.put_file(self.key_of(destination), staged)
        await self.local.discard(staged)
        return destination

    async def discard(self, path: Path) -> None:
        await self.local.discard(path)

    async def remove_job(self, job_id: str) -> None:
        await self.local.remove_job(job_id)
        await self._best_effort(
            f"job {job_id}", self.bucket.delete_prefix(self.job_key(job_id) + "/")
        )

    async def remove_job_inputs(self, job_id: str) -> None:
        """The scratch folder and the kept inputs; the result stays in the bucket."""
        await self.local.remove_job(job_id)

        async def delete_inputs() -> None:
            keys = await self.bucket.list_keys(self.job_key(job_id) + "/")
            result = self.job_key(job_id, RESULT_NAME)
            await self.bucket.delete_keys(key for key in keys if key != result)

        await self._best_effort(f"inputs of job {job_id}", delete_inputs())

    async def remove_avatar_cache(self, avatar_id: str) -> None:
        await self.local.remove_avatar_cache(avatar_id)

        async def delete_cache() -> None:
            # The marker first: a cache without it is never downloaded.
            await self.bucket.delete_keys([self.avatar_key(avatar_id, AVATAR_MARKER)])
            await self.bucket.delete_prefix(self.avatar_key(avatar_id) + "/")

        await self._best_effort(f"avatar cache {avatar_id}", delete_cache())

    async def remove_avatar(self, avatar_id: str) -> None:
        await self.local.discard(self.avatar_source_dir(avatar_id))
        await self._best_effort(
            f"avatar source {avatar_id}",
            self.bucket.delete_prefix(self.avatar_source_key(avatar_id) + "/"),
        )
        await self.remove_avatar_cache(avatar_id)

    async def remove_avatar_source(self, avatar_id: str) -> None:
        await self.local.discard(self.avatar_source_dir(avatar_id))
        await self._best_effort(
            f"avatar source {avatar_id}",
            self.bucket.delete_prefix(self.avatar_source_key(avatar_id) + "/"),
        )

    async def leftovers(self, unchanged_since: float) -> list[Leftover]:
        """Local scratch and the bucket's objects, grouped by the id their key names; an id
        counts only when none of its objects changed since `unchanged_since`."""
        found = set(await self.local.leftovers(unchanged_since))
        prefixes: dict[LeftoverKind, str] = {
            "job": self.job_key("") + "/",
            "avatar-source": self.avatar_source_key("") + "/",
            "avatar": self.avatar_key("") + "/",
        }
        for kind, prefix in prefixes.items():
            newest: dict[str, float] = {}
            for key, changed in await self.bucket.list_changed(prefix):
                owner = key[len(prefix) :].split("/", 1)[0]
                if owner and not owner.startswith("."):
                    newest[owner] = max(changed, newest.get(owner, 0.0))
            found.update(
                Leftover(kind, owner)
                for owner, changed in newest.items()
                if changed < unchanged_since
            )
        return sorted(found, key=lambda leftover: (leftover.kind, leftover.id))

    async def job_ids(self) -> list[str]:
        # Local scratch only (empty after the start-up clean). Listing the bucket would race
        # with other replicas between their upload and their row.
        return await self.local.job_ids()

    async def avatar_source_ids(self) -> list[str]:
        return await self.local.avatar_source_ids()

    async def remove_partial_avatars(self) -> list[str]:
        return await self.local.remove_partial_avatars()

    # Around rendering and preparation

    @asynccontextmanager
    async def job_files(self, job: JobRecord) -> AsyncIterator[JobFiles]:
        """Fetches the inputs (and the avatar's cache, if prepared anywhere) into the job's
        scratch folder; on a clean exit publishes the avatar cache and uploads the result.
        On any failure the scratch goes (a retry fetches again); on success it stays until
        the job is recorded (remove_job_inputs), for HeyGem's result copy."""
        scratch = self.job_dir(job.id)
        try:
            await self.local.in_pool(lambda: scratch.mkdir(parents=True, exist_ok=True))
            audio = scratch / Path(job.audio_path).name
            await self._fetch_input(self.job_key(job.id, audio.name), audio, job.audio_name)
            video_name = Path(job.video_path).name
            if job.registered_avatar:
                video = scratch / f"avatar{Path(video_name).suffix}"
                video_key = self.avatar_source_key(job.avatar_id, video_name)
            else:
                video = scratch / video_name
                video_key = self.job_key(job.id, video_name)
            await self._fetch_input(video_key, video, job.video_name)
            await self.fetch_avatar(job.avatar_id)
            files = JobFiles(audio, video, self.result_path(job.id))
            yield files
            await self.publish_avatar(job.avatar_id)
            await self.bucket.put_file(self.job_key(job.id, RESULT_NAME), files.result)
        except BaseException:
            await self.local.in_pool(remove_path, scratch)
            raise

    @asynccontextmanager
    async def avatar_source(self, avatar_id: str, source: Path) -> AsyncIterator[Path]:
        local = self.staging_path(source.suffix)
        try:
            await self._fetch_input(self.avatar_source_key(avatar_id, source.name), local, None)
            yield local
        finally:
            await self.local.discard(local)

    async def fetch_avatar(self, avatar_id: str) -> None:
        """Downloads the avatar's cache if this host lacks it and the bucket has it whole:
        into a scratch folder (as the pipeline writes its own, so start-up removes a
        leftover), checked against the marker, then installed as the pipeline installs."""
        directory = self.avatar_cache_dir(avatar_id)
        if await self.local.in_pool(avatar_cache.is_complete, directory):
            return
        marker = await self.bucket.get_bytes(self.avatar_key(avatar_id, AVATAR_MARKER))
        if marker is None:
            return  # not prepared anywhere yet: the pipeline prepares it
        files: dict[str, int] = json.loads(marker)["files"]
        scratch = await self.local.in_pool(avatar_cache.new_scratch, directory)
        try:
            for name in files:
                await self.bucket.get_file(self.avatar_key(avatar_id, name), scratch.path / name)
            sizes = await self.local.in_pool(avatar_cache.cache_files, scratch.path)
            if sizes != files:
                log.warning("avatar %s: the bucket's cache is not as its marker says", avatar_id)
                return
            await self.local.in_pool(avatar_cache.install, scratch)
            log.info("avatar %s: prepared cache fetched from the bucket", avatar_id)
        except MissingObject:
            return  # deleted meanwhile: prepared again here
        finally:
            await self.local.in_pool(scratch.discard)

    async def publish_avatar(self, avatar_id: str) -> None:
        """Uploads this host's complete cache of the avatar unless the bucket has it."""
        directory = self.avatar_cache_dir(avatar_id)
        if not await self.local.in_pool(avatar_cache.is_complete, directory):
            return
        marker_key = self.avatar_key(avatar_id, AVATAR_MARKER)
        if await self.bucket.size(marker_key) is not None:
            return
        files = await self.local.in_pool(avatar_cache.cache_files, directory)
        for name in files:
            await self.bucket.put_file(self.avatar_key(avatar_id, name), directory / name)
        marker = {"avatar_id": avatar_id, "files": files}
        await self.bucket.put_bytes(marker_key, json.dumps(marker, indent=2).encode())
        log.info("avatar %s: prepared cache kept in the bucket", avatar_id)

    async def has_result(self, job_id: str) -> bool:
        return await self.result_size(job_id) is not None

    # Results

    async def result_size(self, job_id: str) -> int | None:
        return await self.bucket.size(self.job_key(job_id, RESULT_NAME))

    async def result_response(
        self, job_id: str, range_header: str | None, filename: str
    ) -> Response:
        """Streamed with Range passed through to S3, or a redirect to a presigned URL
        (DH_S3_RESULT_DELIVERY); orchestrator.storage.delivery builds either."""
        size = await self.result_size(job_id)
        if size is None:
            raise NotFound(STAGE, f"the result of job '{job_id}' is no longer in the object store")
        redirect = self.settings.s3_result_delivery == "redirect"
        return await object_response(
            self.bucket,
            self.job_key(job_id, RESULT_NAME),
            size,
            range_header,
            filename,
            self.settings.s3_presign_expiry_s if redirect else None,
        )

    # Health

    async def check(self) -> None:
        await self.bucket.probe()

    def describe(self) -> dict[str, str]:
        return {
            "kind": "s3",
            "bucket": self.location.bucket,
            "prefix": self.location.prefix,
            "endpoint": self.location.endpoint,
        }

    async def close(self) -> None:
        self.bucket.close()

    async def _fetch_input(self, key: str, local: Path, name: str | None) -> None:
        try:
            await self.bucket.get_file(key, local)
        except MissingObject:
            raise PipelineError(
                STAGE, f"the input {name or local.name} is no longer in the object store"
            ) from None

    async def _best_effort(self, what: str, removal: Coroutine[Any, Any, None]) -> None:
        try:
            await removal
        except StorageUnavailable as exc:
            log.warning("%s left in the bucket: %s", what, exc.message)


async def open_bucket(settings: Settings, pool: Executor) -> Bucket:
    """The bucket DH_STORAGE_URL names, checked with a HeadBucket."""
    assert settings.storage_url is not None
    location = S3Location.parse(settings.storage_url, settings.s3_endpoint_url)
    bucket = Bucket(settings, location, pool)
    try:
        await bucket.probe()
    except BaseException:
        bucket.close()
        raise
    return bucket
