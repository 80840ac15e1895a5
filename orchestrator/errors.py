"""Typed errors: every failure says which stage failed and why, never an empty message."""

from __future__ import annotations

import errno
import re
from pathlib import PurePath

# An absolute path in a message: a '/' not preceded by a word character, ':' or '/', so
# the '//' of a URL and a ratio like '3/4' are left alone.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])/[^\s'\"(),;]+")
# How much of a file's name a message shows.
NAME_CHARS = 80


class PipelineError(Exception):
    """Root of the project's errors; carries the stage and a human message.

    Each class knows how it is answered: `http_status` (the one mapping /v1, /easy and
    webhooks share) and `retryable` (whether the same request can succeed later without
    changing it: an outage or a full backlog can, bad input cannot)."""

    http_status: int = 500
    retryable: bool = False

    def __init__(self, stage: str, message: str) -> None:
        message = message.strip() or f"{type(self).__name__} with no detail"
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message

    def as_record(self) -> dict[str, str]:
        return {"stage": self.stage, "message": self.message}


class BadInput(PipelineError):
    """The caller's input cannot be used (exit status 2, HTTP 4xx)."""

    http_status = 422


class DependencyUnavailable(PipelineError):
    """A service the work needs (Triton, object storage, the job store) is down or too slow
    to answer. Nobody's fault: the work waits and runs again (HTTP 503)."""

    http_status = 503
    retryable = True


# The "model" of an error that concerns the whole Triton server, not one model.
SERVER = "server"


class InferenceError(PipelineError):
    """Triton could not serve a request; carries the model and Triton's own message."""

    def __init__(self, model: str, message: str, stage: str = "infer") -> None:
        super().__init__(stage, message if model == SERVER else f"model '{model}': {message}")
        self.model = model


class TritonUnavailable(InferenceError, DependencyUnavailable):
    """Triton (or the model) could not be reached within the retry deadline."""

    http_status = 503
    retryable = True


class TritonTimeout(InferenceError):
    """A request ran past its deadline."""

    retryable = True


class TritonRejected(InferenceError):
    """Triton answered with an error (bad request, queue full, model failure)."""


class ContractMismatch(InferenceError):
    """A model's tensors are not what the pipeline needs; a start-up error."""


class DiskFull(DependencyUnavailable):
    """The local disk (the data directory) has no room for a file: the work waits or fails
    with this reason, and a submission is answered 507 until space is freed."""

    http_status = 507


# What the operating system says when a write finds no room (full, or over a quota).
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def unwrap(error: BaseException, stage: str) -> PipelineError:
    """The error to report for a failure: the first PipelineError inside an exception group
    (the root cause; the others are usually its consequences, such as a queue's consumer
    failing after its producer did), keeping its type; else the first error, described
    without server paths and given `stage`."""
    if isinstance(error, BaseExceptionGroup):
        leaves = _leaves(error)
        for leaf in leaves:
            if isinstance(leaf, PipelineError):
                return leaf
        error = leaves[0] if leaves else error
    if isinstance(error, PipelineError):
        return error
    if isinstance(error, OSError) and error.errno in _NO_ROOM:
        return DiskFull(stage, f"disk full: {describe(error)}")
    return PipelineError(stage, describe(error))


def describe(error: BaseException) -> str:
    """A one-line account of an untyped error that names files, never server paths: an
    OSError's file by its name, absolute paths in other messages by their last part."""
    if isinstance(error, OSError) and error.strerror:
        name = _short(PurePath(str(error.filename)).name) if error.filename else ""
        return f"{error.strerror} ({name})" if name else error.strerror
    text = _ABSOLUTE_PATH.sub(lambda m: PurePath(m.group(0)).name or "/", str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _short(name: str) -> str:
    """A file name as a message shows it: a client's over-long name is cut short."""
    return name if len(name) <= NAME_CHARS else f"{name[:NAME_CHARS]}…"


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


class LimitExceeded(BadInput):
    """An input is over a configured limit; `status` is the HTTP answer (413 or 422)."""

    def __init__(self, stage: str, message: str, status: int = 422) -> None:
        super().__init__(stage, message)
        self.status = status
        self.http_status = status  # 413 for a body too large, 422 for media over a limit


class NotFound(PipelineError):
    """The named job or avatar does not exist (HTTP 404)."""

    http_status = 404


class Conflict(PipelineError):
    """The request clashes with the resource's state (HTTP 409)."""

    http_status = 409


class Backlogged(PipelineError):
    """The backlog is full; try again after `retry_after_s` (HTTP 429)."""

    http_status = 429
    retryable = True

    def __init__(self, stage: str, message: str, retry_after_s: int) -> None:
        super().__init__(stage, message)
        self.retry_after_s = retry_after_s


class Unauthorized(PipelineError):
    """The request carries no valid API key (HTTP 401)."""

    http_status = 401
