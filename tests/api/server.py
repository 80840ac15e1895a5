"""A real `dh serve` (or `dh api`, `dh worker`: `role`) in a subprocess on a free
127.0.0.1 port, and HTTP helpers for tests.

The server gets its settings only through DH_* variables built here (the parent's DH_*
are dropped), dies with the test process (parent-death signal), and is stopped by its
own PID: SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
START_DEADLINE_S = 60.0
STOP_GRACE_S = 15.0
POLL_S = 0.05  # polling interval inside deadlines; short, jobs here take seconds
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _env_value(value: object) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class ApiServer:
    data_dir: Path
    settings: dict[str, object]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    role: str = "serve"  # the `dh` command: serve, api or worker

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DH_")}
        env.update({"DH_HOST": "127.0.0.1", "DH_PORT": str(self.port)})
        env["DH_WORKER_PORT"] = str(self.port)  # the probe server of `dh worker`
        env["PYTHONFAULTHANDLER"] = "1"  # a crash in native code leaves Python stacks
        env["DH_DATA_DIR"] = str(self.data_dir)
        env.update({f"DH_{k.upper()}": _env_value(v) for k, v in self.settings.items()})
        return env

    def start(self) -> ApiServer:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", self.role],
            cwd=REPO,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + START_DEADLINE_S
        with httpx.Client(base_url=self.base_url, timeout=2.0) as probe:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"dh {self.role} exited ({self.process.returncode}):\n{self.log()}"
                    )
                try:
                    if probe.get("/healthz").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"dh {self.role} not up in {START_DEADLINE_S} s:\n{self.log()}"
                    )
                time.sleep(POLL_S)

    def stop(self) -> int | None:
        """SIGTERM, a bounded wait, then SIGKILL; returns the exit status (uvicorn re-raises
        SIGTERM after a graceful shutdown, so that one reads -SIGTERM)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def stop_gracefully(self) -> bool:
        """Stops the server; True if it shut down cleanly (lifespan ran to the end)."""
        status = self.stop()
        return status in (0, -signal.SIGTERM) and "Application shutdown complete" in self.log()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_GRACE_S)

    def log(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(self, api_key: str | None = None, timeout: float = 30.0) -> httpx.Client:
        key = api_key if api_key is not None else self.settings.get("api_key")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def threads(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no Threads line in /proc status")

    def thread_names(self) -> dict[str, int]:
        """How many threads of each kernel name (Python's are all "python")."""
        names: dict[str, int] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            name = (task / "comm").read_text().strip()
            names[name] = names.get(name, 0) + 1
        return names

    def children(self) -> list[int]:
        found: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            found.extend(int(pid) for pid in (task / "children").read_text().split())
        return found


def poll_until(fetch: Any, done: Any, deadline_s: float, what: str) -> Any:
    """fetch() until done(value); fails with the last value once the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {deadline_s} s; last: {value}")
        time.sleep(POLL_S)


def wait_for_job(
    client: httpx.Client, job_id: str, deadline_s: float = 60.0, states: tuple[str, ...] = TERMINAL
) -> dict[str, Any]:
    job: dict[str, Any] = poll_until(
        lambda: client.get(f"/v1/jobs/{job_id}").json(),
        lambda job: job["state"] in states,
        deadline_s,
        f"job {job_id} in {states}",
    )
    return job


def wait_until_rendering(
    client: httpx.Client, job_id: str, deadline_s: float = 60.0
) -> dict[str, Any]:
    """Until the job is running with frames coming out (past decode and avatar)."""
    job: dict[str, Any] = poll_until(
        lambda: client.get(f"/v1/jobs/{job_id}").json(),
        lambda job: (
            job["state"] != "queued"
            and (job["state"] != "running" or job["progress"]["frames_done"] > 0)
        ),
        deadline_s,
        f"job {job_id} rendering",
    )
    return job


def submit_job(
    client: httpx.Client,
    audio: Path,
    *,
    avatar_id: str | None = None,
    video: Path | None = None,
    **fields: str,
) -> httpx.Response:
    files: dict[str, Any] = {"audio": (audio.name, audio.read_bytes())}
    if video is not None:
        files["video"] = (video.name, video.read_bytes())
    data = dict(fields)
    if avatar_id is not None:
        data["avatar_id"] = avatar_id
    return client.post("/v1/jobs", files=files, data=data)
