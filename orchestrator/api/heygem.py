"""HeyGem's data folder (DH_HEYGEM_DATA_DIR): inputs named inside it, results written to it.

HeyGem's containers mount this folder at `/code/data`, and its desktop app keeps inputs
and results in the folder's `temp/`. The app names inputs relative to `temp/` (or as
container paths under `/code/data`), and finds a result by joining `data.result`
(`/<code>-r.mp4`) onto `temp/`. So a drop-in reads inputs from there and writes each
result to `temp/<code>-r.mp4` before it reports the task done.

Server-side paths are resolved (symlinks, `..`) and must stay inside an allowed folder:
HeyGem's (when set) and DH_LOCAL_INPUT_DIR (when set), tried in that order.

HeyGem's answers: always HTTP 200 with one of its codes (orchestrator.api.routes.easy says
why). A refusal is the shared error answer (orchestrator.api.answers) in that form: the
code follows the answer's HTTP status, `msg` says whether retrying helps.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel
from starlette.responses import JSONResponse

from orchestrator.api.answers import ErrorAnswer
from orchestrator.blocking import run_blocking
from orchestrator.errors import BadInput, PipelineError, describe
from orchestrator.files import atomic_write
from orchestrator.jobs.store import JobRecord
from orchestrator.settings import Settings
from orchestrator.storage import Storage

STAGE = "fetch"
# How much of a client's over-long reference a message repeats.
SHOWN_CHARS = 200
# HeyGem's response codes (ResponseCode in its app_local.py).
SUCCESS, BUSY, BAD_PARAM, NOT_FOUND, SYSTEM_ERROR = 10000, 10001, 10002, 10004, 9999
TOO_MANY_REQUESTS, UNAUTHORIZED, HTTP_NOT_FOUND = 429, 401, 404
RESULT_STAGE = "result"
# Where HeyGem's containers see the data folder (its docker-compose volumes).
CONTAINER_ROOT = PurePosixPath("/code/data")
# The data folder's subfolder that HeyGem's app reads and writes (its assetPath.model).
WORK_FOLDER = "temp"
RESULT_SUFFIX = "-r.mp4"  # HeyGem names a result `<code>-r.mp4`
# A code becomes a file name: one plain name, no separators, no leading dot.
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class InputRoot:
    """A folder that server-side input paths may point into."""

    root: Path  # everything must resolve inside it
    base: Path  # where a relative name starts
    container_root: PurePosixPath | None  # an absolute prefix that stands for `root`
    setting: str  # named in refusals


def input_roots(settings: Settings, heygem: bool = True) -> list[InputRoot]:
    """The folders server-side paths may name: HeyGem's first (for /easy), then
    DH_LOCAL_INPUT_DIR."""
    roots: list[InputRoot] = []
    if heygem and settings.heygem_data_dir is not None:
        folder = settings.heygem_data_dir
        roots.append(InputRoot(folder, folder / WORK_FOLDER, CONTAINER_ROOT, "DH_HEYGEM_DATA_DIR"))
    if settings.local_input_dir is not None:
        folder = settings.local_input_dir
        roots.append(InputRoot(folder, folder, None, "DH_LOCAL_INPUT_DIR"))
    return roots


def resolve_input(reference: str, what: str, roots: list[InputRoot]) -> Path:
    """The existing file that a server-side `reference` names inside one of `roots`.

    BadInput (naming `what`) when no folder is allowed, the path is not a valid path,
    it leaves every allowed folder, or no such file exists there."""
    if not roots:
        raise BadInput(
            STAGE,
            f"{what}: '{_shown(reference)}' is not a URL, and server-side paths are not accepted "
            "here (neither DH_LOCAL_INPUT_DIR nor DH_HEYGEM_DATA_DIR is set)",
        )
    if "\x00" in reference:
        raise BadInput(STAGE, f"{what}: the path contains a NUL byte")
    inside_some_root = False
    for allowed in roots:
        try:
            root = allowed.root.resolve()
            source = _candidate(reference, allowed).resolve()
            if not source.is_relative_to(root):
                continue
            inside_some_root = True
            if source.is_file():
                return source
        except (OSError, ValueError, RuntimeError) as exc:  # too long, a symlink loop…
            raise BadInput(
                STAGE, f"{what}: '{_shown(reference)}' is not a usable path ({describe(exc)})"
            ) from None
    if not inside_some_root:
        folders = ", ".join(r.setting for r in roots)
        raise BadInput(
            STAGE,
            f"{what}: '{_shown(reference)}' is outside the allowed input directory ({folders})",
        )
    raise BadInput(STAGE, f"{what}: no such file '{_shown(reference)}' in the input directory")


def _shown(reference: str) -> str:
    """The client's own reference, cut short enough to read in a message."""
    return reference if len(reference) <= SHOWN_CHARS else f"{reference[:SHOWN_CHARS]}…"


