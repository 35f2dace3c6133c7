"""MkDocs hook: the configuration page's tables, made from the settings model at build time, so
that the page and `vae-serve --help` come from the same fields and cannot drift apart."""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

MARKER = "<!-- settings -->"
TITLES = {
    "NetworkSettings": "Server",
    "HttpSettings": "HTTP",
    "TLSSettings": "TLS",
    "RepositorySettings": "Model repository",
    "BatchingSettings": "Batching",
    "LimitSettings": "Limits",
    "LogSettings": "Logging",
    "Settings": "Configuration file",
}


def _default(name: str, field: Any) -> str:
    default = field.default
    if default is PydanticUndefined or default is None:
        return "-"
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"`{default}`"


def _flag(name: str, field: Any) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(field.default, bool):
        return f"`{flag}` / `--no-{flag[2:]}`"
    return f"`{flag}`"


def _rows(group: type[BaseModel]) -> list[str]:
    own = group.__annotations__  # the fields this group declares, in order
    rows = []
    for name, field in group.model_fields.items():
        if name not in own:
            continue
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        variable = f"`VAE_{name.upper()}`"
        rows.append(f"| {_flag(name, field)} | {variable} | {_default(name, field)} | {description} |")
    return rows


def settings_markdown() -> str:
    from vae_serve.server.settings import Settings

    parts = []
    groups = [cls for cls in reversed(Settings.__mro__[1:]) if issubclass(cls, BaseModel)]
    for group in [*groups, Settings]:
        rows = _rows(group) if "__annotations__" in group.__dict__ else []
        if not rows:
            continue
        title = TITLES.get(group.__name__, group.__name__)
        summary = " ".join((inspect.getdoc(group) or "").split("\n\n")[0].split())
        head = "| flag | variable | default | meaning |\n| --- | --- | --- | --- |"
        parts.append(f"### {title}\n\n{summary}\n\n{head}\n" + "\n".join(rows) + "\n")
    return "\n\n".join(parts)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, settings_markdown())
    return markdown
