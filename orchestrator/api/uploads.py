"""Streaming multipart uploads: parts go straight to staged files, limits apply as bytes
arrive, and nothing is held whole in memory.

FastAPI's `UploadFile` would spool the whole body first and only then let us look at it;
here the body is parsed chunk by chunk (python-multipart's push parser), the byte limit
stops the upload the moment it is crossed, and each file's own check (audio length,
video size) runs on the partial file at a few points so an over-limit upload is refused
long before it completes.

A client that stops sending cannot hold the request: each wait for the next chunk has a
cutoff (UploadPace), and a body that misses it is answered 408 and its files removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from orchestrator.blocking import run_blocking
from orchestrator.errors import BadInput, LimitExceeded, unwrap
from orchestrator.pipeline.avatar_cache import CONTENT_ID_HEX
from orchestrator.settings import Settings
from orchestrator.storage import Storage, safe_suffix

if TYPE_CHECKING:  # python-multipart declares its callback types for checkers only
    from python_multipart.multipart import MultipartCallbacks

STAGE = "upload"
PAYLOAD_TOO_LARGE = 413
REQUEST_TIMEOUT = 408
# Sizes at which a file still streaming in is checked: most containers carry their header
# in the first few hundred KiB; the later points catch headers that come later.
PARTIAL_CHECK_AT = (256 * 1024, 4 * 1024**2, 32 * 1024**2)
# Text fields are ids and URLs: anything longer is not a real request.
MAX_FIELD_BYTES = 16 * 1024
MAX_PARTS = 16

# (path, partial, the client's filename) -> None; raises LimitExceeded or BadInput.
FileCheck = Callable[[Path, bool, str], object]


@dataclass(frozen=True)
class UploadPace:
    """How slow a body may arrive (Apache mod_reqtimeout's MinRate rule): `grace_s`, plus one
    second per `min_bytes_per_s` bytes received, never more than `deadline_s` in all."""

    deadline_s: float
    min_bytes_per_s: int
    grace_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadPace:
        return cls(
            deadline_s=settings.upload_deadline_s,
            min_bytes_per_s=settings.upload_min_bytes_per_s,
            grace_s=settings.upload_rate_grace_s,
        )

    def allowed_s(self, received: int) -> float:
        """Seconds since the start by which more bytes must have come."""
        return min(self.deadline_s, self.grace_s + received / self.min_bytes_per_s)

    def too_slow(self, received: int, elapsed_s: float) -> LimitExceeded:
        if self.allowed_s(received) >= self.deadline_s:
            why = f"took longer than this server's {self.deadline_s:g} s (DH_UPLOAD_DEADLINE_S)"
        else:
            why = (
                f"arrived slower than {self.min_bytes_per_s} bytes/s after "
                f"{self.grace_s:g} s (DH_UPLOAD_MIN_BYTES_PER_S, DH_UPLOAD_RATE_GRACE_S)"
            )
        return LimitExceeded(
            STAGE,
            f"the upload {why}: {received} bytes in {elapsed_s:.1f} s; it was dropped",
            REQUEST_TIMEOUT,
        )


@dataclass
class ReceivedFile:
    field: str
    filename: str
    path: Path
    size: int
    content_id: str  # sha256 prefix of the bytes, as orchestrator.pipeline.avatar_cache.content_id


@dataclass
class ReceivedForm:
    files: dict[str, ReceivedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    text: bytearray = field(default_factory=bytearray)
    sink: BinaryIO | None = None
    path: Path | None = None
    size: int = 0
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    next_check: int = 0


def too_large(max_bytes: int) -> LimitExceeded:
    return LimitExceeded(
        STAGE,
        f"the request body is larger than this server's limit of {max_bytes} bytes "
        "(DH_MAX_UPLOAD_BYTES)",
        PAYLOAD_TOO_LARGE,
    )


async def receive_form(
    request: Request,
    *,
    storage: Storage,
    pool: Executor,
    max_bytes: int,
    checks: dict[str, FileCheck],
    pace: UploadPace | None = None,
) -> ReceivedForm:
    """Reads a multipart/form-data body; file fields must be named in `checks`. `pace`
    defaults to the app's settings (DH_UPLOAD_*).

    On any error every staged file is removed before the error propagates."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadInput(STAGE, "send the inputs as multipart/form-data")
    if pace is None:
        pace = UploadPace.from_settings(request.app.state.settings)
    receiver = _Receiver(storage, pool, checks)
    try:
        parser = MultipartParser(boundary, receiver.callbacks())
        received = 0
        async for chunk in _paced(request, pace):
            received += len(chunk)
            if received > max_bytes:
                raise too_large(max_bytes)
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise BadInput(STAGE, f"malformed multipart body: {exc}") from None
            await receiver.flush()
        parser.finalize()
        await receiver.flush()
        if receiver.current is not None:
            raise BadInput(STAGE, "the multipart body ended in the middle of a part")
        return receiver.form
    except ClientDisconnect:
        await receiver.discard()
        raise BadInput(STAGE, "the client went away before the upload finished") from None
    except OSError as exc:
        # A full disk is DiskFull (507: the same request succeeds once space is freed),
        # never an unhandled 500; the part written so far goes.
        await receiver.discard()
        raise unwrap(exc, STAGE) from None
    except BaseException:
        await receiver.discard()
        raise


async def _paced(request: Request, pace: UploadPace) -> AsyncIterator[bytes]:
    """The body's chunks; LimitExceeded(408) once the next one is later than `pace` allows."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = 0
    chunks = request.stream()
    while True:
        try:
            async with asyncio.timeout_at(started + pace.allowed_s(received)):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise pace.too_slow(received, loop.time() - started) from None
        received += len(chunk)
        yield chunk


class _Receiver:
    """Collects the parser's callbacks, then does the file I/O off the event loop."""

    def __init__(self, storage: Storage, pool: Executor, checks: dict[str, FileCheck]) -> None:
        self.storage = storage
        self.pool = pool
        self.checks = checks
        self.form = ReceivedForm()
        self.current: _Part | None = None
        self.parts = 0
        self.staged: list[Path] = []
        self._events: list[tuple[str, bytes]] = []
        self._header_field = b""
        self._header_value = b""

    def callbacks(self) -> MultipartCallbacks:
        events = self._events

        def on_data(kind: str) -> Callable[[bytes, int, int], None]:
            return lambda data, start, end: events.append((kind, bytes(data[start:end])))

        def on_mark(kind: str) -> Callable[[], None]:
            return lambda: events.append((kind, b""))

        return {
            "on_part_begin": on_mark("begin"),
            "on_part_data": on_data("data"),
            "on_part_end": on_mark("end"),
            "on_header_field": on_data("header_field"),
            "on_header_value": on_data("header_value"),
            "on_header_end": on_mark("header_end"),
            "on_headers_finished": on_mark("headers_done"),
        }

    async def flush(self) -> None:
        events, self._events[:] = list(self._events), []
        pending = bytearray()
        for kind, data in events:
            if kind == "data":
                pending += data
                continue
            if pending:
                await self._data(bytes(pending))
                pending.clear()
            await self._event(kind, data)
        if pending:
            await self._data(bytes(pending))

    async def _event(self, kind: str, data: bytes) -> None:
        if kind == "begin":
            self.parts += 1
            if self.parts > MAX_PARTS:
                raise BadInput(STAGE, f"more than {MAX_PARTS} parts in one form")
            self.current = _Part()
        elif kind == "header_field":
            self._header_field += data
        elif kind == "header_value":
            self._header_value += data
        elif kind == "header_end":
            assert self.current is not None
            self.current.headers[self._header_field.lower()] = self._header_value
            self._header_field = self._header_value = b""
        elif kind == "headers_done":
            await self._open_part()
        elif kind == "end":
            await self._close_part()

    async def _open_part(self) -> None:
        part = self.current
        assert part is not None
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            return
        part.filename = options[b"filename"].decode("utf-8", "replace")
        if part.name not in self.checks:
            expected = ", ".join(sorted(self.checks)) or "none"
            raise BadInput(STAGE, f"unexpected file field '{part.name}' (file fields: {expected})")
        if part.name in self.form.files:
            raise BadInput(STAGE, f"file field '{part.name}' was sent twice")
        part.path = self.storage.staging_path(safe_suffix(part.filename))
        self.staged.append(part.path)
        part.sink = await run_blocking(self.pool, part.path.open, "wb")
        part.next_check = 0

    async def _data(self, data: bytes) -> None:
        part = self.current
        if part is None:
            return  # preamble bytes before the first boundary
        if part.sink is None:
            part.text += data
            if len(part.text) > MAX_FIELD_BYTES:
                raise BadInput(STAGE, f"field '{part.name}' is longer than {MAX_FIELD_BYTES} bytes")
            return
        sink, hasher = part.sink, part.hasher

        def write() -> None:
            sink.write(data)
            hasher.update(data)

        await run_blocking(self.pool, write)
        part.size += len(data)
        crossed = [at for at in PARTIAL_CHECK_AT[part.next_check :] if part.size >= at]
        if crossed:
            part.next_check += len(crossed)
            await run_blocking(self.pool, sink.flush)
            assert part.path is not None and part.filename is not None
            await run_blocking(self.pool, self.checks[part.name], part.path, True, part.filename)

    async def _close_part(self) -> None:
        part, self.current = self.current, None
        if part is None:
            return
        if part.sink is None:
            self.form.fields[part.name] = part.text.decode("utf-8", "replace")
            return
        await run_blocking(self.pool, part.sink.close)
        assert part.path is not None and part.filename is not None
        if part.size == 0:
            raise BadInput(STAGE, f"the file in field '{part.name}' is empty")
        await run_blocking(self.pool, self.checks[part.name], part.path, False, part.filename)
        self.form.files[part.name] = ReceivedFile(
            field=part.name,
            filename=part.filename,
            path=part.path,
            size=part.size,
            content_id=part.hasher.hexdigest()[:CONTENT_ID_HEX],
        )

    async def discard(self) -> None:
        part = self.current
        if part is not None and part.sink is not None and not part.sink.closed:
            # Closing flushes what is buffered: on a full disk that fails too; the file
            # goes anyway.
            with contextlib.suppress(OSError):
                await run_blocking(self.pool, part.sink.close)
        for path in self.staged:
            await self.storage.discard(path)
