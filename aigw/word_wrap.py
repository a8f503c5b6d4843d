"""Streamed text broken into lines at spaces, never inside a word: what `aigw chat` prints deltas through.

A terminal wraps at its edge wherever the cursor is, so text printed as it streams breaks mid-word. This keeps
the column, holds back the word being written until it ends (a space, a newline or `flush`) and starts a new
line before a word that would not fit. Widths are terminal cells (wide characters count two). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len


@dataclass
class WordWrap:
    width: int
    column: int = 0
    _word: str = ""
    _spaces: int = 0  # spaces after the last word placed, written only if the next word follows on this line

    def feed(self, text: str) -> str:
        """The part of the text (after what came before) that can be printed now."""
        out: list[str] = []
        for char in text:
            if char == "\n":
                self._place(out)
                out.append("\n")
                self.column, self._spaces = 0, 0
            elif char == " ":
                self._place(out)
                self._spaces += 1
            else:
                self._word += char
        return "".join(out)

    def flush(self) -> str:
        """The rest, at the end of the answer; the next answer starts at column 0."""
        out: list[str] = []
        self._place(out)
        self.column, self._spaces = 0, 0
        return "".join(out)

    def _place(self, out: list[str]) -> None:
        if not self._word:
            return
        size = cell_len(self._word)
        if self.column > 0 and self.column + self._spaces + size > self.width:
            out.append("\n")
            self.column = 0
        elif self._spaces:
            out.append(" " * self._spaces)
            self.column += self._spaces
        out.append(self._word)
        self.column += size
        self._word, self._spaces = "", 0
