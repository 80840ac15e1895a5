"""What the stage modules share: the item types on their queues, timing and error guards."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np

from orchestrator.blocking import run_blocking
from orchestrator.errors import PipelineError, unwrap

P = ParamSpec("P")
T = TypeVar("T")
# Queue depth between stages, in frames: enough to keep every stage busy, small enough
# that memory does not depend on the length of the audio.
FRAME_QUEUE_DEPTH = 64
END = None  # sent down a queue after the last item


@dataclass(frozen=True)
class DrivenFrame:
    """One output frame as the drive stage hands it on."""

    index: int  # output frame number
    avatar_index: int
    frame: np.ndarray  # BGR uint8, the avatar frame (read-only)
    box: tuple[int, int, int, int] | None  # padded face box, None where no face was found
    mel_window: np.ndarray  # [80, 16]


@dataclass(frozen=True)
class GeneratedFrame:
    driven: DrivenFrame
    # Generated face crop, BGR uint8 [S, S, 3] ([R, R, 3] when restored at the restorer's R).
    face: np.ndarray | None
    # The crop of the box the model was given, BGR uint8 [S, S, 3]: composite in delta mode
    # blends the change between the two, and should not resize the box a second time.
    given: np.ndarray | None = None


@dataclass
class StageClock:
    """Busy time per stage: how long each stage really worked, not how long it waited."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    async def run(
        self, stage: str, pool: Executor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`fn(*args, **kwargs)` in the thread pool, timed under `stage`."""
        started = time.perf_counter()
        try:
            return await run_blocking(pool, fn, *args, **kwargs)
        finally:
            self.add(stage, time.perf_counter() - started)


async def guarded(stage: str, work: Coroutine[Any, Any, T]) -> T:
    """Runs a stage's task; any error that is not already typed gets the stage's name, and
    an exception group (a stage with a task group of its own) is unwrapped to the error
    that means something, keeping its type, so bad input stays bad input."""
    try:
        return await work
    except PipelineError:
        raise
    except Exception as exc:
        error = unwrap(exc, stage)
        # A leaf of a group carries its own traceback; chaining it to the group that holds
        # it would make a cycle.
        raise error from (None if isinstance(exc, BaseExceptionGroup) else exc)
