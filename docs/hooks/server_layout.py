"""MkDocs hook: the architecture page's map of `server/`, read from the code at build time (each
subpackage's docstring, each module's first docstring line), so that the page follows the layout."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

MARKER = "<!-- server-layout -->"
SERVER = Path(__file__).resolve().parents[2] / "server"


def _summary(path: Path) -> str:
    """The docstring's first sentence, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    text = " ".join(doc.split("\n\n", 1)[0].split())
    return text.replace("|", "\\|")


def _table(folder: Path) -> str:
    rows = [
        f"| `{path.relative_to(SERVER)}` | {_summary(path)} |"
        for path in sorted(folder.glob("*.py"))
        if path.name != "__init__.py"
    ]
    return "| module | what it is |\n| --- | --- |\n" + "\n".join(rows)


def layout_markdown() -> str:
    parts = [f"### `server/`\n\n{_summary(SERVER / '__init__.py')}\n\n{_table(SERVER)}"]
    for package in sorted(p.parent for p in SERVER.glob("*/__init__.py")):
        about = " ".join((ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or "").split())
        parts.append(f"### `server/{package.name}/`\n\n{about}\n\n{_table(package)}")
    return "\n\n".join(parts) + "\n"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, layout_markdown())
    return markdown
