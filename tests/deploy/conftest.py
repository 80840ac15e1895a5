"""Fixtures for the deployment files: docker-compose.yml as compose would resolve it with the
committed .env.example, and the files it names. No Docker is needed for any of them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"

# Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error},
# ${VAR:+replacement}, ${VAR+replacement}; "$$" is a literal "$".
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file; comments and blank lines skipped."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: '{line}' is not KEY=VALUE"
        values[key.strip()] = value.strip()
    return values


def compose_variables(text: str) -> set[str]:
    return {match.group(1) for match in _VARIABLE.finditer(text)}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """`value` with every ${...} resolved the way docker compose resolves it."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        is_set = name in env
        is_non_empty = bool(env.get(name))
        present = is_non_empty if operator and operator.startswith(":") else is_set
        if operator in (":-", "-"):
            return env[name] if present else argument
        if operator in (":?", "?"):
            if not present:
                raise AssertionError(f"compose would stop: ${{{name}}} {argument}")
            return env[name]
        if operator in (":+", "+"):
            return argument if present else ""
        return env.get(name, "")

    return _VARIABLE.sub(substitute, value).replace("$$", "$")


@pytest.fixture(scope="session")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="session")
def raw_compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.fixture(scope="session")
def compose(raw_compose: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    """docker-compose.yml with its variables filled in from .env.example (as after `cp`)."""
    filled: dict[str, Any] = interpolate(raw_compose, env_example)
    return filled


@pytest.fixture(scope="session")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services
