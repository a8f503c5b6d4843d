"""The client's half of resumable streams: any delivery of an answer's events yields its text exactly once."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aigw.stream_assembler import StreamAssembler


def answer(words: list[str]) -> list[dict[str, Any]]:
    events = [{"type": "start", "seq": 0}]
    events += [{"type": "delta", "seq": i + 1, "text": w} for i, w in enumerate(words)]
    return [*events, {"type": "end", "seq": len(words) + 1, "stopReason": "end_turn"}]


def merged(events: list[dict[str, Any]], cuts: list[int]) -> list[dict[str, Any]]:
    """A replay: runs of consecutive deltas merged into one carrying firstSeq..seq, as the journal replays."""
    out: list[dict[str, Any]] = []
    for event in events:
        last = out[-1] if out else None
        if (event["type"] == "delta" and last is not None and last["type"] == "delta"
                and event["seq"] not in cuts):
            out[-1] = {**last, "text": last["text"] + event["text"], "seq": event["seq"],
                       "firstSeq": last.get("firstSeq", last["seq"])}
        else:
            out.append(dict(event))
    return out


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[str], list[dict[str, Any]]]:
    words = draw(st.lists(st.text(min_size=1, max_size=4), min_size=0, max_size=12))
    events = answer(words)
    live_until = draw(st.integers(0, len(events)))  # the socket dropped after this many live events
    dropped = set(draw(st.lists(st.integers(0, len(events) - 1), max_size=3)))  # live events lost in the gap
    live = [e for i, e in enumerate(events[:live_until]) if i not in dropped]
    resume_from = draw(st.integers(0, len(events)))  # a replay from wherever the client thought it was
    replay = merged(events[resume_from:], draw(st.lists(st.integers(0, len(events)), max_size=4)))
    full_replay = merged(events, [])  # a later resume from -1 (e.g. after a second drop)
    other_from = draw(st.integers(0, len(events)))  # another resume, merged at other places
    other = merged(events[other_from:], draw(st.lists(st.integers(0, len(events)), max_size=4)))
    pieces = live + replay + other + draw(st.permutations(live)) + full_replay
    return words, draw(st.permutations(pieces)) if draw(st.booleans()) else pieces


@given(deliveries())
def test_any_delivery_yields_the_whole_text_once_in_order_and_one_end(case: tuple[list[str], list[dict]]) -> None:
    words, pieces = case
    assembler = StreamAssembler()
    out = [e for piece in pieces for e in assembler.offer(piece)]
    assert assembler.text == "".join(words)
    assert "".join(e.get("text", "") for e in out if e["type"] == "delta") == "".join(words)
    assert [e["type"] for e in out][-1] == "end" and [e["type"] for e in out].count("end") == 1
    assert out[0]["type"] == "start" and assembler.finished


def test_a_hole_holds_later_events_and_last_seq_is_what_to_resume_after() -> None:
    events = answer(["a", "b", "c"])
    assembler = StreamAssembler()
    assert assembler.offer(events[0]) == [events[0]] and assembler.last_seq == 0
    assert assembler.offer(events[2]) == [] and assembler.has_gap  # seq 1 went missing
    assert assembler.last_seq == 0
    assert assembler.offer(events[1]) == [events[1], events[2]] and not assembler.has_gap
    assert assembler.text == "ab"


def test_an_event_without_seq_passes_through() -> None:
    error = {"type": "error", "code": "invalid_request", "message": "too long"}  # the client's own refusal
    assembler = StreamAssembler()
    assert assembler.offer(error) == [error] and assembler.finished
