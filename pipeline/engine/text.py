"""Plain-text helpers for messages and terminal output."""

import difflib


def table(rows):
    """Rows of cells as left-aligned columns, two spaces apart; the first row is the header."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def did_you_mean(word, choices, cutoff=0.6, listing=False):
    """" Did you mean 'x'?" for the closest choice; else the choices when `listing`, else ""."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    if match:
        return f" Did you mean '{match[0]}'?"
    return f" Valid keys: {', '.join(sorted(choices))}." if listing else ""


def first_few(items, n=5):
    """'a, b, c, d, e and 7 more': a bounded list for a one-line message."""
    items = [str(i) for i in items]
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def clip(message, limit):
    """`message` on one line, cut to `limit` characters with an ellipsis."""
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
