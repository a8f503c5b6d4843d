"""How `aigw analytics` shows results: pure formatting and the email column."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from aigw.analytics_view import money, number, plot_path, with_emails

amounts = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


@given(amounts)
def test_numbers_and_money_are_never_scientific(value: float) -> None:
    for text in (number(value), money(value)):
        assert "e" not in text.lower(), text


@given(st.floats(min_value=0.005, max_value=1e9))
def test_money_from_a_cent_up_is_dollars_and_two_decimals(value: float) -> None:
    text = money(value)
    assert re.fullmatch(r"\$[\d,]+\.\d\d", text), text
    assert abs(float(text[1:].replace(",", "")) - value) <= 0.005 + 1e-9 * value


def test_money_says_when_an_amount_is_below_a_cent() -> None:
    assert money(7e-06) == "<$0.01" and money(0) == "$0.00" and money(1234.5) == "$1,234.50"
    assert number(1_944_000.0) == "1,944,000" and number(0.125) == "0.125"


@given(st.lists(st.sampled_from(["a", "b", "c", None]), max_size=8))
def test_the_email_column_follows_user_id_and_keeps_every_row(user_ids: list[str | None]) -> None:
    rows = [(u, i) for i, u in enumerate(user_ids)]
    columns, shown = with_emails(["user_id", "n"], rows, {"a": "a@example.com"})
    assert columns == ["user_id", "user", "n"]
    assert shown == [(u, "a@example.com" if u == "a" else None, i) for u, i in rows]
    assert with_emails(["model_id"], [("m",)], {}) == (["model_id"], [("m",)])


def test_plots_without_a_folder_go_under_aigw() -> None:
    assert plot_path(Path("cost.png")) == Path(".aigw/plots/cost.png")
    assert plot_path(Path("/tmp/x/cost.png")) == Path("/tmp/x/cost.png")
