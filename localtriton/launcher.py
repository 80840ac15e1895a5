"""One call from a model repository to a running, ready local Triton, and back."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from localtriton.environment import ensure_environment
from localtriton.render import render_cpu_repository
from localtriton.server import Endpoints, LocalTritonError, TritonProcess
from modelkit.repository import model_dirs, read_config

STATE_FILE = "state.json"
LOCK_FILE = "lock"
# Loading two onnxruntime sessions with warm-up in Python stubs takes ~10-40 s on 2 cores.
READY_DEADLINE_S = 300.0


@dataclass(frozen=True)
class Running:
    pid: int
    endpoints: Endpoints
    models: list[str]

    def to_json(self) -> str:
        e = self.endpoints
        return json.dumps(
            {
                "pid": self.pid,
                "http_port": e.http_port,
                "grpc_port": e.grpc_port,
                "metrics_port": e.metrics_port,
                "models": self.models,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Running:
        raw = json.loads(text)
        endpoints = Endpoints(raw["http_port"], raw["grpc_port"], raw["metrics_port"])
        return cls(raw["pid"], endpoints, raw["models"])


class AlreadyRunning(LocalTritonError):
    def __init__(self, running: Running | None, workdir: Path) -> None:
        self.running = running
        if running is None:
            message = f"a local Triton is already starting in {workdir}"
        else:
            message = (
                f"a local Triton is already running (pid {running.pid}) at "
                f"grpc {running.endpoints.grpc_url}, http {running.endpoints.http_url}; "
                f"stop it with Ctrl-C in its terminal or `kill {running.pid}`"
            )
        super().__init__(message)


@contextmanager
def _exclusive(workdir: Path) -> Iterator[None]:
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            state = workdir / STATE_FILE
            running = Running.from_json(state.read_text()) if state.exists() else None
            raise AlreadyRunning(running, workdir) from None
        yield
    finally:
        os.close(fd)


def default_ort_threads(rendered: Path) -> int:
    """onnxruntime threads per model instance: the cores shared among the instances of the
    busiest model. By default every instance uses every core: with two instances on two
    cores a pipelined Wav2Lip-96 job ran at 24.6 frames/s, against 29.6 with one thread
    each (benchmarks.throughput)."""
    instances = max(
        sum(group.count for group in read_config(model_dir).instance_group) or 1
        for model_dir in model_dirs(rendered)
    )
    return max(1, (os.cpu_count() or 1) // instances)


@contextmanager
def local_triton(
    repository: Path,
    workdir: Path,
    venv_dir: Path,
    *,
    endpoints: Endpoints | None = None,
    cpu_instances: int | None = None,
    ort_threads: int | None = None,
    log: Callable[[str], None] = print,
) -> Iterator[Running]:
    """A ready local Triton serving the CPU copy of `repository`; stopped on exit.

    `workdir` is owned by one server at a time: a second start finds the lock and says
    who holds it instead of failing on a port.
    """
    repository, workdir = repository.resolve(), workdir.resolve()
    with _exclusive(workdir):
        install = ensure_environment(venv_dir, log=log)
        rendered = workdir / "model_repository"
        models = render_cpu_repository(repository, rendered, cpu_instances=cpu_instances)
        threads = ort_threads or default_ort_threads(rendered)
        process = TritonProcess(install, rendered, workdir / "tritonserver.log", endpoints, threads)
        state = workdir / STATE_FILE
        try:
            process.start()
            log(f"local Triton: starting (pid {process.pid}, log {process.log_path})")
            process.wait_ready(models, READY_DEADLINE_S)
            assert process.pid is not None
            running = Running(process.pid, process.endpoints, models)
            state.write_text(running.to_json())
            yield running
        finally:
            state.unlink(missing_ok=True)
            process.stop()
