"""Errors keep their meaning on the way out: type, stage and a message without paths."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.errors import (
    BadInput,
    PipelineError,
    TritonUnavailable,
    describe,
    unwrap,
)
from orchestrator.pipeline.stages import guarded


async def _stage_with_its_own_task_group(error: BaseException) -> None:
    async def worker() -> None:
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as group:
        group.create_task(worker())
        raise error


async def test_bad_input_inside_a_stage_task_group_stays_bad_input() -> None:
    with pytest.raises(BadInput) as caught:
        await guarded("avatar", _stage_with_its_own_task_group(BadInput("decode", "no frames")))
    assert caught.value.as_record() == {"stage": "decode", "message": "no frames"}


async def test_an_untyped_error_inside_a_task_group_is_reported_by_its_cause() -> None:
    with pytest.raises(PipelineError) as caught:
        await guarded("avatar", _stage_with_its_own_task_group(KeyError("frame 7")))
    assert caught.value.stage == "avatar"
    assert caught.value.message == "KeyError: 'frame 7'"
    assert "TaskGroup" not in str(caught.value)


def test_unwrap_prefers_the_typed_root_cause_over_its_consequences() -> None:
    cause = TritonUnavailable("face_detector", "Triton at h:1 unavailable for 1.0 s", "avatar")
    group = ExceptionGroup("outer", [RuntimeError("queue closed"), ExceptionGroup("in", [cause])])
    assert unwrap(group, "pipeline") is cause


def test_an_os_error_is_described_by_the_file_name_only() -> None:
    error = FileNotFoundError(2, "No such file or directory", "/srv/dh/data/service/jobs/ab/x.wav")
    assert describe(error) == "No such file or directory (x.wav)"


def test_absolute_paths_in_a_message_shrink_to_their_name_but_urls_stay() -> None:
    error = RuntimeError("cannot read '/var/lib/dh/staging/3f2a.mp4' from http://cdn.example/a/b")
    assert describe(error) == "RuntimeError: cannot read '3f2a.mp4' from http://cdn.example/a/b"


def test_an_empty_error_still_says_what_it_was() -> None:
    assert describe(TimeoutError()) == "TimeoutError"
    assert PipelineError("encode", "  ").message == "PipelineError with no detail"
