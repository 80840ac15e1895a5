"""Blocking calls (PyAV, OpenCV, file system, SQLite, boto3) run in a thread pool, awaited.

One typed way to do it: `run_blocking(pool, fn, *args, **kwargs)` is checked against
`fn`'s own signature, where `loop.run_in_executor(pool, fn, *args)` accepts anything and
takes no keyword arguments.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def run_blocking(
    pool: Executor, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """`fn(*args, **kwargs)` in `pool`, without blocking the event loop.

    Cancelling the await does not stop a call already running in a thread: callers that
    must know it has ended shut the pool down (`shutdown(wait=True)`)."""
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)
