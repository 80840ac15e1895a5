"""JobStore on one SQLite file in WAL mode: the single-host default.

SQLite calls block, so they run on one dedicated thread that owns the connection; the
event loop only awaits them. Lease times are this host's clock (one host shares the file).
Events stay in this process: a SQLite file is not shared between hosts.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from orchestrator.blocking import run_blocking
from orchestrator.jobs.states import ACTIVE_STATES, TERMINAL_STATES, JobState
from orchestrator.jobs.store.base import STAGE, DuplicateCode, StoreFull, StoreUnavailable
from orchestrator.jobs.store.migrations import SCHEMA_VERSION_TABLE, SQLITE, pending
from orchestrator.jobs.store.records import (
    JOB_STATES,
    QUEUED,
    RUNNING,
    SESSION_COLUMNS,
    SESSION_ENDED,
    SESSION_UPSERT,
    Admission,
    AvatarRecord,
    JobProgress,
    JobRecord,
    SessionRecord,
    SessionSnapshot,
    body_json,
    from_body,
    job_from_row,
    session_from_row,
    snapshot_values,
)

P = ParamSpec("P")
T = TypeVar("T")
JOB_COLUMNS = "body, seq, lease_owner, cancel_requested"


def _set_state(job: JobRecord) -> str:
    """The SET clause saving a job: leaving "running" ends its lease and cancel request."""
    lease = "" if job.state == RUNNING else ", lease_owner=NULL, lease_expires_at=NULL"
    cancel = "" if job.state == RUNNING else ", cancel_requested=0"
    return f"SET state=?, body=?{lease}{cancel}"


def _fence(owner: str | None, attempt: int | None) -> tuple[str, tuple[object, ...]]:
    """The conditions (and their parameters) that keep a write about a running job to
    the lease `owner` holds on the attempt it claimed: a replica cut off while another
    claimed the job again writes nothing."""
    where, params = "", ()  # type: tuple[str, tuple[object, ...]]
    if owner is not None:
        where, params = " AND lease_owner=?", (owner,)
    if attempt is not None:
        where, params = f"{where} AND json_extract(body, '$.attempts')=?", (*params, attempt)
    return where, params


class SqliteStore:
    """JobStore on one SQLite file; every call runs on the store's own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # One thread owns the connection: SQLite calls are serialised without locks.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="dh-store")
        self._db: sqlite3.Connection | None = None
        self._listeners: list[Callable[[str], None]] = []

    @property
    def where(self) -> str:
        return f"SQLite at {self.path.name}"

    async def open(self) -> SqliteStore:
        await self._run(self._connect)
        return self

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a killed process loses no committed row; only an OS crash might.
        db.execute("PRAGMA synchronous=NORMAL")
        self._db = db
        self._migrate(db)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        # IMMEDIATE takes the write lock first: two servers starting on one file take turns.
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(SCHEMA_VERSION_TABLE)
            applied = {row[0] for row in db.execute("SELECT version FROM schema_version")}
            for version in pending(applied, SQLITE):
                for statement in SQLITE[version]:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    async def ping(self) -> None:
        # On the store's own thread: a thread stuck behind a long call is as down as a
        # lost file, and the caller's deadline says so.
        await self._run(self._sql, "SELECT 1")

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        # Every process on this host that shares the database shares this folder: a file
        # lock is the one-holder rule (`dh api` and `dh worker` on one data directory).
        lock_path = self.path.with_name(f"{self.path.name}.{name}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock with the descriptor

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """On the store's own thread: the connection is used by that thread only."""
        try:
            return await run_blocking(self._thread, fn, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            # SQLite's own words; the layers above see the project's errors.
            if "full" in str(exc):
                raise StoreFull(STAGE, f"disk full: {self.where} cannot write ({exc})") from None
            raise StoreUnavailable(STAGE, f"{self.where}: {exc}") from None

    def _sql(self, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._db is not None, "SqliteStore.open() has not run"
        return self._db.execute(query, params).fetchall()

    async def _jobs(self, where: str, params: tuple[object, ...] = ()) -> list[JobRecord]:
        rows = await self._run(self._sql, f"SELECT {JOB_COLUMNS} FROM jobs {where}", params)
        return [job_from_row(*row) for row in rows]

    # jobs

    def _insert(self, job: JobRecord) -> int:
        assert self._db is not None
        try:
            cursor = self._db.execute(
                "INSERT INTO jobs (id, state, client_code, avatar_id, body) VALUES (?,?,?,?,?)",
                (job.id, job.state, job.client_code, job.avatar_id, json.dumps(body_json(job))),
            )
        except sqlite3.IntegrityError as exc:
            if "client_code" in str(exc):
                raise DuplicateCode(
                    "request", f"a job with code '{job.client_code}' exists already"
                ) from None
            raise
        return int(cursor.lastrowid or 0)

    async def add_job(self, job: JobRecord) -> JobRecord:
        job.seq = await self._run(self._insert, job)
        return job

    async def admit_job(self, job: JobRecord, max_backlog: int) -> Admission:
        def admit() -> Admission:
            assert self._db is not None
            self._db.execute("BEGIN IMMEDIATE")
            try:
                counts = dict(self._sql("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
                (capacity,) = self._sql(
                    "SELECT COALESCE(SUM(slots), 0) FROM replicas WHERE expires_at > ?",
                    (time.time(),),
                )[0]
                queued, running = int(counts.get(QUEUED, 0)), int(counts.get(RUNNING, 0))
                free = max(0, int(capacity) - running)
                accepted = queued < max_backlog + free
                if accepted:
                    job.seq = self._insert(job)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return Admission(accepted, queued, running, int(capacity))

        return await self._run(admit)

    async def save_job(self, job: JobRecord) -> None:
        await self._run(
            self._sql,
            f"UPDATE jobs {_set_state(job)} WHERE id=?",
            (job.state, json.dumps(body_json(job)), job.id),
        )

    async def update_job(
        self, job: JobRecord, was: JobState, owner: str | None = None, attempt: int | None = None
    ) -> bool:
        fence, fenced = _fence(owner, attempt)
        query = f"UPDATE jobs {_set_state(job)} WHERE id=? AND state=?{fence}"
        params = (job.state, json.dumps(body_json(job)), job.id, was, *fenced)
        rows = await self._run(self._sql, query + " RETURNING seq", params)
        return bool(rows)

    async def get_job(self, job_id: str) -> JobRecord | None:
        jobs = await self._jobs("WHERE id=?", (job_id,))
        return jobs[0] if jobs else None

    async def job_by_code(self, code: str) -> JobRecord | None:
        jobs = await self._jobs("WHERE client_code=?", (code,))
        return jobs[0] if jobs else None

    async def delete_job(self, job_id: str) -> None:
        await self._run(self._sql, "DELETE FROM jobs WHERE id=?", (job_id,))

    async def set_job_stage(
        self, job_id: str, stage: str, owner: str | None = None, attempt: int | None = None
    ) -> None:
        """Records the stage a running job has reached, so a job cut off by a crash is
        reported in the stage it was in; a job that has ended meanwhile is left alone."""
        fence, fenced = _fence(owner, attempt)
        await self._run(
            self._sql,
            f"UPDATE jobs SET body=json_set(body, '$.stage', ?) WHERE id=? AND state=?{fence}",
            (stage, job_id, RUNNING, *fenced),
        )

    async def list_jobs(
        self, state: JobState | None, before_seq: int | None, limit: int
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
        return await self._jobs(
            f"WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?", (*params, limit)
        )

    async def jobs_in(self, states: tuple[JobState, ...]) -> list[JobRecord]:
        """Oldest first: the order the scheduler starts them in."""
        marks = ",".join("?" * len(states))
        return await self._jobs(f"WHERE state IN ({marks}) ORDER BY seq", states)

    async def jobs_finished_before(self, when: float, limit: int) -> list[JobRecord]:
        """Jobs in a final state that finished before `when` (epoch seconds), oldest first."""
        marks = ",".join("?" * len(TERMINAL_STATES))
        return await self._jobs(
            f"WHERE state IN ({marks}) AND json_extract(body, '$.finished_at') < ? "
            "ORDER BY seq LIMIT ?",
            (*TERMINAL_STATES, when, limit),
        )

    async def count_jobs(self) -> dict[str, int]:
        rows = await self._run(self._sql, "SELECT state, COUNT(*) FROM jobs GROUP BY state")
        counts: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
        counts.update({state: int(n) for state, n in rows})
        return counts

    async def avatar_in_use(self, avatar_id: str) -> bool:
        rows = await self._run(
            self._sql,
            "SELECT 1 FROM jobs WHERE avatar_id=? AND state IN (?,?) LIMIT 1",
            (avatar_id, *ACTIVE_STATES),
        )
        return bool(rows)

    # leases

    async def claim_job(self, owner: str, lease_s: float) -> JobRecord | None:
        now = time.time()
        rows = await self._run(
            self._sql,
            "UPDATE jobs SET state='running', lease_owner=?, lease_expires_at=?, "
            "cancel_requested=0, body=json_set(body, '$.state', 'running', "
            "'$.attempts', json_extract(body, '$.attempts') + 1, '$.started_at', ?, "
            "'$.finished_at', NULL, '$.stage', 'decode', '$.error', NULL, '$.result', NULL, "
            "'$.replica', ?, '$.frames_done', 0, '$.frames_per_second', 0.0) "
            "WHERE seq = (SELECT seq FROM jobs WHERE state='queued' ORDER BY seq LIMIT 1) "
            f"AND state='queued' RETURNING {JOB_COLUMNS}",
            (owner, now + lease_s, now, owner),
        )
        return job_from_row(*rows[0]) if rows else None

    async def heartbeat(
        self,
        job_id: str,
        owner: str,
        lease_s: float,
        progress: JobProgress | None,
        attempt: int | None = None,
    ) -> bool | None:
        body = "body"
        params: tuple[object, ...] = ()
        if progress is not None:
            body = (
                "json_set(body, '$.stage', ?, '$.frames_done', ?, '$.frames_total', ?, "
                "'$.frames_per_second', ?)"
            )
            params = (
                progress.stage,
                progress.frames_done,
                progress.frames_total,
                progress.frames_per_second,
            )
        fence, fenced = _fence(owner, attempt)
        rows = await self._run(
            self._sql,
            f"UPDATE jobs SET lease_expires_at=?, body={body} "
            f"WHERE id=? AND state='running'{fence} RETURNING cancel_requested",
            (time.time() + lease_s, *params, job_id, *fenced),
        )
        return bool(rows[0][0]) if rows else None

    _STALE = (
        "state='running' AND (lease_expires_at IS NULL OR lease_expires_at < ? "
        "OR (? IS NOT NULL AND substr(lease_owner, 1, length(?)) = ?))"
    )

    async def stale_jobs(self, previous: str | None) -> list[JobRecord]:
        return await self._jobs(
            f"WHERE {self._STALE} ORDER BY seq", (time.time(), previous, previous, previous)
        )

    async def update_stale(self, job: JobRecord, previous: str | None) -> bool:
        rows = await self._run(
            self._sql,
            f"UPDATE jobs {_set_state(job)} WHERE id=? AND {self._STALE} "
            "AND lease_owner IS ? RETURNING seq",
            (
                job.state,
                json.dumps(body_json(job)),
                job.id,
                time.time(),
                previous,
                previous,
                previous,
                job.lease_owner,
            ),
        )
        return bool(rows)

    async def request_cancel(self, job_id: str) -> bool:
        rows = await self._run(
            self._sql,
            "UPDATE jobs SET cancel_requested=1 WHERE id=? AND state='running' RETURNING seq",
            (job_id,),
        )
        return bool(rows)

    async def register_replica(self, owner: str, slots: int, ttl_s: float) -> None:
        now = time.time()
        await self._run(
            self._sql,
            "INSERT INTO replicas (id, slots, expires_at) VALUES (?,?,?) "
            "ON CONFLICT (id) DO UPDATE SET slots=excluded.slots, expires_at=excluded.expires_at",
            (owner, slots, now + ttl_s),
        )
        await self._run(self._sql, "DELETE FROM replicas WHERE expires_at < ?", (now - ttl_s,))

    async def drop_replica(self, owner: str) -> None:
        await self._run(self._sql, "DELETE FROM replicas WHERE id=?", (owner,))

    async def notify(self, event: str) -> None:
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.call_soon(listener, event)

    def subscribe(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    # avatar preparation leases

    async def claim_preparation(
        self, avatar_id: str, owner: str, lease_s: float, previous: str | None = None
    ) -> bool:
        now = time.time()
        # One statement: the insert, or the takeover of an expired (or own) lease.
        rows = await self._run(
            self._sql,
            "INSERT INTO avatar_leases (avatar_id, owner, expires_at) VALUES (?,?,?) "
            "ON CONFLICT (avatar_id) DO UPDATE SET owner=excluded.owner, "
            "expires_at=excluded.expires_at WHERE avatar_leases.expires_at < ? "
            "OR avatar_leases.owner = excluded.owner "
            "OR (? IS NOT NULL AND substr(avatar_leases.owner, 1, length(?)) = ?) "
            "RETURNING owner",
            (avatar_id, owner, now + lease_s, now, previous, previous, previous),
        )
        return bool(rows)

    async def renew_preparation(self, avatar_id: str, owner: str, lease_s: float) -> bool:
        rows = await self._run(
            self._sql,
            "UPDATE avatar_leases SET expires_at=? WHERE avatar_id=? AND owner=? RETURNING owner",
            (time.time() + lease_s, avatar_id, owner),
        )
        return bool(rows)

    async def release_preparation(self, avatar_id: str, owner: str) -> None:
        await self._run(
            self._sql, "DELETE FROM avatar_leases WHERE avatar_id=? AND owner=?", (avatar_id, owner)
        )

    # avatars

    async def add_avatar(self, avatar: AvatarRecord) -> AvatarRecord:
        def insert() -> int:
            assert self._db is not None
            cursor = self._db.execute(
                "INSERT INTO avatars (id, state, body) VALUES (?,?,?)",
                (avatar.id, avatar.state, json.dumps(body_json(avatar))),
            )
            return int(cursor.lastrowid or 0)

        avatar.seq = await self._run(insert)
        return avatar

    async def save_avatar(self, avatar: AvatarRecord) -> None:
        await self._run(
            self._sql,
            "UPDATE avatars SET state=?, body=? WHERE id=?",
            (avatar.state, json.dumps(body_json(avatar)), avatar.id),
        )

    async def get_avatar(self, avatar_id: str) -> AvatarRecord | None:
        rows = await self._run(self._sql, "SELECT body, seq FROM avatars WHERE id=?", (avatar_id,))
        return from_body(AvatarRecord, *rows[0]) if rows else None

    async def list_avatars(self) -> list[AvatarRecord]:
        rows = await self._run(self._sql, "SELECT body, seq FROM avatars ORDER BY seq DESC")
        return [from_body(AvatarRecord, *row) for row in rows]

    async def delete_avatar(self, avatar_id: str) -> None:
        await self._run(self._sql, "DELETE FROM avatars WHERE id=?", (avatar_id,))

    # live sessions

    async def add_session(self, session: SessionRecord) -> None:
        await self._run(
            self._sql,
            f"INSERT INTO live_sessions ({SESSION_COLUMNS}, updated_at) "
            f"VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) {SESSION_UPSERT}",
            (
                session.id,
                session.avatar_id,
                session.replica,
                session.created_at,
                session.fps,
                session.width,
                session.height,
                *snapshot_values(session.snapshot),
                session.end_requested,
                time.time(),
            ),
        )

    async def refresh_session(
        self, session_id: str, replica: str, snapshot: SessionSnapshot
    ) -> bool | None:
        rows = await self._run(
            self._sql,
            "UPDATE live_sessions SET state=?, seconds_live=?, frames_sent=?, late_frames=?, "
            "speech_queued_s=?, latency_p50_ms=?, latency_p95_ms=?, updated_at=? "
            "WHERE id=? AND replica=? AND state<>? RETURNING end_requested",
            (*snapshot_values(snapshot), time.time(), session_id, replica, SESSION_ENDED),
        )
        return bool(rows[0][0]) if rows else None

    async def end_sessions(self, replica: str) -> int:
        rows = await self._run(
            self._sql,
            "UPDATE live_sessions SET state=?, updated_at=? "
            "WHERE state<>? AND substr(replica, 1, length(?)) = ? RETURNING id",
            (SESSION_ENDED, time.time(), SESSION_ENDED, replica, replica),
        )
        return len(rows)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._run(
            self._sql,
            f"SELECT {SESSION_COLUMNS}, ? - updated_at FROM live_sessions WHERE id=?",
            (time.time(), session_id),
        )
        return session_from_row(rows[0]) if rows else None

    async def list_sessions(self, fresh_s: float) -> list[SessionRecord]:
        now = time.time()
        rows = await self._run(
            self._sql,
            f"SELECT {SESSION_COLUMNS}, ? - updated_at FROM live_sessions "
            "WHERE state<>? AND updated_at >= ? ORDER BY created_at DESC",
            (now, SESSION_ENDED, now - fresh_s),
        )
        return [session_from_row(row) for row in rows]

    async def request_session_end(self, session_id: str) -> bool:
        rows = await self._run(
            self._sql,
            "UPDATE live_sessions SET end_requested=1 WHERE id=? AND state<>? RETURNING id",
            (session_id, SESSION_ENDED),
        )
        return bool(rows)

    async def purge_sessions(self, older_than_s: float) -> None:
        await self._run(
            self._sql,
            "DELETE FROM live_sessions WHERE updated_at < ?",
            (time.time() - older_than_s,),
        )
