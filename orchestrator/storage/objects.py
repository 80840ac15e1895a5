"""One S3 bucket (under a key prefix) through boto3, with the project's errors.

boto3's calls block, so every one runs in the service's io thread pool, never on the
event loop. An outage or a refusal (connection failures, timeouts, 5xx, a wrong key, a
missing bucket) becomes `StorageUnavailable`; a missing object becomes `MissingObject`.
Messages name the endpoint and bucket, never credentials.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

from orchestrator.blocking import run_blocking
from orchestrator.errors import BadInput, NotFound, describe
from orchestrator.settings import Settings
from orchestrator.storage.base import STAGE, StorageUnavailable

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

P = ParamSpec("P")
T = TypeVar("T")
# S3's bucket naming rules (DNS-compatible names, as SeaweedFS and MinIO require too).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# DeleteObjects takes at most this many keys per request (S3 API reference).
DELETE_BATCH = 1000
# Backoff of a call retried through an outage (botocore's own 3 attempts come first).
RETRY_FIRST_PAUSE_S = 0.25
RETRY_MAX_PAUSE_S = 4.0
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# Transfers in the calling io thread: no extra threads per upload (the pool bounds them).
_TRANSFER = TransferConfig(use_threads=False)


class MissingObject(NotFound):
    """An object the service expected in the bucket is not there."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "a/b": no slash at either end
    endpoint: str  # for messages: the endpoint URL without user info, or "AWS S3"

    @classmethod
    def parse(cls, storage_url: str, endpoint_url: str | None) -> S3Location:
        """`s3://bucket/prefix` (DH_STORAGE_URL); BadInput when it is not one."""
        parts = urlsplit(storage_url)
        if parts.scheme != "s3" or not parts.netloc:
            raise BadInput(
                STAGE, f"DH_STORAGE_URL must look like s3://bucket/prefix, not '{storage_url}'"
            )
        bucket = parts.netloc
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise BadInput(
                STAGE,
                f"DH_STORAGE_URL names bucket '{bucket}': bucket names are 3-63 lowercase "
                "letters, digits, '.' and '-', starting and ending with a letter or digit",
            )
        return cls(bucket, parts.path.strip("/"), _public_endpoint(endpoint_url))

    def key(self, *parts: str) -> str:
        return "/".join(part for part in (self.prefix, *parts) if part)

    def __str__(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"object storage {where} at {self.endpoint}"


def _public_endpoint(endpoint_url: str | None) -> str:
    if not endpoint_url:
        return "AWS S3"
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


class Bucket:
    """The blocking S3 calls the storage needs, each awaited in `pool`."""

    def __init__(self, settings: Settings, location: S3Location, pool: Executor) -> None:
        self.location = location
        self._pool = pool
        # Unset keys: boto3's own chain (AWS_* variables, shared files, instance roles).
        session = boto3.session.Session(
            aws_access_key_id=_secret(settings.s3_access_key_id),
            aws_secret_access_key=_secret(settings.s3_secret_access_key),
            region_name=settings.s3_region,
        )
        common: dict[str, Any] = {
            "signature_version": "s3v4",
            # S3-compatible servers (MinIO, SeaweedFS) serve path-style; AWS picks itself.
            "s3": {"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
            # Checksums only where the API requires them: not every S3-compatible server
            # accepts the newer default trailers.
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        self._client: S3Client = session.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            config=Config(
                connect_timeout=settings.s3_timeout_s,
                read_timeout=settings.s3_timeout_s,
                retries={"mode": "standard", "max_attempts": 3},
                **common,
            ),
        )
        # The readiness probe must answer within the dependency check's deadline whatever
        # the store does: one try, timeouts of that deadline (so its thread ends with it).
        probe_timeout_s = settings.dependency_check_timeout_s
        self._probe_client: S3Client = session.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            config=Config(
                connect_timeout=probe_timeout_s,
                read_timeout=probe_timeout_s,
                retries={"mode": "standard", "max_attempts": 1},
                **common,
            ),
        )
        self.retry_deadline_s = settings.s3_retry_deadline_s

    async def probe(self) -> None:
        """HeadBucket: StorageUnavailable (saying why) unless the bucket answers."""
        await self._call("checking the bucket", False, self._head_bucket)

    def _head_bucket(self) -> None:
        try:
            self._probe_client.head_bucket(Bucket=self.location.bucket)
        except ClientError as exc:
            status = _status(exc)
            if status == 404:
                raise StorageUnavailable(
                    STAGE, f"{self.location}: the bucket does not exist"
                ) from None
            if status == 403:
                raise StorageUnavailable(
                    STAGE, f"{self.location}: access denied (check the S3 credentials)"
                ) from None
            raise

    async def put_file(self, key: str, path: Path) -> None:
        await self._run(
            f"storing {key}",
            self._client.upload_file,
            str(path),
            self.location.bucket,
            key,
            Config=_TRANSFER,
        )

    async def get_file(self, key: str, path: Path) -> None:
        """Downloads to `path` (s3transfer writes a temporary name, then renames)."""
        await self._run(
            f"fetching {key}",
            self._client.download_file,
            self.location.bucket,
            key,
            str(path),
            Config=_TRANSFER,
        )

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._run(
            f"storing {key}",
            partial(self._client.put_object, Bucket=self.location.bucket, Key=key, Body=data),
        )

    async def get_bytes(self, key: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                reply = self._client.get_object(Bucket=self.location.bucket, Key=key)
            except ClientError as exc:
                if _missing(exc):
                    return None
                raise
            return reply["Body"].read()

        return await self._run(f"reading {key}", read)

    async def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is no such object."""

        def head() -> int | None:
            try:
                return self._client.head_object(Bucket=self.location.bucket, Key=key)[
                    "ContentLength"
                ]
            except ClientError as exc:
                if _missing(exc):
                    return None
                raise

        return await self._run(f"looking up {key}", head)

    async def list_keys(self, prefix: str) -> list[str]:
        def listing() -> list[str]:
            keys: list[str] = []
            pages = self._client.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.location.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []) if "Key" in item)
            return keys

        return await self._run(f"listing {prefix}", listing)

    async def list_changed(self, prefix: str) -> list[tuple[str, float]]:
        """(key, last modified in epoch seconds) of every object under `prefix`."""

        def listing() -> list[tuple[str, float]]:
            found: list[tuple[str, float]] = []
            pages = self._client.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.location.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    if "Key" in item and "LastModified" in item:
                        found.append((item["Key"], item["LastModified"].timestamp()))
            return found

        return await self._run(f"listing {prefix}", listing)

    async def delete_keys(self, keys: Iterable[str]) -> None:
        def delete(batch: list[str]) -> None:
            self._client.delete_objects(
                Bucket=self.location.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )

        ordered = list(keys)
        for start in range(0, len(ordered), DELETE_BATCH):
            batch = ordered[start : start + DELETE_BATCH]
            await self._run(f"deleting {batch[0]}", delete, batch)

    async def delete_prefix(self, prefix: str) -> None:
        keys = await self.list_keys(prefix)
        if keys:
            await self.delete_keys(keys)

    async def open_range(self, key: str, first: int | None, last: int | None) -> StreamingBody:
        """The object's body, bytes first..last inclusive (None: the whole object)."""
        bucket = self.location.bucket

        def get() -> StreamingBody:
            if first is None:
                return self._client.get_object(Bucket=bucket, Key=key)["Body"]
            # S3 answers the range itself: only the asked bytes leave the store.
            return self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes={first}-{last}")[
                "Body"
            ]

        return await self._run(f"reading {key}", get)

    async def read_chunk(self, body: StreamingBody, size: int) -> bytes:
        return await self._run("reading a result", body.read, size)

    async def presign(self, key: str, expiry_s: int, filename: str, media_type: str) -> str:
        params = {
            "Bucket": self.location.bucket,
            "Key": key,
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
            "ResponseContentType": media_type,
        }
        return await self._run(
            f"signing {key}",
            partial(
                self._client.generate_presigned_url,
                "get_object",
                Params=params,
                ExpiresIn=expiry_s,
            ),
        )

    def close(self) -> None:
        self._client.close()
        self._probe_client.close()

    async def _run(self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in the pool, its failures as the project's errors; through an
        outage it is tried again until DH_S3_RETRY_DEADLINE_S has passed."""
        return await self._call(what, True, partial(fn, *args, **kwargs))

    async def _call(self, what: str, retry: bool, fn: Callable[[], T]) -> T:
        """`fn()` in the pool; `retry`: through an outage (a probe answers at once)."""

        def call() -> T:
            try:
                return fn()
            except StorageUnavailable:
                raise
            except ClientError as exc:
                if _missing(exc):
                    raise MissingObject(STAGE, f"{what}: not in the bucket") from None
                raise self._unavailable(what, _reason(exc)) from None
            except (BotoCoreError, Boto3Error, Urllib3Error) as exc:
                # describe(): an upload's error names the local file; only its name shows.
                raise self._unavailable(what, describe(exc)) from None

        loop = asyncio.get_running_loop()
        deadline: float | None = None
        pause = RETRY_FIRST_PAUSE_S
        while True:
            try:
                return await run_blocking(self._pool, call)
            except StorageUnavailable:
                # The job or preparation that made this call reports the outage once it gives
                # up; the dependency gate's own probe sees it meanwhile.
                now = loop.time()
                deadline = now + self.retry_deadline_s if deadline is None else deadline
                if not retry or now + pause > deadline:
                    raise
            # A backoff between attempts at a store that is away, not a wait for state.
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_PAUSE_S)

    def _unavailable(self, what: str, reason: str) -> StorageUnavailable:
        return StorageUnavailable(STAGE, f"{self.location}: {what} failed: {reason}")


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code", "") in _MISSING_CODES


def _reason(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message", "")
    return f"{code or _status(exc)} {message}".strip()