def _candidate(reference: str, allowed: InputRoot) -> Path:
    if allowed.container_root is not None:
        posix = PurePosixPath(reference)
        if posix.is_relative_to(allowed.container_root):
            return allowed.root / posix.relative_to(allowed.container_root)
    # An absolute reference replaces the base: it is allowed only if it is inside root.
    return allowed.base / reference


def check_code(code: str) -> None:
    """A code names the result file in HeyGem's folder, so it must be one plain name."""
    if not _CODE.fullmatch(code):
        raise BadInput(
            "request",
            "code must be 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (it names the result file)",
        )


def result_reference(code: str) -> str:
    """`data.result` as HeyGem's app expects it: joined onto its temp/ folder."""
    return f"/{code}{RESULT_SUFFIX}"


def result_file(data_dir: Path, code: str) -> Path:
    return data_dir / WORK_FOLDER / f"{code}{RESULT_SUFFIX}"


def place_result(result: Path, target: Path) -> Path:
    """Puts `result` at `target` atomically: a hard link when both are on one file system
    (no copy of a large file), else a copy; either under a temporary name, then renamed,
    so HeyGem's app never finds a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as partial:
        try:
            os.link(result, partial)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(result, partial)
    return target


SucceededHook = Callable[[JobRecord], Awaitable[None]]


def result_copy(settings: Settings) -> Callable[[JobRecord], Path | None]:
    """Where the result of a job from /easy/submit was placed in HeyGem's folder (retention
    removes it with the job)."""
    data_dir = settings.heygem_data_dir

    def copy_of(job: JobRecord) -> Path | None:
        if data_dir is None or job.client_code is None:
            return None
        return result_file(data_dir, job.client_code)

    return copy_of


def result_placer(settings: Settings, storage: Storage, pool: Executor) -> SucceededHook | None:
    """The scheduler's hook for a job that succeeded: a job that came through /easy/submit
    (it has a client code) gets its MP4 into HeyGem's folder. None when no folder is set."""
    data_dir = settings.heygem_data_dir
    if data_dir is None:
        return None

    async def place(job: JobRecord) -> None:
        if job.client_code is None:
            return
        target = result_file(data_dir, job.client_code)
        try:
            await run_blocking(pool, place_result, storage.result_path(job.id), target)
        except OSError as exc:
            raise PipelineError(
                RESULT_STAGE, f"writing the result to {target} failed: {exc}"
            ) from None

    return place


def heygem_response(
    code: int,
    msg: str,
    data: BaseModel | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An answer in HeyGem's form: always HTTP 200, the outcome in `code`."""
    if isinstance(data, BaseModel):
        data = data.model_dump(exclude_none=True)
    body = {"code": code, "success": code == SUCCESS, "msg": msg, "data": data or {}}
    return JSONResponse(body, headers=headers)


def heygem_code(answer: ErrorAnswer) -> int:
    """HeyGem's code for a refusal, from its HTTP status."""
    if answer.status == TOO_MANY_REQUESTS:
        return BUSY
    if answer.status == HTTP_NOT_FOUND:
        return NOT_FOUND
    if answer.status == UNAUTHORIZED:
        # HeyGem's app sends no key, and none of its codes means "unauthorised": a
        # system error (it stops the task) whose message says what is missing.
        return SYSTEM_ERROR
    if 400 <= answer.status < 500:
        return BAD_PARAM  # bad input, a reused code, a body over its bound or too slow
    return SYSTEM_ERROR  # an outage (retryable, and `msg` says so) or a fault


def heygem_refusal(answer: ErrorAnswer) -> JSONResponse:
    """A refusal in HeyGem's form; the detail rides in `data`, headers as /v1 sends them."""
    data = {"stage": answer.stage, "message": answer.message, "retryable": answer.retryable}
    return heygem_response(heygem_code(answer), answer.summary, data, answer.headers)
