"""`aigw chat` breaks streamed answers between words, however the text is cut into deltas."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len

from aigw.word_wrap import WordWrap

texts = st.text(alphabet=st.sampled_from([*"abcdefgh  \n", "日", "é"]), max_size=200)


def wrapped(text: str, cuts: list[int], width: int) -> str:
    wrap, out, start = WordWrap(width), [], 0
    for cut in sorted(c % (len(text) + 1) for c in cuts):
        out.append(wrap.feed(text[start:cut]))
        start = max(start, cut)
    out.append(wrap.feed(text[start:]))
    return "".join(out) + wrap.flush()


@given(texts, st.lists(st.integers(0, 400), max_size=20), st.integers(5, 40))
def test_words_are_kept_whole_and_lines_fit_unless_one_word_is_wider(text: str, cuts: list[int], width: int) -> None:
    out = wrapped(text, cuts, width)
    assert out.split() == text.split()  # the same words in the same order, none cut
    for line in out.split("\n"):
        assert cell_len(line) <= width or len(line.split()) == 1, (line, width)
    assert out == wrapped(text, [], width)  # how the deltas were cut changes nothing
    assert out.count("\n") >= text.count("\n")  # the text's own line breaks stay


def test_a_word_that_would_cross_the_edge_starts_the_next_line() -> None:
    wrap = WordWrap(10)
    assert wrap.feed("hello wor") == "hello"  # "wor…" may still grow
    assert wrap.feed("ld again") == "\nworld"
    assert wrap.flush() == "\nagain"  # "world again" is 11 cells
