"""The infer stage's batching: a job starts with small requests so its first frame is soon."""

from __future__ import annotations

from itertools import islice

import numpy as np

from orchestrator.pipeline.infer import FIRST_BATCH, batch_sizes, restore_input


def test_a_job_starts_small_and_doubles_up_to_the_configured_batch() -> None:
    assert FIRST_BATCH == 4
    assert list(islice(batch_sizes(32), 6)) == [4, 8, 16, 32, 32, 32]


def test_a_configured_batch_below_the_first_is_used_from_the_start() -> None:
    assert list(islice(batch_sizes(2), 3)) == [2, 2, 2]
    assert list(islice(batch_sizes(12), 4)) == [4, 8, 12, 12]


def test_restorer_input_is_the_prediction_resized_and_kept_in_range() -> None:
    pred = np.zeros((2, 3, 96, 96), np.float32)
    pred[0, 2] = 1.0  # the first face red (BGR), the second black
    faces = restore_input(pred, 256)
    assert faces.shape == (2, 3, 256, 256) and faces.dtype == np.float32
    assert faces.min() >= 0.0 and faces.max() <= 1.0
    np.testing.assert_allclose(faces[0, 2], 1.0)
    np.testing.assert_allclose(faces[0, :2], 0.0)
    np.testing.assert_allclose(faces[1], 0.0)
    same = restore_input(pred, 96)
    np.testing.assert_array_equal(same, pred)
