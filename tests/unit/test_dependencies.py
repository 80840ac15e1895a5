"""The gate over every dependency, with probes the test controls: down names the
dependency and why, a probe that hangs is down within the deadline, the gate opens
(and tells its listeners) when every dependency is back."""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator.dependencies import Dependencies, Dependency, storage_label
from orchestrator.errors import DependencyUnavailable, TritonUnavailable
from orchestrator.storage import StorageUnavailable

DEADLINE_S = 0.2
# Generous bound on "within the deadline" on a loaded machine; far below a hang.
SLACK_S = 1.0
WAIT_S = 5.0  # how long a test waits for something that should happen at once


class Fake:
    """A dependency whose answer the test sets: up, down (why), or no answer at all."""

    def __init__(
        self, name: str, outage: type[DependencyUnavailable] = DependencyUnavailable
    ) -> None:
        self.name = name
        self.problems: list[str] = []
        self.raises: Exception | None = None
        self.hang = False
        self.probes = 0
        self._changed = asyncio.Event()
        self.outage = outage

    async def probe(self) -> list[str]:
        self.probes += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.raises is not None:
            raise self.raises
        return list(self.problems)

    async def changed(self, timeout_s: float) -> None:
        """Like the Triton channel's connectivity event: the test fires it."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()
        except TimeoutError:
            return
        self._changed.clear()

    def fire(self) -> None:
        self._changed.set()

    def dependency(self) -> Dependency:
        return Dependency(
            self.name, f"the {self.name} server", self.probe, self.changed, self.outage
        )


def _gate(*fakes: Fake) -> Dependencies:
    return Dependencies.watching([fake.dependency() for fake in fakes], DEADLINE_S)


async def test_nothing_is_ready_before_the_first_check() -> None:
    gate = _gate(Fake("triton"))
    assert not gate.ready
    assert gate.problems() == {"triton": ["not checked yet"]}


async def test_a_dependency_that_is_down_is_named_with_its_reason() -> None:
    triton, storage = Fake("triton"), Fake("storage")
    storage.problems = ["the bucket does not exist"]
    gate = _gate(triton, storage)

    assert await gate.check() == {"storage": ["the bucket does not exist"]}
    assert not gate.ready
    assert gate.problems() == {"storage": ["the bucket does not exist"]}


async def test_a_probe_that_raises_is_down_with_the_error_message() -> None:
    storage = Fake("storage")
    storage.raises = StorageUnavailable("storage", "object storage s3://b at x: refused")
    store = Fake("store")
    store.raises = OSError(5, "Input/output error", "/srv/secret/service.db")
    gate = _gate(storage, store)

    problems = await gate.check()

    assert problems["storage"] == ["object storage s3://b at x: refused"]
    assert problems["store"] == ["the store server: Input/output error (service.db)"]
    assert "/srv" not in str(problems), "no server path in a reason"


async def test_a_probe_that_hangs_is_down_within_the_deadline() -> None:
    triton, store = Fake("triton"), Fake("store")
    store.hang = True
    gate = _gate(triton, store)

    started = time.monotonic()
    problems = await gate.check()
    took = time.monotonic() - started

    assert took < DEADLINE_S + SLACK_S
    assert problems == {"store": [f"the store server did not answer within {DEADLINE_S:g} s"]}


async def test_callers_at_once_share_one_probe() -> None:
    store = Fake("store")
    store.hang = True
    gate = _gate(store)

    await asyncio.gather(gate.check(), gate.check(), gate.check())

    assert store.probes == 1


async def test_on_ready_fires_when_the_last_dependency_is_back() -> None:
    triton, storage = Fake("triton"), Fake("storage")
    triton.problems, storage.problems = ["down"], ["down"]
    gate = _gate(triton, storage)
    opened: list[float] = []
    gate.on_ready(lambda: opened.append(time.monotonic()))
    await gate.check()

    triton.problems = []
    await gate.check()
    assert opened == [] and gate.problems() == {"storage": ["down"]}

    storage.problems = []
    await gate.check()
    assert len(opened) == 1 and gate.ready

    await gate.check()
    assert len(opened) == 1, "only an opening is told, not every check"


async def test_the_watcher_reopens_the_gate_on_the_dependency_s_event() -> None:
    triton = Fake("triton")
    triton.problems = ["Triton at 127.0.0.1:1 unavailable"]
    gate = _gate(triton)
    opened = asyncio.Event()
    gate.on_ready(opened.set)
    await gate.start()
    try:
        assert not gate.ready
        triton.problems = []
        triton.fire()
        async with asyncio.timeout(WAIT_S):
            await opened.wait()
        assert gate.ready
    finally:
        await gate.stop()


async def test_wait_ready_waits_for_every_dependency() -> None:
    triton, storage, store = Fake("triton"), Fake("storage"), Fake("store")
    triton.problems = storage.problems = store.problems = ["down"]
    gate = _gate(triton, storage, store)
    await gate.check()
    waiting = asyncio.create_task(gate.wait_ready())

    for fake in (triton, storage):
        fake.problems = []
        await gate.check()
        await asyncio.sleep(0)  # let the waiter look (it must still be waiting)
        assert not waiting.done()

    store.problems = []
    await gate.check()
    async with asyncio.timeout(WAIT_S):
        await waiting


async def test_report_down_closes_the_gate_at_once_naming_the_dependency() -> None:
    triton, storage = Fake("triton", TritonUnavailable), Fake("storage", StorageUnavailable)
    gate = _gate(triton, storage)
    await gate.check()
    assert gate.ready

    gate.report_down(StorageUnavailable("storage", "object storage: get failed: 503"))

    assert not gate.ready
    assert gate.problems() == {"storage": ["object storage: get failed: 503"]}
    await gate.check()  # the next check decides: it is back
    assert gate.ready


async def test_a_probe_begun_before_a_reported_outage_cannot_reopen_the_gate() -> None:
    triton = Fake("triton", TritonUnavailable)
    gate = _gate(triton)
    await gate.check()
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_up() -> list[str]:
        started.set()
        await release.wait()
        return []

    gate._states["triton"].dependency = Dependency(
        "triton", "Triton", slow_up, None, TritonUnavailable
    )
    checking = asyncio.create_task(gate.check())
    await started.wait()
    gate.report_down(TritonUnavailable("server", "Triton at 127.0.0.1:1 unavailable"))
    release.set()
    await checking

    assert not gate.ready


@pytest.mark.parametrize(
    ("where", "label"),
    [
        ({"kind": "local"}, "local storage"),
        (
            {"kind": "s3", "bucket": "dh", "prefix": "a/b", "endpoint": "http://s3:9000"},
            "object storage s3://dh/a/b at http://s3:9000",
        ),
    ],
)
def test_storage_is_named_as_it_describes_itself(where: dict[str, str], label: str) -> None:
    assert storage_label(where) == label
