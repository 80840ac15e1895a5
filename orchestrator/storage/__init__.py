"""File storage of the service: uploads, job inputs and results, avatar sources and the
prepared avatars' caches.

`Storage` (base.py) is the interface; `LocalStorage` (local.py, the default) keeps
everything under the data directory, `S3Storage` (s3.py, DH_STORAGE_URL=s3://...) in an
S3-compatible bucket with the data directory as scratch. This package is the only place
that knows which.
"""

from __future__ import annotations

from concurrent.futures import Executor

from orchestrator.settings import Settings
from orchestrator.storage.base import (
    RESULT_NAME,
    JobFiles,
    Storage,
    StorageUnavailable,
    safe_suffix,
)
from orchestrator.storage.local import LocalStorage

__all__ = [
    "RESULT_NAME",
    "JobFiles",
    "LocalStorage",
    "Storage",
    "StorageUnavailable",
    "check_storage",
    "open_storage",
    "safe_suffix",
]


async def open_storage(settings: Settings, pool: Executor) -> Storage:
    """The storage DH_STORAGE_URL names, checked: an S3 bucket that cannot be used raises
    StorageUnavailable naming the bucket and endpoint (never the keys)."""
    if settings.storage_url is None:
        return LocalStorage(settings.data_dir, pool)
    # Imported here: boto3 is loaded only by services that use object storage.
    from orchestrator.storage.s3 import S3Storage

    return await S3Storage.open(settings, pool)


async def check_storage(settings: Settings) -> None:
    """`dh serve`'s start-up check, before anything else starts: the bucket answers
    (HeadBucket). Nothing to check on local disk."""
    if settings.storage_url is None:
        return
    from concurrent.futures import ThreadPoolExecutor

    from orchestrator.storage.s3 import open_bucket

    with ThreadPoolExecutor(1, thread_name_prefix="dh-storage-check") as pool:
        bucket = await open_bucket(settings, pool)
        bucket.close()
