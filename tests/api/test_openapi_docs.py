"""docs/api.md cannot drift from the API: every operation in the OpenAPI schema has its
section there, every section names a real operation, and every status an operation
declares is written down. The schema is built from the app itself; nothing is started."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.api.app import create_app
from orchestrator.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
# "### `POST /v1/jobs` — submit": the heading of an operation's section.
OPERATION_HEADING = re.compile(r"^### `([A-Z]+) (/[^`?\s]*)[^`]*`", re.MULTILINE)
ANY_HEADING = re.compile(r"^#{1,3} ", re.MULTILINE)
# The plain success status needs no words; every other one does.
UNREMARKABLE = {"200"}


def _normalized(path: str) -> str:
    """Path parameters by position only: the docs write {id} where the schema has {job_id}."""
    return re.sub(r"\{[^}]*\}", "{}", path)


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return create_app(Settings()).openapi()


@pytest.fixture(scope="module")
def documented() -> dict[tuple[str, str], str]:
    """(METHOD, path) -> the text of its section, up to the next heading."""
    text = DOCS.read_text()
    sections: dict[tuple[str, str], str] = {}
    for heading in OPERATION_HEADING.finditer(text):
        following = ANY_HEADING.search(text, heading.end())
        end = following.start() if following else len(text)
        sections[(heading.group(1), _normalized(heading.group(2)))] = text[heading.start() : end]
    return sections


def _operations(openapi: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), _normalized(path)): operation
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
    }


def _conventions(text: str) -> str:
    start = text.index("## Conventions")
    return text[start : text.index("\n## ", start + 1)]


def test_every_operation_has_a_section_in_the_docs(
    openapi: dict[str, Any], documented: dict[tuple[str, str], str]
) -> None:
    missing = sorted(set(_operations(openapi)) - set(documented))
    assert not missing, f"operations with no '### `METHOD /path`' section in {DOCS}: {missing}"


def test_every_documented_operation_exists(
    openapi: dict[str, Any], documented: dict[tuple[str, str], str]
) -> None:
    stale = sorted(set(documented) - set(_operations(openapi)))
    assert not stale, f"sections in {DOCS} for operations the API does not have: {stale}"


def test_every_declared_status_is_documented(
    openapi: dict[str, Any], documented: dict[tuple[str, str], str]
) -> None:
    """In the operation's own section, or in the error table of the Conventions."""
    conventions = _conventions(DOCS.read_text())
    undocumented = []
    for key, operation in sorted(_operations(openapi).items()):
        section = documented.get(key, "")
        for status in operation["responses"]:
            if status in UNREMARKABLE:
                continue
            if f"`{status}`" not in section and f"| {status} |" not in conventions:
                undocumented.append(f"{key[0]} {key[1]}: {status}")
    assert not undocumented, f"statuses the schema declares but {DOCS} never mentions: " + (
        ", ".join(undocumented)
    )


def test_the_schema_carries_the_shapes_of_the_answers(openapi: dict[str, Any]) -> None:
    """Every JSON answer of a /v1 route names a schema (no bare 'any object')."""
    shapeless = []
    for path, item in openapi["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                for media, content in response.get("content", {}).items():
                    schema = content.get("schema", {})
                    if media == "application/json" and not ({"$ref", "type"} & set(schema)):
                        shapeless.append(f"{method.upper()} {path} {status}")
    assert not shapeless, shapeless
    job = openapi["components"]["schemas"]["JobDocument"]
    assert job["properties"]["state"] == {"$ref": "#/components/schemas/JobState"}
    states = openapi["components"]["schemas"]["JobState"]["enum"]
    assert states == ["queued", "running", "succeeded", "failed", "cancelled"]
    error = openapi["components"]["schemas"]["ErrorDetail"]["properties"]
    assert error["retryable"]["type"] == "boolean"
