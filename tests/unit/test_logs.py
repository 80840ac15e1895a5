"""JSON-lines logs carry the job id of the task that logged."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from orchestrator.logs import JobIdFilter, JsonLines, current_job


async def test_each_line_names_the_job_whose_task_logged_it() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonLines())
    log = logging.getLogger("test.logs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    async def job(job_id: str) -> None:
        current_job.set(job_id)
        await asyncio.sleep(0)
        log.info("rendering %s", job_id)

    try:
        await asyncio.gather(job("a"), job("b"))
        log.info("outside any job")
    finally:
        log.removeHandler(handler)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {(line["job_id"], line["message"]) for line in lines} == {
        ("a", "rendering a"),
        ("b", "rendering b"),
        (None, "outside any job"),
    }
    assert all(line["level"] == "info" and line["time"] for line in lines)
