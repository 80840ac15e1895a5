"""docs/configuration.md, written from `Settings` itself: one source for every setting.

`python -m orchestrator.settings_doc` rewrites the page; `--check` only says whether it is
current (exit status 1 when stale), which is what tests/unit/test_configuration_doc.py asks.
"""

from __future__ import annotations

import argparse
import sys
import types
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from orchestrator.settings import Settings

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
REGENERATE = "python -m orchestrator.settings_doc"

_HEADER = f"""# Configuration

<!-- Generated from orchestrator/settings.py by `{REGENERATE}`; do not edit by hand. -->

Every setting is a field of `Settings` (`orchestrator/settings.py`), read once at start-up
from environment variables named after the field with the prefix `DH_` (`triton_url` is
`DH_TRITON_URL`); nothing else reads the environment. A value that does not fit its type
or bounds stops the start-up with one line naming the variable. Lists are JSON, e.g.
`DH_URL_FETCH_ALLOWED_HOSTS='["cdn.example.com"]'`; durations such as `DH_RESULT_TTL` take
seconds, `30m`, `12h`, `7d` or ISO-8601 (`P7D`). Secrets are never logged or reported.

| variable | type | default | description |
| --- | --- | --- | --- |
"""

_BOUNDS = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "≤"),
)


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return " | ".join(_type_name(a) for a in members) + " (optional)"
    if origin is list:
        (item,) = get_args(annotation)
        return f"list of {_type_name(item)} (JSON)"
    if annotation is SecretStr:
        return "secret"
    if annotation is timedelta:
        return "duration"
    if annotation is Path:
        return "path"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(f"`{member.value}`" for member in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    found = []
    for constraint in field.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(constraint, kind):
                found.append(f"{sign} {_value(getattr(constraint, attribute))}")
    return ", ".join(found)


def _value(value: Any) -> str:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size and seconds % size == 0:
                return f"{int(seconds // size)}{unit}"
        return f"{seconds:g}s"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list):
        return "[" + ", ".join(f'"{item}"' for item in value) + "]"
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    return f"`{_value(value)}`"


def _cell(text: str) -> str:
    # A table cell: one line, pipes escaped, and <code>-like text shown, not taken as HTML.
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def undescribed() -> list[str]:
    """The fields that have no `description=`, which the page cannot explain."""
    return [name for name, field in Settings.model_fields.items() if not field.description]


def render() -> str:
    prefix = Settings.model_config.get("env_prefix", "")
    rows = []
    for name, field in Settings.model_fields.items():
        kind = _type_name(field.annotation)
        if bounds := _bounds(field):
            kind += f", {bounds}"
        rows.append(
            f"| `{prefix}{name.upper()}` | {_cell(kind)} | {_cell(_default(field))} "
            f"| {_cell(field.description or '')} |\n"
        )
    return _HEADER + "".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    missing = undescribed()
    if missing:
        print(f"settings without a description=: {', '.join(missing)}", file=sys.stderr)
        return 1
    page = render()
    current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
    if args.check:
        if current != page:
            print(f"{PAGE} is stale; regenerate it with `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    if current != page:
        PAGE.write_text(page, encoding="utf-8")
        print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
