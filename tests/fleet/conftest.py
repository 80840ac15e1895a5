"""Fixtures for the fleet tests: replicas of `dh serve` sharing one real PostgreSQL.

Every replica is a real `dh serve` (tests.api.server) on its own port with its own
DH_REPLICA_ID, all on one database of the session's PostgreSQL (tests.engines) and the
session's local Triton, with short leases so a dead replica's job moves on in seconds.

Files: DH_TEST_FLEET_STORAGE picks how replicas share inputs, avatars and results:
"s3" (the SeaweedFS server of tests.s3server, DH_STORAGE_URL=s3://…, each replica with
its own data directory for scratch) or "disk" (one DH_DATA_DIR shared by every replica,
the stand-in for one host). Default: "s3", as a fleet runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.api.conftest import (  # noqa: F401 (fixtures these tests use)
    api_media,
    avatar_cache,
    avatar_video,
    long_speech,
    server_factory,
    speech,
    tiny_speech,
)
from tests.api.server import ApiServer
from tests.engines import PostgresEngine, postgres  # noqa: F401 (registers the fixture)
from tests.s3server import S3Server

FLEET_STORAGE = os.environ.get("DH_TEST_FLEET_STORAGE", "s3")
# Short leases: a killed replica's job is taken over within LEASE_S + HEARTBEAT_S.
LEASE_S, HEARTBEAT_S = 4.0, 1.0
FLEET_SETTINGS: dict[str, object] = {"lease_s": LEASE_S, "lease_heartbeat_s": HEARTBEAT_S}

Fleet = Callable[..., list[ApiServer]]


@pytest.fixture
def fleet(
    server_factory: Callable[..., ApiServer],  # noqa: F811
    postgres: PostgresEngine,  # noqa: F811
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Fleet:
    """fleet(n, **settings): n replicas on one fresh database, started one after another."""

    def start(replicas: int = 2, **settings: object) -> list[ApiServer]:
        shared: dict[str, object] = {
            "database_url": postgres.create_database(),
            **FLEET_SETTINGS,
            **settings,
        }
        if FLEET_STORAGE == "s3":
            s3 = request.getfixturevalue("s3_server")
            shared.update(s3.settings(s3.make_bucket()))
        servers = []
        for index in range(replicas):
            name = f"replica-{chr(ord('a') + index)}"
            data_dir = tmp_path / ("data" if FLEET_STORAGE == "disk" else f"data-{name}")
            replica_id = f"{name}-{uuid.uuid4().hex[:4]}"
            servers.append(server_factory(data_dir=data_dir, replica_id=replica_id, **shared))
        return servers

    return start


if FLEET_STORAGE == "s3":
    from tests.s3server import s3_server  # noqa: F401 (registers the fixture)


@pytest.fixture
def crashable_postgres() -> Iterator[PostgresEngine]:
    """A PostgreSQL of the test's own, to freeze and kill (commits survive a kill)."""
    root = Path(tempfile.mkdtemp(prefix="dh-pg-crash-"))
    engine = PostgresEngine(root, crash_safe=True).init().start()
    try:
        yield engine
    finally:
        engine.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def crashable_s3(tmp_path: Path) -> Iterator[S3Server]:
    """An S3 server of the test's own, to freeze and kill (the session's must stay up)."""
    server = S3Server(tmp_path / "own-s3").start()
    try:
        yield server
    finally:
        server.kill()  # a frozen server would not answer SIGTERM
