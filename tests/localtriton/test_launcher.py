"""`triton-local serve`: one command to a ready server, and nothing left when it stops."""

from __future__ import annotations

import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localtriton.server import free_port
from tests.conftest import REPO, TRITON_VENV

START_DEADLINE_S = 300
STOP_DEADLINE_S = 60


def _processes_in_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
            except ProcessLookupError:
                continue
    return found


def _wait_gone(pid: int, deadline_s: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], deadline_s)
        return bool(ready)
    finally:
        os.close(fd)


class Launcher:
    """`python -m localtriton serve` as a user runs it, read line by line."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "localtriton",
                "--workdir",
                str(workdir),
                "--venv",
                str(TRITON_VENV),
                "--cpu-instances",
                "1",
                "serve",
                *extra,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        # A reader thread, because select() on a buffered pipe misses lines already read
        # into Python's buffer.
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put("")

    def read_until(self, needle: str, deadline_s: float) -> str:
        deadline = time.monotonic() + deadline_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if not line:
                break
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} in launcher output:\n{''.join(self.lines)}")

    def server_pid(self) -> int:
        line = self.read_until("local Triton ready (pid", START_DEADLINE_S)
        return int(line.split("(pid ")[1].split(")")[0])


@pytest.fixture
def launcher(built_models: Path, tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path / "work")
    yield started
    if started.proc.poll() is None:
        started.proc.kill()
        started.proc.wait()


def test_sigterm_stops_server_and_stubs_and_a_second_start_says_so(
    launcher: Launcher, tmp_path: Path
) -> None:
    server = launcher.server_pid()
    urls = launcher.read_until("metrics", 5)
    assert "http://127.0.0.1:" in urls
    stubs = [pid for pid in _processes_in_group(server) if pid != server]
    assert stubs, "the Python-backend stubs run in the server's process group"

    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "localtriton",
            "--workdir",
            str(tmp_path / "work"),
            "--venv",
            str(TRITON_VENV),
            "serve",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert second.returncode == 1
    assert f"already running (pid {server})" in second.stderr

    launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.proc.wait(timeout=STOP_DEADLINE_S) == 0
    assert _processes_in_group(server) == [], "no server or stub outlives the launcher"


def test_killed_launcher_takes_the_server_with_it(launcher: Launcher) -> None:
    server = launcher.server_pid()
    launcher.proc.kill()
    launcher.proc.wait()
    assert _wait_gone(server, STOP_DEADLINE_S), "parent-death signal stops the server"
    for pid in _processes_in_group(server):
        assert _wait_gone(pid, STOP_DEADLINE_S), f"stub {pid} outlived the server"


def test_port_in_use_is_one_clear_line(built_models: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "localtriton",
                "--workdir",
                str(tmp_path / "w"),
                "--venv",
                str(TRITON_VENV),
                "serve",
                "--grpc-port",
                str(port),
                "--http-port",
                str(free_port()),
                "--metrics-port",
                str(free_port()),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"triton-local: port {port} on 127.0.0.1 (gRPC) is in use; "
        "choose another or stop what holds it"
    )
