"""Nothing accumulates: what a killed process left is gone after a restart, and a finished
job (row and result) is deleted once DH_RESULT_TTL has passed, each removal counted."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from tests.api.conftest import ServerFactory, register_avatar
from tests.api.server import ApiServer, poll_until, submit_job, wait_for_job

RESULT_TTL = "2s"  # the short duration syntax, as an operator would write "7d"
SWEEP_S = 0.5
# The job expires TTL after it ends and a sweep sees it within SWEEP_S: generous bound.
EXPIRY_DEADLINE_S = 20.0
REMOVED = re.compile(r'^dh_cleanup_removed_total\{kind="(\w+)"\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def leftovers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A data directory as a killed server leaves it: an avatar preparation cut off, and
    folders of a job and an avatar whose rows were never written."""
    data_dir = tmp_path_factory.mktemp("killed-server-data")
    planted = [
        data_dir / "avatars" / f".{uuid.uuid4().hex[:32]}.1234abcd.partial",
        data_dir / "service" / "jobs" / uuid.uuid4().hex,
        data_dir / "service" / "avatar-sources" / uuid.uuid4().hex[:32],
    ]
    for folder in planted:
        folder.mkdir(parents=True)
        (folder / "leftover.bin").write_bytes(b"\0" * 1024)
    return data_dir, planted


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory, leftovers: tuple[Path, list[Path]]) -> ApiServer:
    data_dir, _ = leftovers
    return server_factory(data_dir=data_dir, result_ttl=RESULT_TTL, retention_sweep_s=SWEEP_S)


def _removed(server: ApiServer) -> dict[str, float]:
    with server.client() as client:
        text = client.get("/metrics").text
    return {kind: float(count) for kind, count in REMOVED.findall(text)}


def test_leftovers_of_a_killed_process_are_removed_at_start_up(
    server: ApiServer, leftovers: tuple[Path, list[Path]]
) -> None:
    _, planted = leftovers
    assert [folder for folder in planted if folder.exists()] == []
    removed = _removed(server)
    assert removed["partial_avatar"] == 1
    assert removed["orphan"] == 2
    assert "removed 1 interrupted avatar preparations" in server.log(200)


def test_a_finished_job_and_its_result_expire_after_the_ttl(
    server: ApiServer, avatar_video: Path, tiny_speech: Path
) -> None:
    avatar_id = register_avatar(server, avatar_video)
    with server.client() as client:
        reply = submit_job(client, tiny_speech, avatar_id=avatar_id)
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        assert wait_for_job(client, job_id)["state"] == "succeeded"
        job_dir = server.data_dir / "service" / "jobs" / job_id
        assert (job_dir / "result.mp4").is_file()

        poll_until(
            lambda: client.get(f"/v1/jobs/{job_id}").status_code,
            lambda status: status == 404,
            EXPIRY_DEADLINE_S,
            f"job {job_id} expired",
        )

    assert not job_dir.exists()
    removed = _removed(server)
    assert removed["job"] >= 1 and removed["result"] >= 1
