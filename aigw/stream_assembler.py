"""One answer's events put back in order: the client half of the resumable-stream contract.

Every `responses` event carries `seq` (0, 1, 2 … per request); a replay may merge consecutive deltas into one
that carries `firstSeq`..`seq`. The rule (docs/request-path.md): keep an event when its `firstSeq` (else its
`seq`) is the next one expected; drop what is already had; hold what is ahead until the hole before it is filled
(by the live stream catching up, or by a resume with ``afterSeq = last_seq``). A merged delta that overlaps what
was already delivered is trimmed by the text of the seqs already had (remembered per seq), so a replay that
starts early still fills the rest. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINAL_TYPES = ("end", "error")


def _span(event: dict[str, Any]) -> tuple[int, int] | None:
    """(first, last) seq an event covers, or None for an event without seq (a client-made error)."""
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    first = event.get("firstSeq", seq)
    return (first, seq) if isinstance(first, int) and not isinstance(first, bool) and first <= seq else (seq, seq)


@dataclass
class StreamAssembler:
    """Feed it the events of one request as they arrive, in any order and with duplicates; it hands back each
    event exactly once, in seq order."""

    next_seq: int = 0
    finished: bool = False
    _ahead: dict[int, dict[str, Any]] = field(default_factory=dict)  # first seq -> event, held for a hole
    _text: list[str] = field(default_factory=list)
    _seq_text: dict[int, str] = field(default_factory=dict)  # each delivered seq's delta text ("" for others)
    _merged_into: set[int] = field(default_factory=set)  # seqs delivered inside another's merged text

    @property
    def last_seq(self) -> int:
        """The last seq delivered in order (-1 before any): what a resume's `afterSeq` is."""
        return self.next_seq - 1

    @property
    def has_gap(self) -> bool:
        """Events are held behind a hole: a resume would fill it."""
        return bool(self._ahead)

    @property
    def text(self) -> str:
        return "".join(self._text)

    def offer(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The events now deliverable, in order: this one and any it unblocked; [] for a duplicate or a hold."""
        if self.finished:
            return []
        span = _span(event)
        if span is None:
            return self._deliver(event)
        first, last = span
        if last < self.next_seq:
            return []  # had already
        if first < self.next_seq:
            trimmed = self._trim(event, first)
            if trimmed is None:
                return []  # overlaps what was had, and cannot be cut where it was had
            event, first = trimmed, self.next_seq
        if first > self.next_seq:
            held = self._ahead.get(first)
            if held is None or _span(held)[1] < last:  # type: ignore[index]
                self._ahead[first] = event
            return []
        out = self._deliver(event)
        while not self.finished and (waiting := self._ahead.pop(self.next_seq, None)) is not None:
            out += self._deliver(waiting)
        # Anything still held that now overlaps what was delivered can never be used.
        self._ahead = {k: e for k, e in self._ahead.items() if k >= self.next_seq}
        return out

    def _trim(self, event: dict[str, Any], first: int) -> dict[str, Any] | None:
        """A merged delta from `first` with the text of the seqs already delivered cut off its front."""
        if event.get("type") != "delta" or first in self._merged_into:
            return None  # cut mid-way through text delivered merged: where is unknown
        had = "".join(self._seq_text.get(s, "") for s in range(first, self.next_seq))
        text = str(event.get("text", ""))
        if not text.startswith(had):
            return None
        return {**event, "text": text[len(had):], "firstSeq": self.next_seq}

    def _deliver(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        span = _span(event)
        if span is not None:
            for seq in range(span[0] + 1, span[1] + 1):
                self._seq_text[seq] = ""
                self._merged_into.add(seq)
            self._seq_text[span[0]] = str(event.get("text", "")) if event.get("type") == "delta" else ""
            self.next_seq = span[1] + 1
        if event.get("type") == "delta":
            self._text.append(str(event.get("text", "")))
        if event.get("type") in FINAL_TYPES:
            self.finished = True
            self._ahead.clear()
        return [event]
