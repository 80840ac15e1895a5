"""The job store: jobs and avatars as rows, behind one interface, on SQLite or PostgreSQL.

`open_store(settings)` picks the engine: DH_DATABASE_URL unset keeps SQLite in the data
directory (one host); `postgresql://…` shares one database between replicas. Each row
keeps the record as JSON beside the few columns that are queried (state, client code,
avatar, sequence, lease), the same two tables on both engines.
"""

from __future__ import annotations

from orchestrator.jobs.states import ACTIVE_STATES, TERMINAL_STATES
from orchestrator.jobs.store.base import (
    AVATAR_EVENT,
    AVATAR_GONE_EVENT,
    CANCEL_EVENT,
    ENDED_EVENT,
    PREPARED_EVENT,
    QUEUED_EVENT,
    SESSION_END_EVENT,
    SESSION_ENDED_EVENT,
    DuplicateCode,
    JobStore,
    StoreFull,
    StoreUnavailable,
)
from orchestrator.jobs.store.records import (
    AVATAR_STATES,
    CANCELLED,
    FAILED,
    JOB_STATES,
    PREPARING,
    QUEUED,
    READY,
    RUNNING,
    SESSION_ENDED,
    SUCCEEDED,
    Admission,
    AvatarRecord,
    JobError,
    JobProgress,
    JobRecord,
    JobResult,
    SessionRecord,
    SessionSnapshot,
)
from orchestrator.jobs.store.sqlite import SqliteStore
from orchestrator.settings import Settings

DB_NAME = "service.db"  # the SQLite file in the data directory

__all__ = [
    "ACTIVE_STATES",
    "AVATAR_EVENT",
    "AVATAR_GONE_EVENT",
    "AVATAR_STATES",
    "CANCELLED",
    "CANCEL_EVENT",
    "DB_NAME",
    "ENDED_EVENT",
    "FAILED",
    "JOB_STATES",
    "PREPARED_EVENT",
    "PREPARING",
    "QUEUED",
    "QUEUED_EVENT",
    "READY",
    "RUNNING",
    "SESSION_ENDED",
    "SESSION_ENDED_EVENT",
    "SESSION_END_EVENT",
    "SUCCEEDED",
    "TERMINAL_STATES",
    "Admission",
    "AvatarRecord",
    "DuplicateCode",
    "JobError",
    "JobProgress",
    "JobRecord",
    "JobResult",
    "JobStore",
    "SessionRecord",
    "SessionSnapshot",
    "SqliteStore",
    "StoreFull",
    "StoreUnavailable",
    "open_store",
]


async def open_store(settings: Settings) -> JobStore:
    """The store DH_DATABASE_URL names, opened and migrated; StoreUnavailable (naming the
    engine and where, never the password) if it cannot be reached."""
    if settings.database_url is None:
        return await SqliteStore(settings.data_dir / DB_NAME).open()
    # Imported here: a single host never loads the PostgreSQL driver.
    from orchestrator.jobs.store.postgres import PostgresStore

    url = settings.database_url.get_secret_value()
    return await PostgresStore(url, settings.store_timeout_s).open()
