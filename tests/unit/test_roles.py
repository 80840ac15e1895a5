"""Roles compose the service: what each needs, and which routes each app answers."""

from __future__ import annotations

from pathlib import Path

from orchestrator.api.app import create_app
from orchestrator.roles import API, SERVE, WORKER, needs
from orchestrator.settings import Settings

PROBES = {"/healthz", "/readyz", "/metrics"}


def test_only_a_role_that_renders_needs_triton() -> None:
    assert needs(API) == ("store", "storage")
    assert needs(WORKER) == ("triton", "store", "storage")
    assert needs(SERVE) == needs(WORKER)


def test_each_app_answers_its_roles_routes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    paths = {
        name: set(create_app(settings, roles).openapi()["paths"])
        for name, roles in (("serve", SERVE), ("api", API), ("worker", WORKER))
    }

    assert paths["worker"] == PROBES
    assert paths["api"] == paths["serve"] - {"/v1/system"}
    assert {"/v1/jobs", "/v1/avatars", "/easy/submit"} <= paths["api"]
    assert "/v1/system" in paths["serve"]
