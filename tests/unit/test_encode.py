from __future__ import annotations

import logging

import pytest

from orchestrator.pipeline.encode import X264, pick_encoder


def test_missing_gpu_encoder_falls_back_to_x264_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert pick_encoder("h264_nvenc") == X264
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "h264_nvenc" in warnings[0].getMessage()


def test_x264_is_taken_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert pick_encoder(X264) == X264
    assert not caplog.records
