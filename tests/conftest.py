"""Shared fixtures: one real local Triton per test session (or the one named by
DH_TEST_TRITON_URL / DH_TEST_TRITON_METRICS_URL), and clients bound to it; and the quick
lane's rule (`pytest -m "not slow"`, below)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localtriton.launcher import local_triton
from modelkit.build import build_face_restore, build_repository, repository_with_wav2lip
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient
from tests.outage import KillableTriton

REPO = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO / "model_repository"
TRITON_VENV = REPO / ".venv-triton"
# A third model beside the production two: the same lipsync config serving the Wav2Lip-96
# architecture (random weights), so tests run the pipeline on both generators.
WAV2LIP_MODEL = "lipsync_wav2lip"


# The quick lane: tests in these places start no server and no process (pure functions,
# in-process apps, files checked as data); every other test is `slow`.
QUICK_PLACES = (
    "tests/unit/",
    "tests/storage/test_ranges.py",
    "tests/api/test_openapi_docs.py",
    "tests/test_model_repository.py",
)
# A quick place's test is still slow when it asks for one of these fixtures, directly or
# through another fixture.
SLOW_FIXTURES = frozenset({"triton", "killable_triton", "built_models", "served_repository"})
# ... or when a fixture parametrized over engines starts one of these by name
# (request.getfixturevalue): tests/unit/test_store.py runs on "sqlite" and "postgres".
SLOW_ENGINES = frozenset({"postgres"})


def _is_slow(item: pytest.Item) -> bool:
    place = Path(item.path).relative_to(REPO).as_posix()
    if not place.startswith(QUICK_PLACES):
        return True
    if not SLOW_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    return any(isinstance(value, str) and value in SLOW_ENGINES for value in params)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)


@dataclass(frozen=True)
class TritonAddress:
    grpc_url: str
    metrics_url: str


@pytest.fixture(scope="session")
def built_models() -> Path:
    """The model repository with every model.onnx built (a no-op when up to date), or the
    already built one named by DH_TEST_MODEL_REPOSITORY."""
    prebuilt = os.environ.get("DH_TEST_MODEL_REPOSITORY")
    if prebuilt:
        return Path(prebuilt)
    build_repository(MODEL_REPOSITORY, work=REPO / "build", log=lambda _: None)
    return MODEL_REPOSITORY


@pytest.fixture(scope="session")
def served_repository(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The production models plus WAV2LIP_MODEL, as one repository for the test server."""
    return repository_with_wav2lip(
        built_models, tmp_path_factory.mktemp("model_repository"), REPO / "build", WAV2LIP_MODEL
    )


@pytest.fixture(scope="session")
def triton(
    served_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonAddress]:
    url = os.environ.get("DH_TEST_TRITON_URL")
    if url:
        yield TritonAddress(url, os.environ["DH_TEST_TRITON_METRICS_URL"])
        return
    workdir = tmp_path_factory.mktemp("triton")
    with local_triton(served_repository, workdir, TRITON_VENV, log=lambda _: None) as running:
        yield TritonAddress(running.endpoints.grpc_url, running.endpoints.metrics_url)


@pytest.fixture(scope="session")
def restoring_triton(
    built_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonAddress]:
    """A second server: the production models plus the analytic face restorer
    (modelkit/restore_analytic.py). The session's server has none, as by default."""
    repository = tmp_path_factory.mktemp("restoring_repository")
    for name in ("lipsync", "face_detector"):
        (repository / name).symlink_to((built_models / name).resolve())
    build_face_restore(repository, "unsharp", None, repository / "stamps", log=lambda _: None)
    workdir = tmp_path_factory.mktemp("restoring_triton")
    with local_triton(repository, workdir, TRITON_VENV, log=lambda _: None) as running:
        yield TritonAddress(running.endpoints.grpc_url, running.endpoints.metrics_url)


@pytest.fixture
def settings(triton: TritonAddress, tmp_path: Path) -> Settings:
    return Settings(
        triton_url=triton.grpc_url,
        triton_metrics_url=triton.metrics_url,
        data_dir=tmp_path / "data",
    )


@pytest.fixture
async def triton_client(settings: Settings) -> AsyncIterator[TritonClient]:
    async with TritonClient(
        settings.triton_url,
        request_timeout_s=settings.triton_request_timeout_s,
        retry_deadline_s=settings.triton_retry_deadline_s,
        max_in_flight=64,
    ) as client:
        yield client


@pytest.fixture
def killable_triton(built_models: Path, tmp_path: Path) -> Iterator[KillableTriton]:
    """A Triton of the test's own, serving the production models, to kill and restart."""
    triton = KillableTriton(built_models, tmp_path / "own-triton", TRITON_VENV).start()
    yield triton
    triton.stop()
