"""The documentation stays inside the repository: every relative link resolves to a file
in it, and none leaves it (a reader of a clone has nothing else)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and ![alt](target); a target with a scheme or an anchor alone is not a file.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:|^#", re.IGNORECASE)


def _relative_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [t for t in _LINK.findall(text) if not _EXTERNAL.match(t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_is_a_file_of_the_repository(page: Path) -> None:
    for link in _relative_links(page):
        target = (page.parent / link.split("#")[0]).resolve()
        assert target.is_relative_to(REPO), f"{page.name}: {link} leaves the repository"
        assert target.exists(), f"{page.name}: {link} does not exist"


def test_the_readme_keeps_its_two_commands_first_and_its_screenshot() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.startswith("scripts/demo ") and "\nscripts/test " in first_block
    assert "](docs/img/" in text
