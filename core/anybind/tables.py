"""Plain-text tables, as the CLI and the quickstart print them."""

from __future__ import annotations


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule, trailing spaces trimmed."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
