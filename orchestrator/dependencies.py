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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from orchestrator.errors import DependencyUnavailable, TritonUnavailable
from orchestrator.jobs.readiness import TritonGate
from orchestrator.storage import Storage

log = logging.getLogger(__name__)
TRITON, STORAGE, STORE = "triton", "storage", "store"


class Dependencies:
    def __init__(self, gate: TritonGate, storage: Storage) -> None:
        self.gate = gate
        self.storage = storage
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []
        gate.on_open(self._opened)
        storage.on_available(self._opened)

    @property
    def ready(self) -> bool:
        return self.gate.is_open and self.storage.available

    def problems(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        if not self.gate.is_open:
            found[TRITON] = list(self.gate.problems)
        if not self.storage.available:
            found[STORAGE] = ["object storage is unavailable"]
        return found

    def on_ready(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    async def wait_ready(self) -> None:
        while not self.ready:
            self._changed.clear()
            await self._changed.wait()

    def report_down(self, error: DependencyUnavailable) -> None:
        if isinstance(error, TritonUnavailable):
            self.gate.report_down(error.message)

    def _opened(self) -> None:
        self._changed.set()
        if self.ready:
            for listener in self._listeners:
                listener()
