"""Whether jobs may start now: Triton and both models ready, watched rather than guessed.

The dispatcher starts no job while the gate is closed, so an outage leaves jobs queued
instead of starting them only to fail. The gate follows Triton through the gRPC channel's
own connectivity events: while open it waits for the connection to change (Triton went
away), while closed it re-checks readiness whenever the channel changes state (the
channel reconnects at least once a second, orchestrator.triton) or after a short pause.
A job or an avatar preparation that meets an outage first closes the gate at once
(`report_down`); avatar preparation waits for the gate (`wait_open`) before it retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from orchestrator.errors import TritonUnavailable
from orchestrator.pipeline.runner import Engine
from orchestrator.storage import StorageUnavailable

log = logging.getLogger(__name__)
# Failures that are no job's or avatar's fault: a dependency went away. The work waits
# (the gate, or the storage's availability) and runs again, its attempt counted.
OUTAGES = (TritonUnavailable, StorageUnavailable)
# While closed, the longest wait between readiness checks when the channel stays quiet
# (Triton up but a model still loading sends no connectivity event).
RECHECK_S = 1.0
# While open, how often readiness is confirmed even though the connection stayed up (a
# model unloaded behind a live server changes no connectivity state).
CONFIRM_S = 15.0


class TritonGate:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.problems: list[str] = ["Triton's readiness has not been checked yet"]
        self._open = False
        self._opened = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        return self._open

    def on_open(self, listener: Callable[[], None]) -> None:
        """`listener()` runs each time the gate opens (the dispatcher's wake-up)."""
        self._listeners.append(listener)

    async def wait_open(self) -> None:
        await self._opened.wait()

    async def start(self) -> None:
        """Checks once (so a ready Triton opens the gate before the first dispatch), then
        keeps watching in the background."""
        await self._check()
        self._task = asyncio.create_task(self._watch(), name="triton-gate")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def report_outage(self, error: Exception) -> None:
        """Closes the gate when `error` (one of OUTAGES) is Triton's; object storage has a
        watcher of its own."""
        if isinstance(error, TritonUnavailable):
            self.report_down(error.message)

    def report_down(self, reason: str) -> None:
        """A job met an outage: close now rather than at the next connectivity event."""
        if self._open:
            log.warning("Triton unavailable (%s); no job starts until it is ready", reason)
        self._open = False
        self._opened.clear()
        self.problems = [reason]
        self._kick.set()

    async def _check(self) -> None:
        problems = await self.engine.readiness_problems()
        was_open, self._open = self._open, not problems
        self.problems = problems
        if self._open and not was_open:
            log.info("Triton ready; starting queued jobs")
            self._opened.set()
            for listener in self._listeners:
                listener()
        elif was_open and not self._open:
            self._opened.clear()
            log.warning("Triton not ready: %s", "; ".join(problems))

    async def _watch(self) -> None:
        client = self.engine.client
        while True:
            wait = CONFIRM_S if self._open else RECHECK_S
            changed = asyncio.create_task(client.connection_changed(wait))
            kicked = asyncio.create_task(self._kick.wait())
            try:
                await asyncio.wait({changed, kicked}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (changed, kicked):
                    task.cancel()
                await asyncio.gather(changed, kicked, return_exceptions=True)
            self._kick.clear()
            await self._check()
