"""MkDocs hook: the configuration page's tables, made from the settings model at build time, in
the sections `vae-serve --help` lists them in, so that the page and --help cannot drift apart."""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticUndefined

MARKER = "<!-- settings -->"


def _default(field: Any) -> str:
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


def _row(name: str, field: Any) -> str:
    description = " ".join((field.description or "").split()).replace("|", "\\|")
    return f"| {_flag(name, field)} | `VAE_{name.upper()}` | {_default(field)} | {description} |"


def settings_markdown() -> str:
    from vae_serve.server.settings import HELP_SECTIONS, Settings, section_of

    fields = Settings.model_fields
    head = "| flag | variable | default | meaning |\n| --- | --- | --- | --- |"
    parts = []
    for title, about, _ in HELP_SECTIONS:
        rows = [_row(name, field) for name, field in fields.items() if section_of(name) == title]
        parts.append(
            f"### {title[0].upper()}{title[1:]}\n\n{' '.join(about.split())}\n\n{head}\n" + "\n".join(rows)
        )
    unsectioned = [_row(name, field) for name, field in fields.items() if section_of(name) is None]
    parts.append(f"### Configuration file\n\n{head}\n" + "\n".join(unsectioned))
    return "\n\n".join(parts) + "\n"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, settings_markdown())
    return markdown
