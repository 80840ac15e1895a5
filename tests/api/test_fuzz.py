"""A property-based fuzz of every operation in /openapi.json against a real `dh serve`:
no input makes the server answer 5xx, and every answer is one the schema declares, in
the shape it declares.

Schemathesis draws each request from the operation's schema, both fitting it (positive)
and breaking it (negative). Random bytes are never media and random ids never exist, so
on top of what it draws, some draws swap in real inputs: a real speech file, the real
avatar video, the ids of a registered avatar and of a finished job, and Range headers on
the result. That way the uploads get past "not media", the id routes past 404, and the
result route serves bytes, so the fuzz reaches the code behind the validation layer.

The server has an API key and the fuzz sends it: that is how the service runs anywhere
but a developer's loopback, and a fuzz refused at 401 would prove nothing. Its audio
limit is a few seconds, so no drawn input can make it render for long. Draws are
derandomized: CI sees the same requests on every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from orchestrator.api.app import create_app
from orchestrator.settings import Settings
from tests.api.conftest import API_KEY, ServerFactory, register_avatar
from tests.api.server import ApiServer, submit_job, wait_for_job

# Per operation and generation mode; 15 operations x 2 modes x this stays well under a
# minute on 2 cores.
EXAMPLES = 40
REQUEST_TIMEOUT_S = 30.0
MAX_AUDIO_S = 3.0
# The whole contract, from the app itself: a route added later is fuzzed without a change here.
OPENAPI = create_app(Settings()).openapi()


def _modes(operation: dict[str, Any]) -> list[GenerationMode]:
    """Negative draws need something to break: a body or a query parameter (a path
    parameter is any string, so nothing in a path can be out of schema)."""
    query = [p for p in operation.get("parameters", []) if p["in"] == "query"]
    if "requestBody" in operation or query:
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


# Deleting runs last, so the ids the other operations are given still exist.
OPERATIONS = sorted(
    (
        (path, method.upper(), mode)
        for path, item in OPENAPI["paths"].items()
        for method, operation in item.items()
        for mode in _modes(operation)
    ),
    key=lambda op: (op[1] == "DELETE", op[0], op[1], op[2]),
)
RANGES = ["bytes=0-99", "bytes=100-", "bytes=-50", "bytes=0-0", "bytes=10-5", "bytes=999999999-"]
RANGES += ["bytes=0-1,5-9", "bytes=abc", "items=0-1", "bytes=-0", ""]


@pytest.fixture(scope="module")
def fuzzed(server_factory: ServerFactory) -> ApiServer:
    return server_factory(
        api_key=API_KEY,
        max_audio_seconds=MAX_AUDIO_S,
        max_upload_bytes=2 * 1024**2,
        max_backlog=64,
        request_body_timeout_s=2.0,
    )


@pytest.fixture(scope="module")
def real_inputs(fuzzed: ApiServer, avatar_video: Path, tiny_speech: Path) -> dict[str, Any]:
    """Ids that exist on the fuzzed server and media it accepts."""
    avatar_id = register_avatar(fuzzed, avatar_video)
    with fuzzed.client() as client:
        reply = submit_job(client, tiny_speech, avatar_id=avatar_id)
        assert reply.status_code == 202, reply.text
        job = wait_for_job(client, reply.json()["id"])
    assert job["state"] == "succeeded", job
    return {
        "job_id": job["id"],
        "avatar_id": avatar_id,
        "audio": tiny_speech.read_bytes(),
        "video": avatar_video.read_bytes(),
    }


@pytest.fixture(scope="module")
def schema(fuzzed: ApiServer) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed.base_url}/openapi.json")


def _with_real_inputs(case: Any, data: st.DataObject, real: dict[str, Any]) -> None:
    """Swaps some drawn values for real ones (each swap is itself drawn)."""
    for name in list(case.path_parameters or {}):
        if name in real and data.draw(st.booleans(), label=f"real {name}"):
            case.path_parameters[name] = real[name]
    if isinstance(case.body, dict):
        for name, value in real.items():
            if name in case.body and data.draw(st.booleans(), label=f"real {name}"):
                case.body[name] = value
    if case.path.endswith("/result") and data.draw(st.booleans(), label="range"):
        case.headers = {**(case.headers or {}), "Range": data.draw(st.sampled_from(RANGES))}


@pytest.mark.parametrize(
    ("path", "method", "mode"), OPERATIONS, ids=[f"{m} {p} {g.value}" for p, m, g in OPERATIONS]
)
def test_no_input_makes_a_route_fail_or_leave_its_schema(
    schema: Any,
    fuzzed: ApiServer,
    real_inputs: dict[str, Any],
    path: str,
    method: str,
    mode: GenerationMode,
) -> None:
    operation = schema[path][method]
    auth = {"Authorization": f"Bearer {API_KEY}"}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its request
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def fuzz(case: Any, data: st.DataObject) -> None:
        _with_real_inputs(case, data, real_inputs)
        case.call_and_validate(
            base_url=fuzzed.base_url,
            headers=auth,
            checks=[not_a_server_error, response_schema_conformance, status_code_conformance],
            timeout=REQUEST_TIMEOUT_S,
        )

    fuzz()


def test_the_server_logged_no_unhandled_error(fuzzed: ApiServer) -> None:
    assert "unhandled error" not in fuzzed.log(lines=100_000)
