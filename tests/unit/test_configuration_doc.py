"""docs/configuration.md is generated from Settings; these fail when it falls behind."""

from __future__ import annotations

from orchestrator.settings import Settings
from orchestrator.settings_doc import PAGE, REGENERATE, main, render, undescribed

HOW = f"regenerate it with `.venv/bin/{REGENERATE}`"


def test_every_setting_has_a_description() -> None:
    assert not undescribed(), (
        f"add description= to these fields in orchestrator/settings.py, then {HOW}: "
        f"{', '.join(undescribed())}"
    )


def test_the_configuration_page_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), f"{PAGE} is stale: {HOW}"


def test_every_setting_has_a_row_with_its_variable() -> None:
    rows = [line for line in render().splitlines() if line.startswith("| `DH_")]
    assert [row.split("`")[1] for row in rows] == [
        f"DH_{name.upper()}" for name in Settings.model_fields
    ]


def test_types_defaults_and_bounds_are_written_as_the_environment_takes_them() -> None:
    rows = {line.split("`")[1]: line for line in render().splitlines() if line.startswith("| `DH_")}
    assert "| duration, > 0s | `7d` |" in rows["DH_RESULT_TTL"]
    assert '| list of str (JSON) | `["https"]` |' in rows["DH_URL_FETCH_ALLOWED_SCHEMES"]
    assert "| `stream` \\| `redirect` | `stream` |" in rows["DH_S3_RESULT_DELIVERY"]
    assert "| secret (optional) | unset |" in rows["DH_DATABASE_URL"]
    assert "| int, ≥ 0, ≤ 65535 | `8080` |" in rows["DH_PORT"]


def test_check_mode_passes_on_the_current_page() -> None:
    assert main(["--check"]) == 0
