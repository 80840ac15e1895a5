"""Transitional: the scheduler's old view of readiness, answered by `Dependencies`.

Readiness is orchestrator.dependencies now. The scheduler still asks a Triton gate and
the storage's availability (`gate.is_open`, `storage.available`); until it asks
`Dependencies` itself (issue 14, rewritten in parallel), these adapters give it the
gate's answers. Delete this module with that change; nothing else uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.errors import DependencyUnavailable, TritonUnavailable
from orchestrator.storage import StorageUnavailable

if TYPE_CHECKING:
    from orchestrator.dependencies import Dependencies
    from orchestrator.storage import Storage

# Failures that are no job's fault: a dependency went away.
OUTAGES = (TritonUnavailable, StorageUnavailable)


class TritonGate:
    """The gate the scheduler expects, open while every dependency is up."""

    def __init__(self, dependencies: Dependencies) -> None:
        self.dependencies = dependencies

    @property
    def is_open(self) -> bool:
        return self.dependencies.ready

    def on_open(self, listener: Callable[[], None]) -> None:
        self.dependencies.on_ready(listener)

    def report_outage(self, error: Exception) -> None:
        if isinstance(error, DependencyUnavailable):
            self.dependencies.report_down(error)


class SchedulerStorage:
    """The storage as the scheduler expects it: its availability is the gate's above."""

    available = True

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def on_available(self, listener: Callable[[], None]) -> None:
        return None  # TritonGate.on_open wakes the scheduler when storage is back

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)
