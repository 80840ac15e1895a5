"""A full disk under the data directory, on a real small filesystem (a 40 MiB tmpfs):
submissions are answered 507 naming it (never 500), a job rendering when the disk fills
ends failed with "disk full" (or waits and succeeds once space is freed), no job is left
running without an owner, no partial file stays, SQLite keeps its integrity, and jobs
submitted once space is freed succeed.

Mounting needs root (CAP_SYS_ADMIN); without it the test is skipped, saying so.
"""

from __future__ import annotations

import errno
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from orchestrator.jobs.store import DB_NAME
from synthmedia.audio import voiced_speech, write_audio
from tests.api.conftest import SPEECH_RATE, ServerFactory, register_avatar
from tests.api.server import (
    ApiServer,
    poll_until,
    submit_job,
    wait_for_job,
    wait_until_rendering,
)

DISK_MB = 40
CHUNK = 1 << 16
# A job long enough to be rendering when the disk fills.
RENDER_AUDIO_S = 30.0
JOB_DEADLINE_S = 120.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_MB MiB inside the test's folder (the server's log goes beside
    it, off the full disk), unmounted at the end."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # Lazy: a server that is still stopping may hold a file there for a moment.
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(path: Path) -> None:
    """Writes `path` until the filesystem has no room left, to the last block."""
    with path.open("wb", buffering=0) as filler:
        for chunk in (CHUNK, 4096):
            assert _write_until_full(filler, b"\0" * chunk) == errno.ENOSPC


def _write_until_full(filler: BinaryIO, chunk: bytes) -> int | None:
    """The errno that ended the writing."""
    try:
        while True:
            filler.write(chunk)
    except OSError as exc:
        return exc.errno


def test_a_full_disk_answers_507_fails_or_holds_work_and_loses_nothing(
    server_factory: ServerFactory, small_disk: Path, avatar_video: Path, tmp_path: Path
) -> None:
    audio = tmp_path / "speech.wav"
    write_audio(audio, voiced_speech(RENDER_AUDIO_S), SPEECH_RATE)
    data_dir = small_disk  # its log lies beside it, off the full disk
    server: ApiServer = server_factory(data_dir=data_dir)
    avatar_id = register_avatar(server, avatar_video)
    filler = data_dir / "filler"
    with server.client() as client:
        running_id = submit_job(client, audio, avatar_id=avatar_id).json()["id"]
        wait_until_rendering(client, running_id)
        _fill(filler)

        refused = submit_job(client, audio, avatar_id=avatar_id)
        listing = client.get("/v1/jobs")  # reads still answer
        # The rendering job meets the full disk (its outcome cannot be written yet: the
        # log says so).
        poll_until(
            lambda: server.log_path.read_text(errors="replace"),
            lambda log: f"job {running_id}: outcome waits for the store: disk full" in log,
            JOB_DEADLINE_S,
            "the rendering job meeting the full disk",
        )
        during = client.get(f"/v1/jobs/{running_id}").json()

        filler.unlink()
        ended = wait_for_job(client, running_id, deadline_s=JOB_DEADLINE_S)
        after = wait_for_job(
            client,
            submit_job(client, audio, avatar_id=avatar_id).json()["id"],
            deadline_s=JOB_DEADLINE_S,
        )
        running = client.get("/v1/jobs", params={"state": "running"}).json()
    server.stop()

    assert refused.status_code == 507, (refused.status_code, refused.text)
    assert "disk full" in refused.json()["error"]["message"], refused.text
    assert refused.headers.get("Retry-After"), refused.headers
    assert listing.status_code == 200, listing.text
    # Held by its live replica until its outcome can be written.
    assert during["state"] == "running", during
    if ended["state"] == "failed":
        assert "disk full" in ended["error"]["message"], ended
        assert not (data_dir / "jobs" / running_id).exists(), "a failed job leaves no file"
    else:
        assert ended["state"] == "succeeded", (ended, server.log(60))
    assert after["state"] == "succeeded", (after, server.log(60))
    assert running["items"] == [], running
    leftovers = [p.name for p in data_dir.rglob("*") if p.suffix in (".part", ".partial", ".tmp")]
    assert leftovers == [], leftovers
    with sqlite3.connect(data_dir / DB_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
