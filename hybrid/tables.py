"""CSV tables of a run or a sweep: rows of numbers and names, written atomically.

Cells that parse as numbers come back as floats, empty cells as NaN, anything else as text.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from hybrid.checkpoint import atomic_write


def read_table(path: str | Path) -> list[dict]:
    """The rows of a CSV file as dicts (an absent file has none)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as file:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(file)]


def write_table(path: str | Path, rows: list[dict]) -> None:
    """Atomically write ``rows``; the header is the union of their keys, in first-seen order."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _format(row.get(k)) for k in columns} for row in rows)
    atomic_write(path, lambda file: file.write(buffer.getvalue().encode()))


def append_row(path: str | Path, row: dict) -> None:
    """Add one row (rewrites the small file, so new columns get a header)."""
    write_table(path, [*read_table(path), row])


def _parse(cell: str | None):
    if cell in ("", None):
        return math.nan
    try:
        return float(cell)
    except ValueError:
        return cell


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.8g}" if isinstance(value, float) else str(value)
