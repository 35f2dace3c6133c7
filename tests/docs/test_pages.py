"""The README and the docs hold no run logs: results live on the benchmarks page, the story of a
change in its commit, and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_LOG = re.compile(
    r"this release|earlier in this|\bissue \d+|\d[\d,]* tests\b|tests? (passed|took)|suite takes|"
    r"\.\./shared|/work/|\blast (clean-clone )?run\b",
    re.IGNORECASE,
)


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_run_log_in(page):
    found = [line for line in page.read_text().splitlines() if RUN_LOG.search(line)]
    assert not found, found
