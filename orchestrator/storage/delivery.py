"""Serving an object kept in the bucket (S3Storage.result_response): streamed with Range
passed through to S3, or a redirect (307) to a presigned URL (DH_S3_RESULT_DELIVERY).
LocalStorage answers with Starlette's FileResponse instead.

Range: one range per request (`bytes=a-b`, `bytes=a-`, `bytes=-n`) answers 206 with
Content-Range; a header that is not a single byte range is ignored (RFC 9110 14.2 lets a
server answer 200 with the whole file); a range that starts past the end answers 416.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.responses import RedirectResponse, Response, StreamingResponse

from orchestrator.storage.base import RESULT_MEDIA_TYPE
from orchestrator.storage.objects import Bucket

MEDIA_TYPE = RESULT_MEDIA_TYPE
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


async def object_response(
    bucket: Bucket,
    key: str,
    size: int,
    range_header: str | None,
    filename: str,
    presigned_for_s: int | None,
) -> Response:
    """The download of the `size`-byte object at `key`: a redirect to a URL presigned for
    `presigned_for_s` seconds, or (None) the object streamed through this service."""
    if presigned_for_s is not None:
        url = await bucket.presign(key, presigned_for_s, filename, MEDIA_TYPE)
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
        body = await bucket.open_range(key, None, None)
        headers["Content-Length"] = str(size)
        status = 200
    else:
        body = await bucket.open_range(key, wanted.first, wanted.last)
        headers["Content-Length"] = str(wanted.length)
        headers["Content-Range"] = f"bytes {wanted.first}-{wanted.last}/{size}"
        status = 206

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await bucket.read_chunk(body, CHUNK_BYTES):
                yield chunk
        finally:
            body.close()

    return StreamingResponse(chunks(), status_code=status, media_type=MEDIA_TYPE, headers=headers)
