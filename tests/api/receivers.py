"""Small HTTP servers in the test process: a file server (inputs by URL) and a webhook sink."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@contextmanager
def _serving(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def file_server(directory: Path) -> Iterator[str]:
    """Serves `directory` on 127.0.0.1; yields the base URL."""
    handler = partial(_QuietFiles, directory=str(directory))
    with _serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


@dataclass
class WebhookSink:
    """Records POSTed JSON; answers the statuses in `answers` in turn, then 200."""

    answers: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    arrived: threading.Event = field(default_factory=threading.Event)


@contextmanager
def webhook_sink(answers: list[int]) -> Iterator[WebhookSink]:
    sink = WebhookSink(answers=list(answers))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            sink.received.append(json.loads(body))
            status = sink.answers.pop(0) if sink.answers else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()
            if status == 200:
                sink.arrived.set()

        def log_message(self, *_: Any) -> None:
            pass

    with _serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        sink.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        yield sink
