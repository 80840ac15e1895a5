"""The quick lane's rule (tests/conftest.py): slow is anything that starts a server or a
process; the unit tests stay quick."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests.conftest import REPO, _is_slow


def _item(place: str, fixtures: tuple[str, ...] = (), **params: Any) -> Any:
    callspec = SimpleNamespace(params=params) if params else None
    return SimpleNamespace(path=REPO / place, fixturenames=fixtures, callspec=callspec)


def test_a_unit_test_is_quick() -> None:
    assert not _is_slow(_item("tests/unit/test_mel.py", ("tmp_path",)))


def test_a_unit_test_that_asks_for_a_real_triton_is_slow() -> None:
    assert _is_slow(_item("tests/unit/test_x.py", ("settings", "triton")))


def test_the_postgres_half_of_an_engine_parametrized_test_is_slow() -> None:
    assert _is_slow(_item("tests/unit/test_store.py", ("open_store",), open_store="postgres"))
    assert not _is_slow(_item("tests/unit/test_store.py", ("open_store",), open_store="sqlite"))


def test_a_plain_parameter_that_happens_to_name_a_fixture_stays_quick() -> None:
    assert not _is_slow(_item("tests/unit/test_triton_url.py", ("url",), url="triton"))


def test_tests_outside_the_quick_places_are_slow() -> None:
    assert _is_slow(_item("tests/api/test_jobs.py", ("client",)))
    assert _is_slow(_item("tests/fleet/test_replicas.py"))
    assert not _is_slow(_item("tests/storage/test_ranges.py"))
