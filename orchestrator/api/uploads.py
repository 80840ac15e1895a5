"""Streaming multipart uploads: parts go straight to staged files, limits apply as bytes
arrive, and nothing is held whole in memory.

FastAPI's `UploadFile` would spool the whole body first and only then let us look at it;
here the body is parsed chunk by chunk (python-multipart's push parser), the byte limit
stops the upload the moment it is crossed, and each file's own check (audio length,
video size) runs on the partial file at a few points so an over-limit upload is refused
long before it completes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from orchestrator.errors import BadInput, LimitExceeded
from orchestrator.storage import Storage, safe_suffix

STAGE = "upload"
PAYLOAD_TOO_LARGE = 413
# Sizes at which a file still streaming in is checked: most containers carry their header
# in the first few hundred KiB; the later points catch headers that come later.
PARTIAL_CHECK_AT = (256 * 1024, 4 * 1024**2, 32 * 1024**2)
# Text fields are ids and URLs: anything longer is not a real request.
MAX_FIELD_BYTES = 16 * 1024
MAX_PARTS = 16
# Size of the content id: the same hash prefix the pipeline's avatar cache uses.
CONTENT_ID_HEX = 32

# (path, partial) -> None; raises LimitExceeded or BadInput.
FileCheck = Callable[[Path, bool], object]


@dataclass
class ReceivedFile:
    field: str
    filename: str
    path: Path
    size: int
    content_id: str  # sha256 prefix of the bytes, as orchestrator.pipeline.avatar.content_id


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
) -> ReceivedForm:
    """Reads a multipart/form-data body; file fields must be named in `checks`.

    On any error every staged file is removed before the error propagates."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadInput(STAGE, "send the inputs as multipart/form-data")
    receiver = _Receiver(storage, pool, checks)
    try:
        parser = MultipartParser(boundary, receiver.callbacks())
        received = 0
        async for chunk in request.stream():
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
    except BaseException:
        await receiver.discard()
        raise


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

    def callbacks(self) -> dict[str, Callable[..., None]]:
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
        part.sink = await self._in_pool(part.path.open, "wb")
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

        await self._in_pool(write)
        part.size += len(data)
        crossed = [at for at in PARTIAL_CHECK_AT[part.next_check :] if part.size >= at]
        if crossed:
            part.next_check += len(crossed)
            await self._in_pool(sink.flush)
            assert part.path is not None
            await self._in_pool(self.checks[part.name], part.path, True)

    async def _close_part(self) -> None:
        part, self.current = self.current, None
        if part is None:
            return
        if part.sink is None:
            self.form.fields[part.name] = part.text.decode("utf-8", "replace")
            return
        await self._in_pool(part.sink.close)
        assert part.path is not None and part.filename is not None
        if part.size == 0:
            raise BadInput(STAGE, f"the file in field '{part.name}' is empty")
        await self._in_pool(self.checks[part.name], part.path, False)
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
            await self._in_pool(part.sink.close)
        for path in self.staged:
            await self.storage.discard(path)

    async def _in_pool(self, fn: Callable[..., object], *args: object):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
