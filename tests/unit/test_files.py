"""Files appear whole or not at all; blocking calls run in the pool, typed."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.blocking import run_blocking
from orchestrator.files import Partial, atomic_write, is_partial, partial_path


def test_a_written_file_replaces_its_target_and_leaves_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "result.mp4"
    target.write_bytes(b"old")
    with atomic_write(target) as partial:
        assert partial.parent == tmp_path and is_partial(partial)
        partial.write_bytes(b"new")
        assert target.read_bytes() == b"old", "the target changes only at the end"
    assert target.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [target]


def test_a_failed_write_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "result.mp4"
    target.write_bytes(b"old")

    def write_half() -> None:
        with atomic_write(target) as partial:
            partial.write_bytes(b"half")
            raise RuntimeError("encoder died")

    with pytest.raises(RuntimeError, match="encoder died"):
        write_half()
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_a_write_that_never_created_its_partial_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_write(tmp_path / "result.mp4"):
        pass  # nothing written: the rename has nothing to move
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_committed_whole_but_never_over_a_full_one(tmp_path: Path) -> None:
    first = Partial(tmp_path / "cache")
    first.path.mkdir()
    (first.path / "boxes.npy").write_bytes(b"boxes")
    first.commit()
    assert (tmp_path / "cache" / "boxes.npy").read_bytes() == b"boxes"

    second = Partial(tmp_path / "cache")
    second.path.mkdir()
    (second.path / "boxes.npy").write_bytes(b"other")
    with pytest.raises(OSError, match=r"not empty|exists"):
        second.commit()
    second.discard()
    assert (tmp_path / "cache" / "boxes.npy").read_bytes() == b"boxes"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_partial_names_are_hidden_unique_and_recognised(tmp_path: Path) -> None:
    target = tmp_path / "0123abcd"
    names = {partial_path(target).name for _ in range(20)}
    assert len(names) == 20
    assert all(name.startswith(".0123abcd.") and is_partial(Path(name)) for name in names)
    assert not is_partial(target)


async def test_a_blocking_call_runs_in_the_pool_with_its_arguments() -> None:
    def call(a: int, b: int, *, scale: int) -> tuple[int, str]:
        return (a - b) * scale, threading.current_thread().name

    with ThreadPoolExecutor(1, thread_name_prefix="dh-test") as pool:
        result, thread = await run_blocking(pool, call, 5, 2, scale=10)
    assert result == 30
    assert thread.startswith("dh-test")
