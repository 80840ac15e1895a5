"""`dh serve` does not open the service to the network without a key: on a non-loopback
address with no DH_API_KEY it exits 2 with one line, before anything starts (no Triton is
needed to see it). A key, a loopback address or DH_TRUSTED_NETWORK=true get past the
check; here the server then stops at the Triton check, on a port where nothing listens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

REFUSAL = "refusing to listen on"
# Where no Triton listens: `dh serve` past the exposure check stops at the Triton check.
NO_TRITON = "127.0.0.1:1"
RUN_TIMEOUT_S = 60


def _serve(
    tmp_path: Path, verb: str = "serve", **settings: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DH_")}
    env.update(
        DH_DATA_DIR=str(tmp_path / "data"),
        DH_PORT="0",
        DH_TRITON_URL=NO_TRITON,
        DH_TRITON_READY_TIMEOUT_S="1",
        **{f"DH_{name.upper()}": value for name, value in settings.items()},
    )
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", verb],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "api.example.com"])
def test_a_public_address_without_a_key_is_refused_with_one_line(tmp_path: Path, host: str) -> None:
    done = _serve(tmp_path, host=host)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and REFUSAL in lines[0], done.stderr
    assert "DH_API_KEY" in lines[0] and "DH_TRUSTED_NETWORK" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before anything started


@pytest.mark.parametrize(
    "settings",
    [
        {"host": "0.0.0.0", "trusted_network": "true"},
        {"host": "0.0.0.0", "api_key": "a-key"},
        {"host": "127.0.0.1"},
        {"host": "localhost"},
        {"host": "::1"},
    ],
)
def test_a_key_a_loopback_address_or_a_trusted_network_get_past_the_check(
    tmp_path: Path, settings: dict[str, str]
) -> None:
    done = _serve(tmp_path, **settings)
    assert REFUSAL not in done.stderr
    assert "Triton" in done.stderr and done.returncode == 1, done.stderr


def test_dh_api_is_refused_on_a_public_address_without_a_key_like_dh_serve(
    tmp_path: Path,
) -> None:
    done = _serve(tmp_path, verb="api", host="0.0.0.0")
    assert done.returncode == 2, done.stderr
    assert REFUSAL in done.stderr and done.stderr.startswith("dh: api: "), done.stderr


def test_dh_worker_needs_no_key_it_answers_only_probes_and_metrics(tmp_path: Path) -> None:
    # Past the exposure check it stops where a renderer must: Triton is not there.
    done = _serve(tmp_path, verb="worker", host="0.0.0.0")
    assert REFUSAL not in done.stderr
    assert "Triton" in done.stderr and done.returncode == 1, done.stderr
