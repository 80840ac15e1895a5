"""The servers benchmarks.live measures: `dh serve` of this checkout and the naive server,
each a child process on a free loopback port that dies with this one; their PIDs, for the
CPU they spend."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from benchmarks.common import REPO
from orchestrator.pipeline.avatar_cache import Avatar

# prctl(2): the signal a child gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1

# Deadlines of a session's start and an avatar's preparation, and their poll.
START_DEADLINE_S, READY_DEADLINE_S, POLL_S = 60.0, 300.0, 0.1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@contextlib.contextmanager
def serve(settings: dict[str, str], log: Path) -> Iterator[str]:
    """`dh serve` of this checkout on a free loopback port; yields its base URL."""
    port = _free_port()
    env = {"DH_HOST": "127.0.0.1", "DH_PORT": str(port), **settings}
    with _server(["orchestrator.cli", "serve"], env, port, log) as base:
        yield base


@contextlib.contextmanager
def serve_naive(onnx_file: Path, avatar: Avatar, mode: str, log: Path) -> Iterator[str]:
    """benchmarks.naive_live (the architecture replaced) on a free loopback port."""
    port = _free_port()
    args = ["benchmarks.naive_live", str(port), str(onnx_file), str(avatar.directory), mode]
    with _server(args, {}, port, log) as base:
        yield base


# The process behind each base URL a server started here answers on (for its CPU time).
SERVER_PIDS: dict[str, int] = {}


@contextlib.contextmanager
def _server(module: list[str], settings: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """`python -m <module...>` listening on `port` once /healthz answers; yields its base URL.
    Stopped by its own PID: SIGTERM, a bounded wait, then SIGKILL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DH_")}
    env.update(settings)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *module],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{module[0]} exited:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{module[0]} not up in {START_DEADLINE_S} s")
            time.sleep(POLL_S)
        SERVER_PIDS[base] = process.pid
        yield base
    finally:
        SERVER_PIDS.pop(base, None)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def register_avatar(base: str, video: Path, api_key: str = "") -> str:
    """Uploads `video` as an avatar and waits until it is prepared; returns its id."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base, headers=headers, timeout=60.0) as client:
        reply = client.post("/v1/avatars", files={"video": (video.name, video.read_bytes())})
        reply.raise_for_status()
        avatar_id = str(reply.json()["id"])
        deadline = time.monotonic() + READY_DEADLINE_S
        while (state := client.get(f"/v1/avatars/{avatar_id}").json()["state"]) == "preparing":
            if time.monotonic() > deadline:
                raise SystemExit("the avatar was not prepared in time")
            time.sleep(POLL_S)
        if state != "ready":
            raise SystemExit(f"the avatar could not be prepared: {state}")
    return avatar_id


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> set[int]:
    """Every process below `root` (from /proc; processes that end meanwhile are skipped)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def model_side_pids() -> list[int]:
    """The processes this run started that are neither a server of `_server` nor below one:
    the local Triton and its backend stubs (nothing, with --triton-url)."""
    servers = set(SERVER_PIDS.values())
    below = set().union(*(descendants(pid) for pid in servers)) if servers else set()
    return sorted(descendants(os.getpid()) - servers - below)
