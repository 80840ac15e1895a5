"""Completion webhooks: the job's JSON POSTed to the URL it named, retried with backoff.

The outcome (delivered or not, attempts, last status or error) is recorded on the job, so
a client that missed the call can see why. A delivery cut short by a shutdown is sent
again after the restart (the job has a webhook URL and no recorded outcome).

Where a webhook may go is orchestrator.outbound's rule: refused at submission when the URL
alone tells (a private literal address, a host not listed), else refused at connection.
A refused delivery records "refused: <reason>" and no status code or connection error, so
the outcome cannot be used to probe which internal addresses and ports answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from orchestrator.errors import BadInput
from orchestrator.jobs.store import JobRecord, JobStore
from orchestrator.logs import current_job
from orchestrator.outbound import check_url, webhook_policy
from orchestrator.settings import Settings

log = logging.getLogger(__name__)
STAGE = "webhook"


def check_webhook_url(url: str, settings: Settings) -> str:
    """The URL if a webhook may go there as far as the URL tells; BadInput otherwise."""
    check_url(url, webhook_policy(settings), "webhook_url")
    return url


class WebhookSender:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        http: httpx.AsyncClient,  # orchestrator.outbound.guarded_client(webhook_policy)
        document: Callable[[JobRecord], Awaitable[dict[str, Any]]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.http = http
        self.document = document
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, job: JobRecord) -> None:
        """Starts the delivery in the background; the job must be in a final state."""
        if not job.webhook_url:
            return
        task = asyncio.create_task(self._deliver(job.id), name=f"webhook-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, job_id: str) -> None:
        current_job.set(job_id)
        job = await self.store.get_job(job_id)
        if job is None or not job.webhook_url:
            return
        payload = await self.document(job)
        delay = self.settings.webhook_backoff_s
        outcome: dict[str, Any] = {"delivered": False, "attempts": 0}
        for attempt in range(1, self.settings.webhook_attempts + 1):
            outcome["attempts"] = attempt
            try:
                check_webhook_url(job.webhook_url, self.settings)  # the settings may be newer
                reply = await self.http.post(
                    job.webhook_url, json=payload, timeout=self.settings.webhook_timeout_s
                )
                outcome["status_code"] = reply.status_code
                if reply.is_success:
                    outcome["delivered"] = True
                    outcome.pop("error", None)
                    break
                outcome["error"] = f"the receiver answered HTTP {reply.status_code}"
            except BadInput as exc:  # OutboundRefused, or a stored URL that no longer parses
                # Final: trying again would not change the answer, and nothing about the
                # destination (status, connection error) is recorded.
                outcome.pop("status_code", None)
                outcome["error"] = f"refused: {exc.message}"
                log.warning("webhook to %s refused: %s", job.webhook_url, exc.message)
                break
            except httpx.HTTPError as exc:
                outcome["error"] = (
                    f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                )
            log.info("webhook attempt %d to %s failed: %s", attempt, job.webhook_url, outcome)
            if attempt < self.settings.webhook_attempts:
                await asyncio.sleep(delay)  # backoff between deliveries, not a state wait
                delay *= 2
        outcome["at"] = time.time()
        latest = await self.store.get_job(job_id)
        if latest is not None:
            latest.webhook = {"url": job.webhook_url, **outcome}
            await self.store.save_job(latest)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
