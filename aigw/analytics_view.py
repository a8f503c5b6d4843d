"""How `aigw analytics` shows a query's result: users by email, money in dollars and cents, plots under `.aigw/`.

Pure functions (the command does the I/O): a result's columns and rows in, columns and rows or text out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PLOTS_DIR = Path(".aigw/plots")
USER_ID_COLUMN = "user_id"
EMAIL_COLUMN = "user"


def is_money(column: str) -> bool:
    return column.endswith("_usd")


def money(value: float) -> str:
    """Dollars and cents; a non-zero amount below a cent says so rather than rounding to $0.00."""
    if value != 0 and abs(value) < 0.005:
        return "<$0.01" if value > 0 else "-<$0.01"
    return f"-${-value:,.2f}" if value < 0 else f"${value:,.2f}"


def number(value: float) -> str:
    """A plain decimal (never scientific notation), thousands separated, at most 4 decimals."""
    if float(value).is_integer():
        return f"{int(value):,}"
    text = f"{value:,.4f}".rstrip("0").rstrip(".")
    if text in ("0", "-0"):  # not zero, but below what 4 decimals show
        return "<0.0001" if value > 0 else "-<0.0001"
    return text


def with_emails(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], emails: Mapping[str, str]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A `user` column (the email the user pool knows, else null) right after `user_id`; unchanged without one."""
    if USER_ID_COLUMN not in columns or EMAIL_COLUMN in columns:
        return list(columns), [tuple(r) for r in rows]
    at = list(columns).index(USER_ID_COLUMN) + 1
    new_columns = [*columns[:at], EMAIL_COLUMN, *columns[at:]]
    new_rows = [(*row[:at], emails.get(row[at - 1]) if isinstance(row[at - 1], str) else None, *row[at:])
                for row in rows]
    return new_columns, new_rows


def plot_path(requested: Path, plots_dir: Path = PLOTS_DIR) -> Path:
    """Where `--plot` writes: a bare file name goes under `.aigw/plots/` (never the repository root), a path
    with a folder is taken as given."""
    if requested.parent == Path("."):
        return plots_dir / requested.name
    return requested
