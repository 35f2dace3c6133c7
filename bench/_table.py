"""Markdown tables for benchmark output."""

from __future__ import annotations

__all__ = ["markdown_table"]


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    align = ["---" if i == 0 else "---:" for i in range(len(headers))]
    lines = [headers, align, *[[str(c) for c in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
