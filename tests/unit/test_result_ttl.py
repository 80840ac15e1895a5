"""DH_RESULT_TTL: seconds, a short duration (30m, 12h, 7d) or ISO-8601, never zero."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from orchestrator.settings import Settings


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("604800", timedelta(days=7)),
        ("90", timedelta(seconds=90)),
        ("2.5s", timedelta(seconds=2.5)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("7D", timedelta(days=7)),
        ("P7D", timedelta(days=7)),
        ("PT12H", timedelta(hours=12)),
    ],
)
def test_the_ttl_reads_seconds_short_durations_and_iso_8601(
    monkeypatch: pytest.MonkeyPatch, written: str, meant: timedelta
) -> None:
    monkeypatch.setenv("DH_RESULT_TTL", written)
    assert Settings().result_ttl == meant


def test_the_default_ttl_is_a_week() -> None:
    assert Settings().result_ttl == timedelta(days=7)


@pytest.mark.parametrize("written", ["0", "0s", "-1d", "7 weeks", "soon"])
def test_a_ttl_that_is_not_a_positive_duration_is_refused(
    monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    monkeypatch.setenv("DH_RESULT_TTL", written)
    with pytest.raises(ValidationError):
        Settings()
