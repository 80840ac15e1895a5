"""Numbered schema migrations for both engines, applied at start-up.

`schema_version` lists the migrations applied. A migration runs once, inside the same
transaction that records it, under a lock that makes replicas starting together take
turns (PostgreSQL: `pg_advisory_xact_lock`; SQLite: `BEGIN IMMEDIATE`): the first applies
what is missing, the others find nothing to do and change nothing.

Version 1 is the schema of the first release, which had no `schema_version` table; its
statements are idempotent, so such a file is brought up to date, not broken.
"""

from __future__ import annotations

# Arbitrary, fixed: the advisory lock key this service's migrations take on PostgreSQL.
PG_MIGRATION_LOCK = 0x64685F6D6967  # "dh_mig"

SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)

SQLITE: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE IF NOT EXISTS jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            client_code TEXT UNIQUE,
            avatar_id TEXT NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq)",
        "CREATE INDEX IF NOT EXISTS jobs_avatar ON jobs (avatar_id, state)",
        """CREATE TABLE IF NOT EXISTS avatars (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            body TEXT NOT NULL
        )""",
    ),
    2: (
        # Leases: epoch seconds; a running row with no lease (version 1's) is expired.
        "ALTER TABLE jobs ADD COLUMN lease_owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_expires_at REAL",
        "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE replicas (
            id TEXT PRIMARY KEY,
            slots INTEGER NOT NULL,
            expires_at REAL NOT NULL
        )""",
    ),
    3: (
        # Avatar preparation leases, keyed by the video's content id (a registered avatar
        # or a job's one-off video): one replica detects faces, the others wait for it.
        # A row whose lease expired belongs to nobody; a finished preparation deletes it.
        """CREATE TABLE avatar_leases (
            avatar_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL
        )""",
    ),
    4: (
        # Live sessions: the replica holding a session's WebRTC peer writes its row (a
        # snapshot every tick); any replica answers GET from it and flags a DELETE.
        """CREATE TABLE live_sessions (
            id TEXT PRIMARY KEY,
            avatar_id TEXT NOT NULL,
            replica TEXT NOT NULL,
            created_at REAL NOT NULL,
            fps REAL NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            state TEXT NOT NULL,
            seconds_live REAL NOT NULL DEFAULT 0,
            frames_sent INTEGER NOT NULL DEFAULT 0,
            late_frames INTEGER NOT NULL DEFAULT 0,
            speech_queued_s REAL NOT NULL DEFAULT 0,
            latency_p50_ms REAL,
            latency_p95_ms REAL,
            end_requested INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX live_sessions_updated ON live_sessions (updated_at)",
    ),
}

POSTGRES: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE jobs (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            client_code TEXT UNIQUE,
            avatar_id TEXT NOT NULL,
            body JSONB NOT NULL
        )""",
        "CREATE INDEX jobs_state ON jobs (state, seq)",
        "CREATE INDEX jobs_avatar ON jobs (avatar_id, state)",
        """CREATE TABLE avatars (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            body JSONB NOT NULL
        )""",
    ),
    2: (
        "ALTER TABLE jobs ADD COLUMN lease_owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_expires_at DOUBLE PRECISION",
        "ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false",
        """CREATE TABLE replicas (
            id TEXT PRIMARY KEY,
            slots INTEGER NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
    ),
    3: (
        """CREATE TABLE avatar_leases (
            avatar_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
    ),
    4: (
        """CREATE TABLE live_sessions (
            id TEXT PRIMARY KEY,
            avatar_id TEXT NOT NULL,
            replica TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            fps DOUBLE PRECISION NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            state TEXT NOT NULL,
            seconds_live DOUBLE PRECISION NOT NULL DEFAULT 0,
            frames_sent BIGINT NOT NULL DEFAULT 0,
            late_frames BIGINT NOT NULL DEFAULT 0,
            speech_queued_s DOUBLE PRECISION NOT NULL DEFAULT 0,
            latency_p50_ms DOUBLE PRECISION,
            latency_p95_ms DOUBLE PRECISION,
            end_requested BOOLEAN NOT NULL DEFAULT false,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX live_sessions_updated ON live_sessions (updated_at)",
    ),
}

LATEST = max(SQLITE)
assert set(SQLITE) == set(POSTGRES), "both engines have the same numbered migrations"


def pending(applied: set[int], migrations: dict[int, tuple[str, ...]]) -> list[int]:
    return sorted(version for version in migrations if version not in applied)
