"""After many jobs the server has no child process and no thread more than it started with."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import ServerFactory, register_avatar
from tests.api.server import poll_until, submit_job, wait_for_job

JOBS = 20
# Idle worker threads of the ASGI stack (anyio's pool) retire after 10 s of idleness.
SETTLE_DEADLINE_S = 30.0


def test_twenty_jobs_leave_no_child_process_and_no_extra_thread(
    server_factory: ServerFactory, avatar_video: Path, tiny_speech: Path
) -> None:
    # One I/O thread: a bounded pool grows lazily up to its size, which would make the
    # baseline depend on timing; its size is fixed, so it cannot leak either way.
    server = server_factory(max_running_jobs=2, max_backlog=JOBS, io_threads=1)
    avatar_id = register_avatar(server, avatar_video)
    with server.client() as client:
        # One job first, so that lazily created long-lived threads (gRPC, store) exist.
        wait_for_job(client, submit_job(client, tiny_speech, avatar_id=avatar_id).json()["id"])
        baseline, baseline_names = server.threads(), server.thread_names()

        submitted = [
            submit_job(client, tiny_speech, avatar_id=avatar_id).json()["id"] for _ in range(JOBS)
        ]
        states = [wait_for_job(client, job_id)["state"] for job_id in submitted]

    assert states == ["succeeded"] * JOBS
    assert server.children() == []
    settled = poll_until(
        server.thread_names,
        lambda names: sum(names.values()) <= baseline,
        SETTLE_DEADLINE_S,
        f"thread count back to {baseline} {baseline_names}",
    )
    assert sum(settled.values()) <= baseline
    assert server.stop_gracefully()
