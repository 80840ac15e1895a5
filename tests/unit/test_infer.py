"""The infer stage's batching: a job starts with small requests so its first frame is soon."""

from __future__ import annotations

from itertools import islice

from orchestrator.pipeline.infer import FIRST_BATCH, batch_sizes


def test_a_job_starts_small_and_doubles_up_to_the_configured_batch() -> None:
    assert FIRST_BATCH == 4
    assert list(islice(batch_sizes(32), 6)) == [4, 8, 16, 32, 32, 32]


def test_a_configured_batch_below_the_first_is_used_from_the_start() -> None:
    assert list(islice(batch_sizes(2), 3)) == [2, 2, 2]
    assert list(islice(batch_sizes(12), 4)) == [4, 8, 12, 12]
