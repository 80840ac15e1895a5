"""JobStore on PostgreSQL through psycopg 3's async driver and its connection pool.

The queue is the jobs table: a replica claims the oldest queued job with
`FOR UPDATE SKIP LOCKED`, so replicas claiming at once never get the same row and never
wait for each other. Lease times are the database's clock, so replicas' clocks may
differ. Replicas tell each other about changes with `NOTIFY` on one channel; one
connection per replica `LISTEN`s, reconnecting after an outage.

Every psycopg error that means "the database cannot be reached" becomes
StoreUnavailable, naming the host, port and database and never the password.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from orchestrator.jobs.states import ACTIVE_STATES, TERMINAL_STATES, JobState
from orchestrator.jobs.store.base import (
    QUEUED_EVENT,
    STAGE,
    DuplicateCode,
    StoreFull,
    StoreUnavailable,
)
from orchestrator.jobs.store.migrations import (
    PG_MIGRATION_LOCK,
    POSTGRES,
    SCHEMA_VERSION_TABLE,
    pending,
)
from orchestrator.jobs.store.records import (
    JOB_STATES,
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

log = logging.getLogger(__name__)
CHANNEL = "dh_jobs"
# Arbitrary, fixed: the advisory lock under which a job is admitted against the backlog.
ADMISSION_LOCK = 0x64685F61646D  # "dh_adm"
# A request waits at most this long for a connection: an outage answers 503 quickly.
CONNECT_TIMEOUT_S = 5.0
# Default answer timeout of one store call (DH_STORE_TIMEOUT_S): requests that need the
# store answer within 2 s even while it is frozen.
ANSWER_TIMEOUT_S = 1.5
POOL_SIZE = 10
LISTEN_RETRY_S = 1.0  # pause between attempts to listen again after an outage
NOW = "extract(epoch FROM clock_timestamp())::float8"
JOB_COLUMNS = "body, seq, lease_owner, cancel_requested"
_UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)
T = TypeVar("T")


def _set_state(job: JobRecord) -> str:
    """The SET clause saving a job: leaving "running" ends its lease and cancel request."""
    if job.state == RUNNING:
        return "SET state=%s, body=%s"
    return "SET state=%s, body=%s, lease_owner=NULL, lease_expires_at=NULL, cancel_requested=false"


class PostgresStore:
    def __init__(self, url: str, answer_timeout_s: float = ANSWER_TIMEOUT_S) -> None:
        self._url = url
        self._answer_timeout_s = answer_timeout_s
        parts = conninfo_to_dict(url)
        self._password = str(parts.get("password") or "")
        host, port = parts.get("host") or "localhost", parts.get("port") or 5432
        self._where = f"PostgreSQL at {host}:{port}/{parts.get('dbname') or ''}"
        self._pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT_S)},
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            timeout=CONNECT_TIMEOUT_S,
            reconnect_timeout=float("inf"),  # an outage is waited out, never given up on
            name="dh-store",
        )
        self._listeners: list[Callable[[str], None]] = []
        self._listener: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        return self._where

    def _unavailable(self, exc: BaseException, verb: str = "unavailable") -> StoreUnavailable:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return StoreUnavailable(STAGE, f"{self._where} is {verb}: {reason}")

    async def open(self) -> PostgresStore:
        """Connects, applies migrations, starts listening; StoreUnavailable if unreachable."""
        try:
            async with await psycopg.AsyncConnection.connect(
                self._url, connect_timeout=int(CONNECT_TIMEOUT_S)
            ) as connection:
                await self._migrate(connection)
            await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except _UNREACHABLE as exc:
            await self._pool.close()
            raise self._unavailable(exc, "unreachable") from None
        self._listener = asyncio.create_task(self._listen(), name="store-listener")
        return self

    @staticmethod
    async def _migrate(connection: psycopg.AsyncConnection[Any]) -> None:
        async with connection.transaction():
            # Replicas starting together take turns; the lock ends with the transaction.
            await connection.execute("SELECT pg_advisory_xact_lock(%s)", (PG_MIGRATION_LOCK,))
            await connection.execute(SCHEMA_VERSION_TABLE)
            cursor = await connection.execute("SELECT version FROM schema_version")
            applied = {row[0] for row in await cursor.fetchall()}
            for version in pending(applied, POSTGRES):
                for statement in POSTGRES[version]:
                    await connection.execute(statement)
                await connection.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                    (version, time.time()),
                )

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self._pool.close()

    async def _run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """`work` on a pooled connection, answered within the answer timeout: a frozen
        server (connections open, nothing answered) is as down as one that refuses, and
        says so fast.

        The work runs in a task of its own, which is abandoned (cancelled, not awaited)
        when the deadline passes or the caller goes away: cancelling a psycopg call makes
        it send a cancel request to the server and wait for it, seconds more when the
        server is frozen, so that clean-up finishes in the background, holding one pooled
        connection until it does, while the caller has its answer."""

        async def attempt() -> T:
            async with self._pool.connection() as connection:
                return await work(connection)

        task = asyncio.create_task(attempt(), name="store-call")
        try:
            done, _ = await asyncio.wait({task}, timeout=self._answer_timeout_s)
        except asyncio.CancelledError:
            _abandon(task)
            raise
        if not done:
            _abandon(task)
            raise StoreUnavailable(
                STAGE, f"{self._where} did not answer within {self._answer_timeout_s:g} s"
            )
        try:
            return task.result()
        except psycopg.errors.DiskFull as exc:  # not a 503: nothing is written until freed
            raise StoreFull(STAGE, f"disk full: {self._unavailable(exc, 'full').message}") from None
        except _UNREACHABLE as exc:
            raise self._unavailable(exc) from None

    async def _sql(self, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        async def fetch(connection: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cursor = await connection.execute(query, params)
            return await cursor.fetchall() if cursor.description else []

        return await self._run(fetch)

    async def _jobs(self, where: str, params: tuple[object, ...] = ()) -> list[JobRecord]:
        rows = await self._sql(f"SELECT {JOB_COLUMNS} FROM jobs {where}", params)
        return [job_from_row(*row) for row in rows]

    async def ping(self) -> None:
        await self._sql("SELECT 1")

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        # A transaction-level advisory lock: released when the block's transaction ends,
        # also when this replica dies (its connection goes with it).
        # Held for the whole block (a sweep), so not bound by the answer timeout.
        try:
            async with self._pool.connection() as connection, connection.transaction():
                cursor = await connection.execute(
                    "SELECT pg_try_advisory_xact_lock(%s)", (_lock_key(name),)
                )
                row = await cursor.fetchone()
                yield bool(row and row[0])
        except _UNREACHABLE as exc:
            raise self._unavailable(exc) from None

    # jobs

    async def _insert(self, connection: psycopg.AsyncConnection[Any], job: JobRecord) -> int:
        try:
            cursor = await connection.execute(
                "INSERT INTO jobs (id, state, client_code, avatar_id, body) "
                "VALUES (%s,%s,%s,%s,%s) RETURNING seq",
                (job.id, job.state, job.client_code, job.avatar_id, Jsonb(body_json(job))),
            )
        except psycopg.errors.UniqueViolation as exc:
            if "client_code" in (exc.diag.constraint_name or ""):
                raise DuplicateCode(
                    "request", f"a job with code '{job.client_code}' exists already"
                ) from None
            raise
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def add_job(self, job: JobRecord) -> JobRecord:
        job.seq = await self._run(lambda connection: self._insert(connection, job))
        return job

    async def admit_job(self, job: JobRecord, max_backlog: int) -> Admission:
        async def admit(connection: psycopg.AsyncConnection[Any]) -> Admission:
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock(%s)", (ADMISSION_LOCK,))
                cursor = await connection.execute(
                    "SELECT (SELECT COUNT(*) FROM jobs WHERE state='queued'), "
                    "(SELECT COUNT(*) FROM jobs WHERE state='running'), "
                    f"(SELECT COALESCE(SUM(slots), 0) FROM replicas WHERE expires_at > {NOW})"
                )
                row = await cursor.fetchone()
                assert row is not None
                queued, running, capacity = (int(value) for value in row)
                accepted = queued < max_backlog + max(0, capacity - running)
                if accepted:
                    job.seq = await self._insert(connection, job)
            return Admission(accepted, queued, running, capacity)

        return await self._run(admit)

    async def save_job(self, job: JobRecord) -> None:
        await self._sql(
            f"UPDATE jobs {_set_state(job)} WHERE id=%s",
            (job.state, Jsonb(body_json(job)), job.id),
        )

    async def update_job(
        self, job: JobRecord, was: JobState, owner: str | None = None, attempt: int | None = None
    ) -> bool:
        fence, fenced = _fence(owner, attempt)
        query = f"UPDATE jobs {_set_state(job)} WHERE id=%s AND state=%s{fence} RETURNING seq"
        params = (job.state, Jsonb(body_json(job)), job.id, was, *fenced)
        return bool(await self._sql(query, params))

    async def get_job(self, job_id: str) -> JobRecord | None:
        jobs = await self._jobs("WHERE id=%s", (job_id,))
        return jobs[0] if jobs else None

    async def job_by_code(self, code: str) -> JobRecord | None:
        jobs = await self._jobs("WHERE client_code=%s", (code,))
        return jobs[0] if jobs else None

    async def delete_job(self, job_id: str) -> None:
        await self._sql("DELETE FROM jobs WHERE id=%s", (job_id,))

    async def set_job_stage(
        self, job_id: str, stage: str, owner: str | None = None, attempt: int | None = None
    ) -> None:
        fence, fenced = _fence(owner, attempt)
        await self._sql(
            "UPDATE jobs SET body = body || jsonb_build_object('stage', %s::text) "
            f"WHERE id=%s AND state=%s{fence}",
            (stage, job_id, RUNNING, *fenced),
        )

    async def list_jobs(
        self, state: JobState | None, before_seq: int | None, limit: int
    ) -> list[JobRecord]:
        where: list[str] = ["true"]
        params: list[str | int] = []
        if state is not None:
            where.append("state=%s")
            params.append(state)
        if before_seq is not None:
            where.append("seq<%s")
            params.append(before_seq)
        return await self._jobs(
            f"WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT %s", (*params, limit)
        )

    async def jobs_in(self, states: tuple[JobState, ...]) -> list[JobRecord]:
        return await self._jobs("WHERE state = ANY(%s) ORDER BY seq", (list(states),))

    async def jobs_finished_before(self, when: float, limit: int) -> list[JobRecord]:
        return await self._jobs(
            "WHERE state = ANY(%s) AND (body->>'finished_at')::float8 < %s ORDER BY seq LIMIT %s",
            (list(TERMINAL_STATES), when, limit),
        )

    async def count_jobs(self) -> dict[str, int]:
        rows = await self._sql("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        counts: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
        counts.update({state: int(n) for state, n in rows})
        return counts

    async def avatar_in_use(self, avatar_id: str) -> bool:
        rows = await self._sql(
            "SELECT 1 FROM jobs WHERE avatar_id=%s AND state = ANY(%s) LIMIT 1",
            (avatar_id, list(ACTIVE_STATES)),
        )
        return bool(rows)

    # leases

    async def claim_job(self, owner: str, lease_s: float) -> JobRecord | None:
        rows = await self._sql(
            f"UPDATE jobs SET state='running', lease_owner=%s, lease_expires_at={NOW} + %s, "
            "cancel_requested=false, body = body || jsonb_build_object('state', 'running', "
            "'attempts', COALESCE((body->>'attempts')::int, 0) + 1, 'started_at', %s::float8, "
            "'finished_at', NULL, 'stage', 'decode', 'error', NULL, 'result', NULL, "
            "'replica', %s::text, 'frames_done', 0, 'frames_per_second', 0.0) "
            "WHERE seq = (SELECT seq FROM jobs WHERE state='queued' ORDER BY seq LIMIT 1 "
            f"FOR UPDATE SKIP LOCKED) AND state='queued' RETURNING {JOB_COLUMNS}",
            (owner, lease_s, time.time(), owner),
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
                "body || jsonb_build_object('stage', %s::text, 'frames_done', %s::int, "
                "'frames_total', %s::int, 'frames_per_second', %s::float8)"
            )
            params = (
                progress.stage,
                progress.frames_done,
                progress.frames_total,
                progress.frames_per_second,
            )
        fence, fenced = _fence(owner, attempt)
        rows = await self._sql(
            f"UPDATE jobs SET lease_expires_at={NOW} + %s, body={body} "
            f"WHERE id=%s AND state='running'{fence} RETURNING cancel_requested",
            (lease_s, *params, job_id, *fenced),
        )
        return bool(rows[0][0]) if rows else None

    _STALE = (
        f"state='running' AND (lease_expires_at IS NULL OR lease_expires_at < {NOW} "
        "OR (%s::text IS NOT NULL AND starts_with(lease_owner, %s::text)))"
    )

    async def stale_jobs(self, previous: str | None) -> list[JobRecord]:
        return await self._jobs(f"WHERE {self._STALE} ORDER BY seq", (previous, previous))

    async def update_stale(self, job: JobRecord, previous: str | None) -> bool:
        rows = await self._sql(
            f"UPDATE jobs {_set_state(job)} WHERE id=%s AND {self._STALE} "
            "AND lease_owner IS NOT DISTINCT FROM %s RETURNING seq",
            (job.state, Jsonb(body_json(job)), job.id, previous, previous, job.lease_owner),
        )
        return bool(rows)

    async def request_cancel(self, job_id: str) -> bool:
        rows = await self._sql(
            "UPDATE jobs SET cancel_requested=true WHERE id=%s AND state='running' RETURNING seq",
            (job_id,),
        )
        return bool(rows)

    async def register_replica(self, owner: str, slots: int, ttl_s: float) -> None:
        await self._sql(
            f"INSERT INTO replicas (id, slots, expires_at) VALUES (%s, %s, {NOW} + %s) "
            "ON CONFLICT (id) DO UPDATE SET slots=excluded.slots, expires_at=excluded.expires_at",
            (owner, slots, ttl_s),
        )
        await self._sql(f"DELETE FROM replicas WHERE expires_at < {NOW} - %s", (ttl_s,))

    async def drop_replica(self, owner: str) -> None:
        await self._sql("DELETE FROM replicas WHERE id=%s", (owner,))

    async def notify(self, event: str) -> None:
        await self._sql("SELECT pg_notify(%s, %s)", (CHANNEL, event))

    def subscribe(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def _deliver(self, event: str) -> None:
        for listener in self._listeners:
            listener(event)

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    # Events sent while this replica was not listening are lost: look again.
                    self._deliver(QUEUED_EVENT)
                    async for note in connection.notifies():
                        self._deliver(note.payload)
            except _UNREACHABLE as exc:
                log.warning("%s", self._unavailable(exc))
            # A pause between reconnection attempts, not a wait for state.
            await asyncio.sleep(LISTEN_RETRY_S)

    # avatar preparation leases

    async def claim_preparation(
        self, avatar_id: str, owner: str, lease_s: float, previous: str | None = None
    ) -> bool:
        # One statement: ON CONFLICT locks the row, so two replicas never both win.
        rows = await self._sql(
            "INSERT INTO avatar_leases (avatar_id, owner, expires_at) "
            f"VALUES (%s, %s, {NOW} + %s) "
            "ON CONFLICT (avatar_id) DO UPDATE SET owner=excluded.owner, "
            f"expires_at=excluded.expires_at WHERE avatar_leases.expires_at < {NOW} "
            "OR avatar_leases.owner = excluded.owner "
            "OR (%s::text IS NOT NULL AND starts_with(avatar_leases.owner, %s::text)) "
            "RETURNING owner",
            (avatar_id, owner, lease_s, previous, previous),
        )
        return bool(rows)

    async def renew_preparation(self, avatar_id: str, owner: str, lease_s: float) -> bool:
        rows = await self._sql(
            f"UPDATE avatar_leases SET expires_at={NOW} + %s "
            "WHERE avatar_id=%s AND owner=%s RETURNING owner",
            (lease_s, avatar_id, owner),
        )
        return bool(rows)

    async def release_preparation(self, avatar_id: str, owner: str) -> None:
        await self._sql(
            "DELETE FROM avatar_leases WHERE avatar_id=%s AND owner=%s", (avatar_id, owner)
        )

    # avatars

    async def add_avatar(self, avatar: AvatarRecord) -> AvatarRecord:
        rows = await self._sql(
            "INSERT INTO avatars (id, state, body) VALUES (%s,%s,%s) RETURNING seq",
            (avatar.id, avatar.state, Jsonb(body_json(avatar))),
        )
        avatar.seq = int(rows[0][0])
        return avatar

    async def save_avatar(self, avatar: AvatarRecord) -> None:
        await self._sql(
            "UPDATE avatars SET state=%s, body=%s WHERE id=%s",
            (avatar.state, Jsonb(body_json(avatar)), avatar.id),
        )

    async def get_avatar(self, avatar_id: str) -> AvatarRecord | None:
        rows = await self._sql("SELECT body, seq FROM avatars WHERE id=%s", (avatar_id,))
        return from_body(AvatarRecord, *rows[0]) if rows else None

    async def list_avatars(self) -> list[AvatarRecord]:
        rows = await self._sql("SELECT body, seq FROM avatars ORDER BY seq DESC")
        return [from_body(AvatarRecord, *row) for row in rows]

    async def delete_avatar(self, avatar_id: str) -> None:
        await self._sql("DELETE FROM avatars WHERE id=%s", (avatar_id,))

    # live sessions (times by the database's clock, as leases: replicas' clocks may differ)

    async def add_session(self, session: SessionRecord) -> None:
        await self._sql(
            f"INSERT INTO live_sessions ({SESSION_COLUMNS}, updated_at) "
            f"VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,{NOW}) {SESSION_UPSERT}",
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
            ),
        )

    async def refresh_session(
        self, session_id: str, replica: str, snapshot: SessionSnapshot
    ) -> bool | None:
        rows = await self._sql(
            "UPDATE live_sessions SET state=%s, seconds_live=%s, frames_sent=%s, "
            "late_frames=%s, speech_queued_s=%s, latency_p50_ms=%s, latency_p95_ms=%s, "
            f"updated_at={NOW} WHERE id=%s AND replica=%s AND state<>%s RETURNING end_requested",
            (*snapshot_values(snapshot), session_id, replica, SESSION_ENDED),
        )
        return bool(rows[0][0]) if rows else None

    async def end_sessions(self, replica: str) -> int:
        rows = await self._sql(
            f"UPDATE live_sessions SET state=%s, updated_at={NOW} "
            "WHERE state<>%s AND starts_with(replica, %s) RETURNING id",
            (SESSION_ENDED, SESSION_ENDED, replica),
        )
        return len(rows)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._sql(
            f"SELECT {SESSION_COLUMNS}, {NOW} - updated_at FROM live_sessions WHERE id=%s",
            (session_id,),
        )
        return session_from_row(rows[0]) if rows else None

    async def list_sessions(self, fresh_s: float) -> list[SessionRecord]:
        rows = await self._sql(
            f"SELECT {SESSION_COLUMNS}, {NOW} - updated_at FROM live_sessions "
            f"WHERE state<>%s AND updated_at >= {NOW} - %s ORDER BY created_at DESC",
            (SESSION_ENDED, fresh_s),
        )
        return [session_from_row(row) for row in rows]

    async def request_session_end(self, session_id: str) -> bool:
        rows = await self._sql(
            "UPDATE live_sessions SET end_requested=true WHERE id=%s AND state<>%s RETURNING id",
            (session_id, SESSION_ENDED),
        )
        return bool(rows)

    async def purge_sessions(self, older_than_s: float) -> None:
        await self._sql(f"DELETE FROM live_sessions WHERE updated_at < {NOW} - %s", (older_than_s,))


def _fence(owner: str | None, attempt: int | None) -> tuple[str, tuple[object, ...]]:
    """The conditions (and their parameters) that keep a write about a running job to
    the lease `owner` holds on the attempt it claimed: a replica cut off while another
    claimed the job again writes nothing."""
    where, params = "", ()  # type: tuple[str, tuple[object, ...]]
    if owner is not None:
        where, params = " AND lease_owner=%s", (owner,)
    if attempt is not None:
        where, params = f"{where} AND (body->>'attempts')::int=%s", (*params, attempt)
    return where, params


def _abandon(task: asyncio.Task[Any]) -> None:
    """Cancels a store call nobody waits for any more; its outcome is dropped (it ends in
    the background, its connection back in the pool or closed)."""
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


def _lock_key(name: str) -> int:
    """A stable 63-bit advisory lock key for `name` (PostgreSQL's keys are bigint)."""
    return int.from_bytes(hashlib.sha256(f"dh:{name}".encode()).digest()[:8], "big") >> 1
