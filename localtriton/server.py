"""Starts and stops one tritonserver process; nothing else.

Process hygiene is the point of this module: the server gets a parent-death signal so it
never outlives its launcher, runs in its own process group so that its Python-backend
stubs are stopped with it, gets an environment built here rather than inherited, and is
stopped by its own PID (SIGINT, a bounded wait, then SIGKILL to its group).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from localtriton.environment import TritonInstall
from modelkit.errors import ModelBuildError

LOOPBACK = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
STOP_GRACE_S = 30.0
READY_POLL_S = 0.25


class LocalTritonError(ModelBuildError):
    """The local server could not start, or died; the message says why."""


@dataclass(frozen=True)
class Endpoints:
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: a port a killed server left in TIME_WAIT can be
        # listened on again at once, while a port someone listens on is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LocalTritonError(
                    f"port {port} on {LOOPBACK} ({what}) is in use; choose another or stop "
                    "what holds it"
                ) from None
            raise


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. The signal fires when the *thread* that
    # forked exits, so start the server from a thread that lives as long as the launcher.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonProcess:
    def __init__(
        self,
        install: TritonInstall,
        repository: Path,
        log_path: Path,
        endpoints: Endpoints | None = None,
        ort_threads: int | None = None,
    ) -> None:
        self.install = install
        self.repository = repository
        self.log_path = log_path
        self.endpoints = endpoints or Endpoints(free_port(), free_port(), free_port())
        self.ort_threads = ort_threads
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _environment(self) -> dict[str, str]:
        # The Python-backend stub finds its packages through the first `python3` on PATH
        # and ignores PYTHONPATH, so the Triton venv's bin/ comes first.
        env = {
            "PATH": f"{self.install.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "LD_LIBRARY_PATH": str(self.install.libraries),
            "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8",
            "VIRTUAL_ENV": str(self.install.venv),
        }
        if self.ort_threads:
            env["DH_LOCAL_TRITON_ORT_THREADS"] = str(self.ort_threads)
        return env

    def command(self) -> list[str]:
        e = self.endpoints
        return [
            str(self.install.server),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.install.backends}",
            f"--http-address={LOOPBACK}",
            f"--http-port={e.http_port}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={e.grpc_port}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={e.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            "--log-verbose=0",
        ]

    def start(self) -> None:
        e = self.endpoints
        for port, what in (
            (e.http_port, "HTTP"),
            (e.grpc_port, "gRPC"),
            (e.metrics_port, "metrics"),
        ):
            check_port_free(port, what)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                cwd=self.repository,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"{self.endpoints.http_url}{path}", timeout=2) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def wait_ready(self, models: list[str], deadline_s: float) -> None:
        """Returns once the server and every model answer READY; raises with the log if not."""
        assert self._proc is not None, "start() first"
        deadline = time.monotonic() + deadline_s
        pending = list(models)
        while True:
            if self._proc.poll() is not None:
                raise LocalTritonError(
                    f"tritonserver exited with status {self._proc.returncode} while starting; "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            if self._get("/v2/health/ready") == 200:
                pending = [m for m in pending if self._get(f"/v2/models/{m}/ready") != 200]
                if not pending:
                    return
            if time.monotonic() > deadline:
                raise LocalTritonError(
                    f"tritonserver not ready after {deadline_s:.0f} s (waiting for "
                    f"{', '.join(pending) or 'the server'}); its log ends with:\n{self.log_tail()}"
                )
            time.sleep(READY_POLL_S)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """Stops the server and its stubs; returns the server's exit status."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # A stub that outlived the server still holds the server's process group (whose id
        # cannot be reused while any member lives), so this reaches only our own processes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode
