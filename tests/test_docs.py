"""The README a newcomer reads first: short, product first, every link live, its example space valid."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def _pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def test_the_readme_is_short_and_starts_with_the_product() -> None:
    text = README.read_text()
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert len(text.splitlines()) < 200
    assert heads[:2] == ["## Set-up on a fresh machine", "## A space file and its budget"]
    assert text.count("make demo") >= 1 and text.count("make test") >= 1


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    for target, _ in LINK.findall(page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_every_docs_page_is_linked_from_the_readme_or_another_page() -> None:
    linked = {(p.parent / t).resolve() for p in _pages() for t, _ in LINK.findall(p.read_text())}
    for page in sorted((REPO / "docs").glob("*.md")):
        assert page.resolve() in linked, f"docs/{page.name} is linked from nowhere"


def test_the_readme_space_loads(tmp_path: Path) -> None:
    """The space shown in the README is a valid space (relative paths as if it sat in spaces/)."""
    import hps

    block = README.read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    path = REPO / "spaces" / f".readme-{tmp_path.name}.yaml"
    path.write_text(block)
    try:
        space = hps.load_space(path)
    finally:
        path.unlink()
    assert space.budget.max_params == 1_000_000
