"""Markdown tables, the one format every command prints its results in."""

from __future__ import annotations


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table; cells are str()-ed and a '|' inside a cell becomes '/' so that it cannot split the row."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])
