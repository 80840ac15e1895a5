"""One mapping from an error to the client's answer, for /v1 and /easy alike.

An error knows its HTTP status and whether a retry can help (orchestrator.errors); this
module adds what the answer carries besides: the headers (when to retry, how to
authenticate, whether the connection stays open), and a message for an untyped error
that names no server path (`errors.describe`). /v1 sends `status` with an `ErrorBody`;
/easy sends HTTP 200 with a HeyGem code chosen from `status` (orchestrator.api.heygem).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.responses import JSONResponse

from orchestrator.api.schemas import ErrorBody, ErrorDetail
from orchestrator.errors import (
    Backlogged,
    DependencyUnavailable,
    Unauthorized,
    unwrap,
)

REQUEST_TIMEOUT, PAYLOAD_TOO_LARGE = 408, 413
# Retry-After of a dependency outage: the gate checks a dependency that is down at least
# once a second, so a few seconds is soon enough and spares the service a storm of retries.
OUTAGE_RETRY_AFTER_S = 5
# Statuses of refusals that are not PipelineErrors (Starlette's own) that a retry can cure.
_RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    stage: str
    message: str
    retryable: bool
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """One line for a client that shows only a message (HeyGem's `msg`)."""
        advice = (
            "temporary: the same request can succeed later"
            if self.retryable
            else "retrying the same request will not help"
        )
        return f"{self.stage}: {self.message} ({advice})"


def error_answer(error: BaseException, stage: str = "server") -> ErrorAnswer:
    """The answer to `error`; an untyped one is a fault of `stage`, described without
    server paths."""
    # Typed where the error has a meaning of its own (a task group's cause, a full disk).
    error = unwrap(error, stage)
    status = error.http_status
    headers: dict[str, str] = {}
    if isinstance(error, Backlogged):
        headers["Retry-After"] = str(error.retry_after_s)
    elif isinstance(error, DependencyUnavailable):
        headers["Retry-After"] = str(OUTAGE_RETRY_AFTER_S)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if status in (REQUEST_TIMEOUT, PAYLOAD_TOO_LARGE):
        # The rest of the body is not wanted: closing stops the client sending it
        # (otherwise the server would keep reading it to reuse the connection, and a
        # slow client that ignores a 408 would hold the connection on).
        headers["Connection"] = "close"
    return ErrorAnswer(status, error.stage, error.message, error.retryable, headers)


def status_answer(
    status: int, stage: str, message: str, headers: dict[str, str] | None = None
) -> ErrorAnswer:
    """The answer to a refusal that is only a status (a validation error, Starlette's
    HTTPException)."""
    return ErrorAnswer(status, stage, message, status in _RETRYABLE_STATUSES, headers or {})


def v1_response(answer: ErrorAnswer) -> JSONResponse:
    """The /v1 answer: the status, an `ErrorBody`, the headers."""
    detail = ErrorDetail(stage=answer.stage, message=answer.message, retryable=answer.retryable)
    return JSONResponse(
        ErrorBody(error=detail).model_dump(), status_code=answer.status, headers=answer.headers
    )
