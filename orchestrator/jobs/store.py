"""The job store: jobs and avatars as rows, behind a small interface.

`JobStore` is what the service needs; `SqliteStore` implements it with SQLite in WAL mode
in the data directory. Each row keeps the record as JSON beside the few columns that are
queried (state, client code, avatar, sequence), so PostgreSQL can replace SQLite with the
same two tables. SQLite calls block, so they run on one dedicated thread that owns the
connection; the event loop only awaits them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE_STATES = (QUEUED, RUNNING)
TERMINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
PREPARING, READY = "preparing", "ready"
AVATAR_STATES = (PREPARING, READY, FAILED)


@dataclass
class JobRecord:
    id: str
    created_at: float
    audio_path: str
    video_path: str
    avatar_id: str  # content id of the video: the avatar cache it uses
    audio_seconds: float
    deadline_s: float
    registered_avatar: bool  # False: a one-off video whose cache goes with the job
    state: str = QUEUED
    client_code: str | None = None  # HeyGem's `code`, unique when set
    webhook_url: str | None = None
    audio_name: str | None = None  # the inputs as the client named them, for messages
    video_name: str | None = None
    watermark: bool = False  # draw the visible watermark (HeyGem's watermark_switch)
    super_resolution: bool = False  # asked for (HeyGem's chaofen); no model here applies it
    attempts: int = 0  # how many times the job was started
    started_at: float | None = None
    finished_at: float | None = None
    stage: str | None = None
    frames_done: int = 0
    frames_total: int = 0
    frames_per_second: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    webhook: dict[str, Any] | None = None
    seq: int = 0  # insertion order, assigned by the store; the paging cursor


@dataclass
class AvatarRecord:
    id: str  # content id of the video
    created_at: float
    source_path: str
    source_name: str
    state: str = PREPARING
    frames_seen: int = 0
    frames: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    frames_with_face: int | None = None
    detected_frames: int | None = None
    error: dict[str, str] | None = None
    finished_at: float | None = None
    seq: int = 0


# The two record types the store reads back; both are dataclasses with a `seq`.
RecordT = TypeVar("RecordT", JobRecord, AvatarRecord)


def _from_json(cls: type[RecordT], body: str, seq: int) -> RecordT:
    data = json.loads(body)
    known = {f.name for f in fields(cls)}
    record = cls(**{k: v for k, v in data.items() if k in known})
    record.seq = seq
    return record


class JobStore(Protocol):
    async def add_job(self, job: JobRecord) -> JobRecord: ...
    async def save_job(self, job: JobRecord) -> None: ...
    async def get_job(self, job_id: str) -> JobRecord | None: ...
    async def job_by_code(self, code: str) -> JobRecord | None: ...
    async def delete_job(self, job_id: str) -> None: ...
    async def set_job_stage(self, job_id: str, stage: str) -> None: ...
    async def list_jobs(
        self, state: str | None, before_seq: int | None, limit: int
    ) -> list[JobRecord]: ...
    async def jobs_in(self, states: tuple[str, ...]) -> list[JobRecord]: ...
    async def jobs_finished_before(self, when: float, limit: int) -> list[JobRecord]: ...
    async def count_jobs(self) -> dict[str, int]: ...
    async def avatar_in_use(self, avatar_id: str) -> bool: ...
    async def add_avatar(self, avatar: AvatarRecord) -> AvatarRecord: ...
    async def save_avatar(self, avatar: AvatarRecord) -> None: ...
    async def get_avatar(self, avatar_id: str) -> AvatarRecord | None: ...
    async def list_avatars(self) -> list[AvatarRecord]: ...
    async def delete_avatar(self, avatar_id: str) -> None: ...
    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    client_code TEXT UNIQUE,
    avatar_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_avatar ON jobs (avatar_id, state);
CREATE TABLE IF NOT EXISTS avatars (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    body TEXT NOT NULL
);
"""


