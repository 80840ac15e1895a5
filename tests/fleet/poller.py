"""Asks HTTP servers the same paths over and over, in a process of its own, and writes every
answer's status and time as JSON lines.

A process of its own: in the test's process the pollers would share the GIL with what
brings a dependency back (boto3 clients, process starts), and would time that, not the
answer. Times are CLOCK_MONOTONIC, which every process on the host shares, so the test
compares them with its own `time.monotonic()`.

    python -m tests.fleet.poller OUT POLL_EVERY_S TIMEOUT_S PATHS(,) BASE_URL...

Runs until SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import httpx


def _poll(
    index: int,
    base_url: str,
    path: str,
    every_s: float,
    timeout_s: float,
    out: IO[str],
    lock: threading.Lock,
) -> None:
    while True:
        # A fresh connection each time: a restarted server is reached at once.
        started = time.monotonic()
        answer: dict[str, Any] = {"replica": index, "path": path, "started": started}
        try:
            answer["status"] = httpx.get(base_url + path, timeout=timeout_s).status_code
        except httpx.HTTPError as exc:
            answer.update(status=None, error=type(exc).__name__)
        answer["elapsed"] = time.monotonic() - started
        with lock:
            out.write(json.dumps(answer) + "\n")
            out.flush()
        time.sleep(every_s)  # pacing between asks, not a wait for state


def main(argv: list[str]) -> None:
    out_path, every_s, timeout_s, paths, *base_urls = argv
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    with Path(out_path).open("a") as out:
        for index, base_url in enumerate(base_urls):
            for path in paths.split(","):
                threading.Thread(
                    target=_poll,
                    args=(index, base_url, path, float(every_s), float(timeout_s), out, lock),
                    daemon=True,
                ).start()
        stop.wait()
        with lock:  # no half-written line at exit
            out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
