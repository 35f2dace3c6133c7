"""The version check both framework adapters' tests make: the installed version within the range
the adapter was written for, and pyproject.toml allowing that same range."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version: "0.55.0" -> (0, 55, 0), "1.85.4rc1" -> (1, 85, 4)."""
    numbers = re.match(r"\d+(\.\d+)*", version)
    assert numbers, f"not a version: {version!r}"
    return tuple(int(part) for part in numbers.group().split("."))


def pyproject_bounds(distribution: str) -> tuple[str, str]:
    """The (>=, <) bounds of `distribution`'s line among pyproject.toml's dependencies."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = (line for lines in project["optional-dependencies"].values() for line in lines)
    for line in [*project["dependencies"], *extras]:
        if re.fullmatch(rf"{re.escape(distribution)}\s*([<>=!~,\s].*)?", line):
            low, high = re.search(r">=\s*([\d.]+)", line), re.search(r"<\s*([\d.]+)", line)
            assert low and high, (
                f"pyproject.toml's {line!r} has no upper bound: {distribution} is to be capped"
            )
            return low.group(1), high.group(1)
    raise AssertionError(f"{distribution} is not among pyproject.toml's dependencies")


def check_written_for(distribution: str, written_for: dict[str, tuple[str, str]], adapter: str) -> None:
    low, high = written_for[distribution]
    installed = importlib.metadata.version(distribution)
    assert release(low) <= release(installed) < release(high), (
        f"{distribution} {installed} is outside [{low}, {high}), the versions {adapter} was written for: "
        f"make its test pass, then widen its WRITTEN_FOR and pyproject.toml's cap together"
    )
    allowed = pyproject_bounds(distribution)
    assert allowed == (low, high), (
        f"pyproject.toml allows {distribution} {allowed}, but {adapter}'s WRITTEN_FOR says {(low, high)}: "
        "change them together"
    )
