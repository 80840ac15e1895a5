"""`dh` as a user runs it: exit status 0, 2 for bad input, 1 for faults, one-line reasons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localtriton.server import free_port
from synthmedia.audio import voiced_speech, write_audio, write_empty
from synthmedia.avatar import write_avatar_video
from synthmedia.two_faces import write_two_face_video
from tests.conftest import REPO, TritonAddress

DH = [sys.executable, "-m", "orchestrator.cli"]


def _dh(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DH, *args],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def dh_env(triton: TritonAddress, tmp_path: Path) -> dict[str, str]:
    return {"DH_TRITON_URL": triton.grpc_url, "DH_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, Path]:
    avatar, audio = tmp_path / "avatar.mp4", tmp_path / "speech.wav"
    write_avatar_video(avatar, seconds=0.4, size=(160, 160))
    write_audio(audio, voiced_speech(0.5), 16000)
    return avatar, audio


def test_generate_writes_the_video_and_a_stage_summary(
    dh_env: dict[str, str], media: tuple[Path, Path], tmp_path: Path
) -> None:
    avatar, audio = media
    out = tmp_path / "out.mp4"
    done = _dh(["generate", "--avatar", str(avatar), "--audio", str(audio), "-o", str(out)], dh_env)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0
    assert "13/13 frames" in done.stderr
    assert "time per stage (busy): decode" in done.stdout


def test_bad_input_exits_2_with_one_line_naming_the_stage(
    dh_env: dict[str, str], media: tuple[Path, Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.mp4"
    write_empty(empty)
    args = [
        "generate",
        "--avatar",
        str(empty),
        "--audio",
        str(media[1]),
        "-o",
        str(tmp_path / "o.mp4"),
    ]
    done = _dh(args, dh_env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "dh: decode: avatar empty.mp4: the file is empty"


def test_unreachable_triton_exits_1_within_its_deadline(
    media: tuple[Path, Path], tmp_path: Path
) -> None:
    env = {"DH_TRITON_URL": f"127.0.0.1:{free_port()}", "DH_TRITON_READY_TIMEOUT_S": "1"}
    args = [
        "generate",
        "--avatar",
        str(media[0]),
        "--audio",
        str(media[1]),
        "-o",
        str(tmp_path / "o.mp4"),
    ]
    done = _dh(args, env)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("dh: startup: readiness: Triton at 127.0.0.1:")
    assert "unavailable" in line


def test_a_missing_avatar_is_bad_input_named_as_the_user_gave_it(
    dh_env: dict[str, str], media: tuple[Path, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "missing.mp4"
    args = ["generate", "--avatar", str(missing), "--audio", str(media[1]), "-o", "o.mp4"]
    done = _dh(args, dh_env)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line == "dh: decode: avatar missing.mp4: no such file"


def test_avatar_prepare_prints_the_face_summary(
    dh_env: dict[str, str], media: tuple[Path, Path]
) -> None:
    done = _dh(["avatar", "prepare", str(media[0])], dh_env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["frames"] == 10
    assert summary["frames_with_face"] == 10
    assert Path(summary["directory"]).is_dir()


def test_serve_on_a_host_without_the_required_gpu_fails_with_one_line(
    dh_env: dict[str, str],
) -> None:
    env = {**dh_env, "DH_REQUIRE_GPU": "true", "DH_PORT": str(free_port())}
    done = _dh(["serve"], env)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("dh: startup: ")
    assert "Traceback" not in done.stderr


def test_a_bad_setting_exits_2_naming_the_variable(tmp_path: Path) -> None:
    done = _dh(["probe"], {"DH_MAX_BACKLOG": "-1", "DH_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line == "dh: settings: DH_MAX_BACKLOG: Input should be greater than or equal to 0"


def test_a_heartbeat_slower_than_the_lease_is_refused_in_one_line(tmp_path: Path) -> None:
    env = {"DH_LEASE_S": "5", "DH_LEASE_HEARTBEAT_S": "6", "DH_DATA_DIR": str(tmp_path)}
    done = _dh(["serve"], env)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("dh: settings: DH_LEASE_HEARTBEAT_S (6) must be below DH_LEASE_S (5)")


def test_a_face_naming_none_exits_2_with_the_faces_there_are(
    dh_env: dict[str, str], media: tuple[Path, Path], tmp_path: Path
) -> None:
    two = tmp_path / "two.mp4"
    write_two_face_video(two, seconds=0.4, half_size=(160, 160))
    base = ["generate", "--avatar", str(two), "--audio", str(media[1]), "-o"]

    chosen = _dh([*base, str(tmp_path / "right.mp4"), "--face", "1"], dh_env)
    missing = _dh([*base, str(tmp_path / "none.mp4"), "--face", "2"], dh_env)
    malformed = _dh([*base, str(tmp_path / "bad.mp4"), "--face", "left"], dh_env)

    assert chosen.returncode == 0, chosen.stderr
    assert "0 frames without a face" in chosen.stdout
    assert missing.returncode == 2
    reason = missing.stderr.strip().splitlines()[-1]
    assert reason.startswith("dh: avatar: face 2 names no face of the avatar: face 2 is not there")
    assert "frame 0 has 2 faces (0: (" in reason
    assert not (tmp_path / "none.mp4").exists()
    assert malformed.returncode == 2
    assert "face must be 'largest', a face index K >= 0 or a point X,Y" in malformed.stderr
