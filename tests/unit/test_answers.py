"""One mapping from an error to the client's answer: /v1's status and body, /easy's
HeyGem code, both saying whether a retry can help."""

from __future__ import annotations

import json

import pytest

from orchestrator.api.answers import (
    OUTAGE_RETRY_AFTER_S,
    error_answer,
    status_answer,
    v1_response,
)
from orchestrator.api.heygem import (
    BAD_PARAM,
    BUSY,
    NOT_FOUND,
    SYSTEM_ERROR,
    heygem_code,
    heygem_refusal,
)
from orchestrator.errors import (
    Backlogged,
    BadInput,
    Conflict,
    LimitExceeded,
    NotFound,
    PipelineError,
    TritonUnavailable,
    Unauthorized,
)
from orchestrator.jobs.store import StoreUnavailable
from orchestrator.storage import StorageUnavailable


@pytest.mark.parametrize(
    "outage",
    [
        TritonUnavailable("server", "Triton at 127.0.0.1:1 unavailable for 1.0 s"),
        StorageUnavailable("storage", "object storage s3://dh at x: refused"),
        StoreUnavailable("store", "PostgreSQL at db:5432/dh is unavailable: refused"),
    ],
)
def test_a_dependency_outage_is_a_retryable_503_with_retry_after(outage: PipelineError) -> None:
    answer = error_answer(outage)
    assert (answer.status, answer.retryable) == (503, True)
    assert answer.headers["Retry-After"] == str(OUTAGE_RETRY_AFTER_S)
    assert heygem_code(answer) == SYSTEM_ERROR
    assert "can succeed later" in answer.summary


def test_bad_input_is_a_422_that_a_retry_cannot_cure() -> None:
    answer = error_answer(BadInput("limits", "the audio is 31.0 s long"))
    assert (answer.status, answer.retryable, answer.headers) == (422, False, {})
    assert heygem_code(answer) == BAD_PARAM
    assert (
        answer.summary
        == "limits: the audio is 31.0 s long (retrying the same request will not help)"
    )


def test_an_untyped_error_is_a_500_naming_no_server_path() -> None:
    answer = error_answer(OSError(2, "No such file or directory", "/srv/data/jobs/x/audio.wav"))
    assert (answer.status, answer.stage, answer.retryable) == (500, "server", False)
    assert answer.message == "No such file or directory (audio.wav)"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (Backlogged("admission", "the backlog is full", 7), 429, BUSY),
        (NotFound("jobs", "no job with id 'x'"), 404, NOT_FOUND),
        (Conflict("request", "a task with code 'c' exists already"), 409, BAD_PARAM),
        (LimitExceeded("request", "the body is too large", 413), 413, BAD_PARAM),
        (Unauthorized("auth", "this server needs an API key"), 401, SYSTEM_ERROR),
    ],
)
def test_statuses_and_heygem_codes(error: PipelineError, status: int, code: int) -> None:
    answer = error_answer(error)
    assert answer.status == status
    assert heygem_code(answer) == code


def test_headers_say_when_to_retry_how_to_authenticate_and_to_stop_sending() -> None:
    assert error_answer(Backlogged("admission", "full", 7)).headers == {"Retry-After": "7"}
    assert error_answer(Unauthorized("auth", "no key")).headers == {"WWW-Authenticate": "Bearer"}
    too_large = LimitExceeded("request", "too large", 413)
    assert error_answer(too_large).headers == {"Connection": "close"}


def test_v1_and_easy_carry_the_same_answer() -> None:
    answer = error_answer(StorageUnavailable("storage", "object storage: refused"))

    v1 = v1_response(answer)
    easy = heygem_refusal(answer)

    assert v1.status_code == 503 and v1.headers["Retry-After"] == str(OUTAGE_RETRY_AFTER_S)
    assert json.loads(bytes(v1.body)) == {
        "error": {"stage": "storage", "message": "object storage: refused", "retryable": True}
    }
    body = json.loads(bytes(easy.body))
    assert easy.status_code == 200 and easy.headers["Retry-After"] == str(OUTAGE_RETRY_AFTER_S)
    assert body["code"] == SYSTEM_ERROR and body["success"] is False
    assert body["msg"].startswith("storage: object storage: refused (temporary")
    assert body["data"] == {
        "stage": "storage",
        "message": "object storage: refused",
        "retryable": True,
    }


def test_a_plain_status_is_retryable_only_when_waiting_helps() -> None:
    assert status_answer(422, "request", "bad form").retryable is False
    assert status_answer(503, "http", "busy").retryable is True
