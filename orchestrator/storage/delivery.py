"""Serving a result kept in the bucket: streamed with Range passed through to S3, or a
redirect (307) to a presigned URL (DH_S3_RESULT_DELIVERY). Local results are served by
Starlette's FileResponse in the route, as before.

Range: one range per request (`bytes=a-b`, `bytes=a-`, `bytes=-n`) answers 206 with
Content-Range; a header that is not a single byte range is ignored (RFC 9110 14.2 lets a
server answer 200 with the whole file); a range that starts past the end answers 416.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.responses import RedirectResponse, Response, StreamingResponse

from orchestrator.errors import NotFound
from orchestrator.storage.base import STAGE
from orchestrator.storage.s3 import S3Storage

MEDIA_TYPE = "video/mp4"
CHUNK_BYTES = 1 << 20  # read from S3 and sent to the client this much at a time
RANGE_NOT_SATISFIABLE = 416
_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class ByteRange:
    first: int
    last: int  # inclusive

    @property
    def length(self) -> int:
        return self.last - self.first + 1


class Unsatisfiable(Exception):
    """The Range starts past the end of the file."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a Range header asks of a `size`-byte file; None: the whole
    file. Unsatisfiable when it asks for nothing that exists."""
    if not header:
        return None
    match = _SINGLE_RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # the last n bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # not a valid range: ignored
    if first >= size:
        raise Unsatisfiable
    last = int(last_text) if last_text else size - 1
    return ByteRange(first, min(last, size - 1))


async def result_response(
    storage: S3Storage, job_id: str, range_header: str | None, filename: str
) -> Response:
    size = await storage.result_size(job_id)
    if size is None:
        raise NotFound(STAGE, f"the result of job '{job_id}' is no longer in the object store")
    if storage.settings.s3_result_delivery == "redirect":
        url = await storage.result_url(job_id, filename, MEDIA_TYPE)
        return RedirectResponse(url, status_code=307)
    try:
        wanted = parse_range(range_header, size)
    except Unsatisfiable:
        return Response(
            status_code=RANGE_NOT_SATISFIABLE, headers={"Content-Range": f"bytes */{size}"}
        )
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
    if wanted is None:
        body = await storage.open_result(job_id, None, None)
        headers["Content-Length"] = str(size)
        status = 200
    else:
        body = await storage.open_result(job_id, wanted.first, wanted.last)
        headers["Content-Length"] = str(wanted.length)
        headers["Content-Range"] = f"bytes {wanted.first}-{wanted.last}/{size}"
        status = 206

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await storage.bucket.read_chunk(body, CHUNK_BYTES):
                yield chunk
        finally:
            body.close()

    return StreamingResponse(chunks(), status_code=status, media_type=MEDIA_TYPE, headers=headers)
