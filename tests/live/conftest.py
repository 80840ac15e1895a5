"""Fixtures of the live-session tests: the HTTP tests' prepared avatar and servers."""

from __future__ import annotations

from tests.api.conftest import (  # noqa: F401 - fixtures, registered by import
    api_media,
    avatar_cache,
    avatar_video,
    server_factory,
)
