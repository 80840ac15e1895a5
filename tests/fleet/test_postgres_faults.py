"""PostgreSQL unreachable or going away: one line at start-up, 503s and a failing /readyz
that name it while it is away, work that resumes when it is back, and its password
nowhere in logs or answers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from synthmedia.audio import voiced_speech, write_audio
from tests.api.conftest import SPEECH_RATE, ServerFactory, register_avatar
from tests.api.server import (
    REPO,
    ApiServer,
    free_port,
    poll_until,
    submit_job,
    wait_for_job,
    wait_until_rendering,
)
from tests.engines import PostgresEngine
from tests.fleet.conftest import FLEET_SETTINGS, LEASE_S

OUTAGE_DEADLINE_S = 30.0
# Every request that needs the store is answered this fast while it is frozen.
ANSWER_DEADLINE_S = 2.0
# A job long enough to be frozen mid-render, and a freeze longer than its lease.
RENDER_AUDIO_S = 8.0
FROZEN_S = 2 * LEASE_S


@pytest.fixture
def own_postgres() -> Iterator[PostgresEngine]:
    """A PostgreSQL of this test's own, which it may stop and start again."""
    root = Path(tempfile.mkdtemp(prefix="dh-pg-own-"))
    engine = PostgresEngine(root).init().start()
    try:
        yield engine
    finally:
        engine.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_serve_with_postgres_unreachable_exits_with_one_line_naming_it(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("DH_")}
    env.update(
        DH_DATA_DIR=str(tmp_path),
        DH_PORT=str(free_port()),
        DH_DATABASE_URL=f"postgresql://dh:hunter2-secret@127.0.0.1:{port}/jobs",
    )

    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert f"PostgreSQL at 127.0.0.1:{port}/jobs is unreachable" in lines[0]
    assert "hunter2-secret" not in done.stderr + done.stdout


def test_postgres_going_away_answers_503_naming_it_and_work_resumes_when_it_is_back(
    server_factory: ServerFactory, own_postgres: PostgresEngine, avatar_video: Path, speech: Path
) -> None:
    server: ApiServer = server_factory(
        database_url=own_postgres.create_database(), **FLEET_SETTINGS
    )
    avatar_id = register_avatar(server, avatar_video)
    where = f"PostgreSQL at 127.0.0.1:{own_postgres.port}/"
    answers: list[str] = []
    with server.client() as client:
        before = wait_for_job(client, submit_job(client, speech, avatar_id=avatar_id).json()["id"])

        own_postgres.stop()
        ready = client.get("/readyz")
        listing = client.get("/v1/jobs")
        submitted = submit_job(client, speech, avatar_id=avatar_id)
        answers += [ready.text, listing.text, submitted.text, client.get("/v1/system").text]
        own_postgres.start()

        poll_until(
            lambda: client.get("/readyz").status_code,
            lambda status: status == 200,
            OUTAGE_DEADLINE_S,
            "ready again once PostgreSQL is back",
        )
        after_id = submit_job(client, speech, avatar_id=avatar_id).json()["id"]
        after = wait_for_job(client, after_id)
        kept = client.get(f"/v1/jobs/{before['id']}").json()
        answers += [client.get("/v1/system").text, client.get("/metrics").text]
    server.stop()

    assert ready.status_code == 503 and where in ready.text, ready.text
    assert listing.status_code == 503 and where in listing.json()["error"]["message"]
    assert submitted.status_code == 503, submitted.text
    assert after["state"] == "succeeded", after
    assert kept["state"] == "succeeded", "a job finished before the outage is still there"
    log = server.log_path.read_text(errors="replace")
    assert where in log
    assert own_postgres.password not in log + "".join(answers)


def test_a_frozen_postgres_is_answered_503_within_two_seconds(
    server_factory: ServerFactory, own_postgres: PostgresEngine, avatar_video: Path
) -> None:
    server: ApiServer = server_factory(
        database_url=own_postgres.create_database(), **FLEET_SETTINGS
    )
    avatar_id = register_avatar(server, avatar_video)
    with server.client(timeout=10.0) as client:
        own_postgres.freeze()
        try:
            timings: dict[str, tuple[int, float]] = {}
            for path in ("/v1/jobs", f"/v1/avatars/{avatar_id}", "/v1/jobs/nope", "/readyz"):
                start = time.monotonic()
                status = client.get(path).status_code
                timings[path] = (status, time.monotonic() - start)
        finally:
            own_postgres.thaw()
        poll_until(
            lambda: client.get("/readyz").status_code,
            lambda status: status == 200,
            OUTAGE_DEADLINE_S,
            "ready again once PostgreSQL answers",
        )
    for path, (status, seconds) in timings.items():
        assert status == 503, (path, status, timings, server.log(60))
        assert seconds < ANSWER_DEADLINE_S, (path, seconds)


def test_a_job_rendering_through_a_frozen_postgres_is_recorded_once_without_a_second_render(
    server_factory: ServerFactory, own_postgres: PostgresEngine, avatar_video: Path, tmp_path: Path
) -> None:
    audio = tmp_path / "speech.wav"
    write_audio(audio, voiced_speech(RENDER_AUDIO_S), SPEECH_RATE)
    server: ApiServer = server_factory(
        database_url=own_postgres.create_database(), **FLEET_SETTINGS
    )
    avatar_id = register_avatar(server, avatar_video)
    with server.client(timeout=10.0) as client:
        job_id = submit_job(client, audio, avatar_id=avatar_id).json()["id"]
        wait_until_rendering(client, job_id)
        own_postgres.freeze()
        try:
            # Held frozen past the lease: every renewal fails meanwhile. A duration, not a
            # wait for state.
            time.sleep(FROZEN_S)
        finally:
            own_postgres.thaw()
        job = wait_for_job(client, job_id, deadline_s=120.0)
    server.stop()

    log = server.log_path.read_text(errors="replace")
    starts = [line for line in log.splitlines() if f"job {job_id} started" in line]
    assert job["state"] == "succeeded", (job, server.log(60))
    assert job["attempts"] == 1, job
    assert len(starts) == 1, starts
