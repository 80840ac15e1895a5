"""A local Triton of a test's own, to kill and bring back: the session's Triton is shared
by every test and must stay up."""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack
from pathlib import Path

from localtriton.launcher import Running, local_triton
from localtriton.server import Endpoints


class KillableTriton:
    """`start()` serves the repository on free ports; `kill()` SIGKILLs the server and its
    Python-backend stubs (a crash, not a shutdown); `start()` again comes back on the
    same ports, as a restarted container would."""

    def __init__(self, repository: Path, workdir: Path, venv: Path) -> None:
        self.repository = repository
        self.workdir = workdir
        self.venv = venv
        self.endpoints: Endpoints | None = None
        self._running: Running | None = None
        self._stack: ExitStack | None = None
        self.starts = 0

    @property
    def grpc_url(self) -> str:
        assert self.endpoints is not None, "start() first"
        return self.endpoints.grpc_url

    @property
    def metrics_url(self) -> str:
        assert self.endpoints is not None, "start() first"
        return self.endpoints.metrics_url

    def start(self) -> KillableTriton:
        assert self._stack is None, "already running"
        self.starts += 1
        stack = ExitStack()
        self._running = stack.enter_context(
            local_triton(
                self.repository,
                self.workdir / f"run-{self.starts}",
                self.venv,
                endpoints=self.endpoints,
                log=lambda _: None,
            )
        )
        self.endpoints = self._running.endpoints
        self._stack = stack
        return self

    def freeze(self) -> None:
        """SIGSTOP to the server: its ports stay open, nothing answers. The server only: a
        production Triton runs the ONNX models inside it (onnxruntime backend), and the
        Python-backend stubs of this local one, stopped too, come back unhealthy (Triton
        then fails their requests with INTERNAL "Stub process ... is not healthy")."""
        assert self._running is not None, "not running"
        os.kill(self._running.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._running is not None, "not running"
        os.kill(self._running.pid, signal.SIGCONT)

    def kill(self) -> None:
        assert self._running is not None and self._stack is not None, "not running"
        # The server leads its own process group, stubs included (localtriton.server).
        os.killpg(self._running.pid, signal.SIGKILL)
        self._stack.close()  # reaps it; the launcher tolerates a server already dead
        self._stack, self._running = None, None

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack, self._running = None, None
