"""The README and the docs hold no run logs: results live on the benchmarks page, the story of a
change in its commit, and the README stays short. The configuration page's tables, which an MkDocs
hook makes from the settings model, name every flag and variable `vae-serve --help` lists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from vae_serve.server.settings import Settings, parse_args

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_LOG = re.compile(
    r"this release|earlier in this|\bissue \d+|\d[\d,]* tests\b|tests? (passed|took)|suite takes|"
    r"\.\./shared|/work/|\blast (clean-clone )?run\b|\bCI run\b|out of reach here|on this machine before|"
    r"\bbefore: \d|on a shared \d+-core VM",
    re.IGNORECASE,
)


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_run_log_in(page):
    found = [line for line in page.read_text().splitlines() if RUN_LOG.search(line)]
    assert not found, found


def settings_hook():
    """docs/hooks/settings_table.py, the MkDocs hook that fills the configuration page."""
    path = ROOT / "docs" / "hooks" / "settings_table.py"
    spec = importlib.util.spec_from_file_location("settings_table", path)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


def test_the_configuration_page_has_the_settings_marker():
    hook = settings_hook()
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert hook.MARKER == "<!-- settings -->" and page.count(hook.MARKER) == 1
    built = hook.on_page_markdown(page, page=None)
    assert hook.MARKER not in built and hook.settings_markdown() in built


def test_the_settings_tables_name_every_flag_and_variable(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code in (0, None)
    shown = capsys.readouterr().out
    # Each option's line in --help: two spaces, then its flags ("--reflection, --no-reflection").
    flags = {
        flag
        for line in re.findall(r"^  (-[^\s,]+(?:, -[^\s,]+)*)", shown, re.MULTILINE)
        for flag in line.split(", ")
    } - {"-h", "--help", "--version"}
    variables = set(re.findall(r"\[env:\s+(VAE_\w+)\]", shown))
    # --help shows every setting of the model, each with its variable and its flag.
    assert variables == {f"VAE_{name.upper()}" for name in Settings.model_fields}
    assert {f"--{name.replace('_', '-')}" for name in Settings.model_fields} <= flags
    tables = settings_hook().settings_markdown()
    missing = sorted(name for name in flags | variables if f"`{name}`" not in tables)
    assert not missing, missing