class SqliteStore:
    """JobStore on one SQLite file; every call runs on the store's own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # One thread owns the connection: SQLite calls are serialised without locks.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="dh-store")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> SqliteStore:
        await self._run(self._connect)
        return self

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a killed process loses no committed row; only an OS crash might.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _sql(self, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._db is not None, "SqliteStore.open() has not run"
        return self._db.execute(query, params).fetchall()

    # jobs

    async def add_job(self, job: JobRecord) -> JobRecord:
        def insert() -> int:
            assert self._db is not None
            cursor = self._db.execute(
                "INSERT INTO jobs (id, state, client_code, avatar_id, body) VALUES (?,?,?,?,?)",
                (job.id, job.state, job.client_code, job.avatar_id, json.dumps(asdict(job))),
            )
            return int(cursor.lastrowid or 0)

        job.seq = await self._run(insert)
        return job

    async def save_job(self, job: JobRecord) -> None:
        await self._run(
            self._sql,
            "UPDATE jobs SET state=?, body=? WHERE id=?",
            (job.state, json.dumps(asdict(job)), job.id),
        )

    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._run(self._sql, "SELECT body, seq FROM jobs WHERE id=?", (job_id,))
        return _from_json(JobRecord, *rows[0]) if rows else None

    async def job_by_code(self, code: str) -> JobRecord | None:
        rows = await self._run(self._sql, "SELECT body, seq FROM jobs WHERE client_code=?", (code,))
        return _from_json(JobRecord, *rows[0]) if rows else None

    async def delete_job(self, job_id: str) -> None:
        await self._run(self._sql, "DELETE FROM jobs WHERE id=?", (job_id,))

    async def set_job_stage(self, job_id: str, stage: str) -> None:
        """Records the stage a running job has reached, so a job cut off by a crash is
        reported in the stage it was in; a job that has ended meanwhile is left alone."""
        await self._run(
            self._sql,
            "UPDATE jobs SET body=json_set(body, '$.stage', ?) WHERE id=? AND state=?",
            (stage, job_id, RUNNING),
        )

    async def list_jobs(
        self, state: str | None, before_seq: int | None, limit: int
    ) -> list[JobRecord]:
        """Newest first; `before_seq` is the cursor of the previous page."""
        where: list[str] = ["1=1"]
        params: list[str | int] = []
        if state is not None:
            where.append("state=?")
            params.append(state)
        if before_seq is not None:
            where.append("seq<?")
            params.append(before_seq)
        query = f"SELECT body, seq FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        rows = await self._run(self._sql, query, (*params, limit))
        return [_from_json(JobRecord, *row) for row in rows]

    async def jobs_in(self, states: tuple[str, ...]) -> list[JobRecord]:
        """Oldest first: the order the scheduler starts them in."""
        marks = ",".join("?" * len(states))
        rows = await self._run(
            self._sql, f"SELECT body, seq FROM jobs WHERE state IN ({marks}) ORDER BY seq", states
        )
        return [_from_json(JobRecord, *row) for row in rows]

    async def jobs_finished_before(self, when: float, limit: int) -> list[JobRecord]:
        """Jobs in a final state that finished before `when` (epoch seconds), oldest first."""
        marks = ",".join("?" * len(TERMINAL_STATES))
        rows = await self._run(
            self._sql,
            f"SELECT body, seq FROM jobs WHERE state IN ({marks}) "
            "AND json_extract(body, '$.finished_at') < ? ORDER BY seq LIMIT ?",
            (*TERMINAL_STATES, when, limit),
        )
        return [_from_json(JobRecord, *row) for row in rows]

    async def count_jobs(self) -> dict[str, int]:
        rows = await self._run(self._sql, "SELECT state, COUNT(*) FROM jobs GROUP BY state")
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({state: int(n) for state, n in rows})
        return counts

    async def avatar_in_use(self, avatar_id: str) -> bool:
        rows = await self._run(
            self._sql,
            "SELECT 1 FROM jobs WHERE avatar_id=? AND state IN (?,?) LIMIT 1",
            (avatar_id, *ACTIVE_STATES),
        )
        return bool(rows)

    # avatars

    async def add_avatar(self, avatar: AvatarRecord) -> AvatarRecord:
        def insert() -> int:
            assert self._db is not None
            cursor = self._db.execute(
                "INSERT INTO avatars (id, state, body) VALUES (?,?,?)",
                (avatar.id, avatar.state, json.dumps(asdict(avatar))),
            )
            return int(cursor.lastrowid or 0)

        avatar.seq = await self._run(insert)
        return avatar

    async def save_avatar(self, avatar: AvatarRecord) -> None:
        await self._run(
            self._sql,
            "UPDATE avatars SET state=?, body=? WHERE id=?",
            (avatar.state, json.dumps(asdict(avatar)), avatar.id),
        )

    async def get_avatar(self, avatar_id: str) -> AvatarRecord | None:
        rows = await self._run(self._sql, "SELECT body, seq FROM avatars WHERE id=?", (avatar_id,))
        return _from_json(AvatarRecord, *rows[0]) if rows else None

    async def list_avatars(self) -> list[AvatarRecord]:
        rows = await self._run(self._sql, "SELECT body, seq FROM avatars ORDER BY seq DESC")
        return [_from_json(AvatarRecord, *row) for row in rows]

    async def delete_avatar(self, avatar_id: str) -> None:
        await self._run(self._sql, "DELETE FROM avatars WHERE id=?", (avatar_id,))


def is_unique_violation(error: BaseException) -> bool:
    return isinstance(error, sqlite3.IntegrityError) and "UNIQUE" in str(error)
