"""Markdown tables for benchmark output."""

from __future__ import annotations

import statistics

__all__ = ["markdown_table", "spread"]


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    align = ["---" if i == 0 else "---:" for i in range(len(headers))]
    lines = [headers, align, *[[str(c) for c in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def spread(ratios: list[float]) -> str:
    """The median of `ratios` and their range: `1.23x (1.10-1.31)`."""
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
