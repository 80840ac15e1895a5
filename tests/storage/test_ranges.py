"""The Range header of a result download, as the streamed S3 delivery reads it."""

from __future__ import annotations

import pytest

from orchestrator.errors import BadInput
from orchestrator.storage.delivery import ByteRange, Unsatisfiable, parse_range
from orchestrator.storage.objects import S3Location

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", ByteRange(0, 99)),
        ("bytes=900-", ByteRange(900, 999)),
        ("bytes=-100", ByteRange(900, 999)),
        ("bytes=-5000", ByteRange(0, 999)),
        ("bytes=990-5000", ByteRange(990, 999)),
        ("bytes=0-0", ByteRange(0, 0)),
        # Not one byte range: ignored, the whole file is sent (RFC 9110 14.2).
        ("bytes=0-1,5-6", None),
        ("items=0-9", None),
        ("bytes=9-3", None),
        ("bytes=-", None),
    ],
)
def test_a_single_byte_range_is_read_and_anything_else_ignored(
    header: str | None, expected: ByteRange | None
) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_a_range_past_the_end_is_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, SIZE)


def test_the_storage_url_names_a_bucket_and_a_prefix() -> None:
    location = S3Location.parse("s3://my-bucket/a/b/", "http://user:pw@minio:9000")

    assert (location.bucket, location.prefix) == ("my-bucket", "a/b")
    assert location.key("jobs", "j1", "result.mp4") == "a/b/jobs/j1/result.mp4"
    assert location.endpoint == "http://minio:9000"  # user info never shown
    assert S3Location.parse("s3://my-bucket", None).key("x") == "x"


@pytest.mark.parametrize("url", ["http://bucket/p", "s3:///p", "s3://Bad_Bucket/p", "s3://ab/p"])
def test_a_storage_url_that_is_not_an_s3_bucket_is_refused(url: str) -> None:
    with pytest.raises(BadInput, match="DH_STORAGE_URL"):
        S3Location.parse(url, None)
