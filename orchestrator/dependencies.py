"""One gate for every service the work depends on: Triton, object storage, the job store.

Dispatch, avatar preparation and `/readyz` ask this object, and only this object, whether
work may start. Each dependency reports up or down to it; work that meets an outage
reports it here (`report_down`) so that nothing else starts until the dependency is back.

Interface (stable; the implementation behind it may change):
- `ready`: every dependency is up.
- `problems()`: for each dependency that is down, why.
- `on_ready(listener)`: `listener()` runs each time the gate opens again.
- `wait_ready()`: returns once every dependency is up.
- `report_down(error)`: a job or a preparation met `error`; closes the gate now.
- `check()`: checks every dependency now (what `/readyz` answers from).

Each dependency has a probe, and every probe runs under one deadline
(DH_DEPENDENCY_CHECK_TIMEOUT_S): a dependency that answers later is as down as one that
refuses, so "down" is answered within the deadline whatever the dependency does. One
probe of a dependency runs at a time; whoever asks meanwhile shares its answer.

Watching: Triton through the gRPC channel's own connectivity events (the channel
reconnects at least once a second, orchestrator.triton), the storage and the store on a
schedule (they send no event when they come back). While a dependency is up it is
confirmed every CONFIRM_S (a model unloaded behind a live server changes no connection
state); while it is down it is checked at least every RECHECK_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.errors import DependencyUnavailable, TritonUnavailable, describe
from orchestrator.jobs.store.base import StoreUnavailable
from orchestrator.settings import Settings
from orchestrator.storage import Storage, StorageUnavailable

if TYPE_CHECKING:
    from orchestrator.jobs.store import JobStore
    from orchestrator.pipeline.runner import Engine

log = logging.getLogger(__name__)
TRITON, STORAGE, STORE = "triton", "storage", "store"
# While down, the longest wait between checks when nothing else prompts one.
RECHECK_S = 1.0
# While up, how often a dependency is confirmed even though nothing said it went away.
CONFIRM_S = 15.0
NOT_CHECKED = "not checked yet"

# Why a dependency cannot be used now; [] when it can. May raise instead: a
# DependencyUnavailable says why in its message, anything else is described.
Probe = Callable[[], Awaitable[list[str]]]
# Returns when the dependency may have changed (an event), or after the given seconds.
Changed = Callable[[float], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Dependency:
    name: str  # triton, storage, store: the key of problems()
    label: str  # names it in a message: "Triton at host:port", "the job store (...)"
    probe: Probe
    changed: Changed | None = None  # None: checked on the schedule only
    # The errors of work that mean this dependency is down (report_down).
    outage: type[DependencyUnavailable] = DependencyUnavailable


@dataclass(eq=False)
class _State:
    dependency: Dependency
    up: bool = False
    problems: list[str] = field(default_factory=lambda: [NOT_CHECKED])
    probing: asyncio.Task[None] | None = None
    # Counts report_down calls: a probe that began before one cannot declare the
    # dependency up (it may have answered just before the outage).
    reports: int = 0
    kick: asyncio.Event = field(default_factory=asyncio.Event)


class Dependencies:
    def __init__(
        self,
        engine: Engine,
        storage: Storage,
        store: JobStore,
        settings: Settings,
        needs: Sequence[str] = (TRITON, STORAGE, STORE),
    ) -> None:
        """Watches the service's Triton (through `engine`), `storage` and `store`, those of
        them this process `needs` (an API replica renders nothing, so it never watches
        Triton). Call `start()` before asking and `stop()` at shutdown; one per process."""
        timeout_s = settings.dependency_check_timeout_s

        async def triton() -> list[str]:
            # Triton's own retries of a refused connection get half the deadline, so a
            # Triton that is away is reported with its reason, not as merely slow.
            return await engine.readiness_problems(ready_timeout_s=timeout_s / 2)

        async def storage_check() -> list[str]:
            await storage.check()
            return []

        async def store_ping() -> list[str]:
            await store.ping()
            return []

        watched = [
            Dependency(
                TRITON,
                f"Triton at {engine.client.url}",
                triton,
                engine.client.connection_changed,
                TritonUnavailable,
            ),
            Dependency(
                STORAGE,
                storage_label(storage.describe()),
                storage_check,
                None,
                StorageUnavailable,
            ),
            Dependency(STORE, f"the job store ({store.where})", store_ping, None, StoreUnavailable),
        ]
        self._setup([d for d in watched if d.name in needs], timeout_s)

    @classmethod
    def watching(cls, dependencies: Sequence[Dependency], check_timeout_s: float) -> Dependencies:
        """A gate over any probes (tests, tools)."""
        gate = cls.__new__(cls)
        gate._setup(dependencies, check_timeout_s)
        return gate

    def _setup(self, dependencies: Sequence[Dependency], check_timeout_s: float) -> None:
        self.check_timeout_s = check_timeout_s
        self._states = {dependency.name: _State(dependency) for dependency in dependencies}
        self._listeners: list[Callable[[], None]] = []
        self._changed = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

    # The interface

    @property
    def ready(self) -> bool:
        return all(state.up for state in self._states.values())

    def problems(self) -> dict[str, list[str]]:
        return {name: list(s.problems) for name, s in self._states.items() if not s.up}

    def on_ready(self, listener: Callable[[], None]) -> None:
        """`listener()` runs each time the gate opens (the dispatcher's wake-up)."""
        self._listeners.append(listener)

    async def wait_ready(self) -> None:
        while not self.ready:
            await self._changed.wait()

    def report_down(self, error: DependencyUnavailable) -> None:
        """Work met an outage: the dependency is down now, not at its next check."""
        for state in self._states.values():
            if isinstance(error, state.dependency.outage):
                state.reports += 1
                self._set(state, [error.message])
                state.kick.set()  # checked again at once, then on the down schedule
                return
        log.warning("an outage of no watched dependency was reported: %s", error)

    async def check(self) -> dict[str, list[str]]:
        """Checks every dependency now (each within the deadline, all at once); the
        problems found."""
        await asyncio.gather(*(self._check(state) for state in self._states.values()))
        return self.problems()

    # Life cycle

    async def start(self) -> None:
        """Checks once (so a ready service opens the gate before the first dispatch), then
        watches in the background."""
        await self.check()
        self._watchers = [
            asyncio.create_task(self._watch(state), name=f"dependency-{name}")
            for name, state in self._states.items()
        ]

    async def stop(self) -> None:
        tasks = [*self._watchers, *(s.probing for s in self._states.values() if s.probing)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers = []

    # Inside

    async def _check(self, state: _State) -> None:
        if state.probing is None or state.probing.done():
            state.probing = asyncio.create_task(
                self._probe(state, state.reports), name=f"probe-{state.dependency.name}"
            )
        # Shared by every caller; one caller going away does not cut it short.
        await asyncio.shield(state.probing)

    async def _probe(self, state: _State, reports: int) -> None:
        dependency = state.dependency
        try:
            async with asyncio.timeout(self.check_timeout_s):
                problems = await dependency.probe()
        except TimeoutError:
            problems = [f"{dependency.label} did not answer within {self.check_timeout_s:g} s"]
        except DependencyUnavailable as exc:
            problems = [exc.message]
        except Exception as exc:  # a probe's own fault still says why
            problems = [f"{dependency.label}: {describe(exc)}"]
        if not problems and state.reports != reports:
            return  # an outage was reported meanwhile: the next check decides
        self._set(state, problems)

    def _set(self, state: _State, problems: list[str]) -> None:
        was_ready, was_up = self.ready, state.up
        state.up, state.problems = not problems, problems
        name = state.dependency.name
        if was_up and not state.up:
            log.warning(
                "%s is down (%s); no work starts until it is back", name, "; ".join(problems)
            )
        elif state.up and not was_up and problems != [NOT_CHECKED]:
            log.info("%s is up", name)
        # Wakes every wait_ready(); each looks at `ready` again.
        self._changed.set()
        self._changed = asyncio.Event()
        if self.ready and not was_ready:
            log.info("every dependency is up; work may start")
            for listener in self._listeners:
                listener()

    async def _watch(self, state: _State) -> None:
        dependency = state.dependency
        while True:
            wait = CONFIRM_S if state.up else RECHECK_S
            prompts: list[asyncio.Task[Any]] = [asyncio.create_task(state.kick.wait())]
            if dependency.changed is not None:
                prompts.append(asyncio.create_task(dependency.changed(wait)))
            try:
                await asyncio.wait(prompts, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in prompts:
                    task.cancel()
                await asyncio.gather(*prompts, return_exceptions=True)
            state.kick.clear()
            with contextlib.suppress(Exception):
                await self._check(state)


def storage_label(where: dict[str, str]) -> str:
    """Storage.describe() as a name for messages."""
    if where.get("kind") == "s3":
        prefix = f"/{where['prefix']}" if where.get("prefix") else ""
        return f"object storage s3://{where.get('bucket', '')}{prefix} at {where.get('endpoint')}"
    return f"{where.get('kind', 'local')} storage"
