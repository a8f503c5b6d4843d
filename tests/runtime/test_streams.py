"""Resumable and cancellable streams: `seq` on every event, the answer journal, resume and cancel end to end.

The pure part (`resume_plan`, `replay_events`) has Hypothesis properties; the journal adapter runs on moto; the
request path runs on the same real peers as tests/runtime/test_request_path.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aigw.emulators.bedrock import BedrockEmulator
from runtime import streams
from runtime.streams import Journal, JournalConflictError, JournalState, replay_events, resume_plan
from tests.runtime.test_appsync_publish import rejecting
from tests.runtime.test_request_path import SUB, Gateway, answered_through_refusals, ask
from tests.support import MID_MONTH

# --- the pure part --------------------------------------------------------------------------------------------


def _stream(texts: list[str]) -> list[dict[str, Any]]:
    events = [{"type": "start", "seq": 0}]
    events += [{"type": "delta", "text": t, "seq": i + 1} for i, t in enumerate(texts)]
    return [*events, {"type": "end", "seq": len(events)}]


def _apply(received: list[dict[str, Any]], next_seq: int = 0) -> tuple[str, int, list[str]]:
    """What a client following the contract keeps: (text, next seq expected, types in order)."""
    text, types = "", []
    for event in received:
        first = event.get("firstSeq", event["seq"])
        if first != next_seq:
            continue
        text += event.get("text", "")
        types.append(event["type"])
        next_seq = event["seq"] + 1
    return text, next_seq, types


texts = st.lists(st.text(min_size=1, max_size=30), max_size=40)


@given(texts, st.data())
def test_a_replay_gives_exactly_the_events_after_the_clients_position(pieces: list[str], data: st.DataObject) -> None:
    events = _stream(pieces)
    after = data.draw(st.integers(-1, len(events) - 1))
    seen_text = "".join(e.get("text", "") for e in events[: after + 1])
    text, next_seq, types = _apply(
        replay_events(events[after + 1 :], max_chars=data.draw(st.integers(30, 200))), after + 1
    )
    assert seen_text + text == "".join(pieces)  # nothing missing, nothing twice
    assert next_seq == len(events) and (after == len(events) - 1 or types[-1] == "end")


@given(texts, st.integers(30, 200))
def test_replayed_deltas_merge_within_the_size_bound_and_cover_contiguous_seqs(pieces: list[str], limit: int) -> None:
    replay = replay_events(_stream(pieces), max_chars=limit)
    assert len(replay) <= len(pieces) + 2
    expected = 0
    for event in replay:
        assert event.get("firstSeq", event["seq"]) == expected and event["seq"] >= expected
        assert event.get("firstSeq") != event["seq"]  # a single delta carries no firstSeq
        expected = event["seq"] + 1
        if event["type"] == "delta" and "firstSeq" in event:
            assert len(event["text"]) <= limit


def _state(events: list[dict[str, Any]], *, done: bool, full: bool = False, at: float = 0.0) -> JournalState:
    return JournalState(channel="/responses/x", events=tuple(events), done=done, full=full, written_at=at)


def test_resume_plans_tell_a_gap_only_when_text_can_never_come() -> None:
    events = _stream(["a", "b"])
    assert resume_plan(None, -1, 0).gap  # no journal: nothing can be replayed
    assert not resume_plan(_state(events, done=True), 1, 10_000).gap  # finished: replays to its end
    assert not resume_plan(_state(events[:2], done=False, at=100), 5, 100 + streams.STALE_AFTER_S).gap  # live
    assert resume_plan(_state(events[:2], done=False, at=100), 0, 101 + streams.STALE_AFTER_S).gap  # worker died
    full = resume_plan(_state(events[:2], done=True, full=True), -1, 0)
    assert full.gap and [e["seq"] for e in full.events] == [0, 1]  # what is there, then the gap


# --- the journal adapter ---------------------------------------------------------------------------------------


@pytest.fixture
def journal(dynamodb: Any) -> Journal:
    name = f"streams-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(**streams.table_spec(name))
    return Journal(name, dynamodb, clock=lambda: MID_MONTH)


def test_the_journal_appends_reads_and_expires(journal: Journal, dynamodb: Any) -> None:
    events = _stream(["Hello", " world"])
    assert journal.append(SUB, "r1", "/responses/s", events[:2], first_seq=0, done=False, full=False) is False
    assert journal.append(SUB, "r1", "/responses/s", events[2:], first_seq=2, done=True, full=False) is False
    state = journal.read(SUB, "r1")
    assert state is not None and list(state.events) == events and state.done and state.channel == "/responses/s"
    item = dynamodb.get_item(TableName=journal.table_name, Key={"pk": {"S": f"stream#{SUB}#r1"}})["Item"]
    assert int(item["ttl"]["N"]) >= MID_MONTH + 15 * 60
    assert journal.read(SUB, "unknown") is None and journal.read("another-user", "r1") is None


def test_a_write_out_of_order_is_a_conflict_not_a_gap(journal: Journal) -> None:
    events = _stream(["a"])
    journal.append(SUB, "r1", "/c", events[:1], first_seq=0, done=False, full=False)
    with pytest.raises(JournalConflictError):
        journal.append(SUB, "r1", "/c", events[2:], first_seq=2, done=False, full=False)


def test_a_cancel_reaches_the_next_write_even_before_the_first(journal: Journal) -> None:
    events = _stream(["a", "b"])
    assert journal.request_cancel(SUB, "early") is True
    assert journal.read(SUB, "early") is None  # a cancel alone is no journal
    assert journal.append(SUB, "early", "/c", events[:1], first_seq=0, done=False, full=False) is True
    # The cancelled stream's final write lands, so the journal still replays to its end.
    assert journal.append(SUB, "early", "/c", events, first_seq=0, done=True, full=False) is False
    state = journal.read(SUB, "early")
    assert state is not None and state.done and len(state.events) == len(events)
    assert journal.request_cancel(SUB, "early") is False  # finished: nothing to cancel


# --- the request path ------------------------------------------------------------------------------------------


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "delta")


def test_every_event_of_an_answer_carries_seq_in_order_and_the_journal_holds_them_all(gateway: Gateway) -> None:
    gateway.publish(ask(requestId="req-1"))
    before = gateway.calls["UpdateItem"]
    gateway.run_jobs()
    events = gateway.events()
    assert [e["seq"] for e in events] == list(range(len(events)))
    state = gateway.journal.read(SUB, "req-1")
    assert state is not None and state.done and list(state.events) == events
    # A short answer: no journal write while streaming (at most one a second), one at the end, plus the settle.
    assert gateway.calls["UpdateItem"] - before <= 3


def test_refusals_are_a_one_event_stream(gateway: Gateway) -> None:
    gateway.publish({"messages": []}, event_id="bad")
    [error] = gateway.events()
    assert error["type"] == "error" and error["seq"] == 0


@pytest.mark.parametrize("position", [-1, 0, 1, 99])
def test_resume_replays_every_event_after_the_clients_seq_in_order(gateway: Gateway, position: int) -> None:
    gateway.publish(ask(requestId="req-r", conversationId="conv-1"))
    gateway.run_jobs()
    live = gateway.events()
    after = min(position, len(live) - 1)  # 99: the client has it all
    [answer] = gateway.publish({"action": "resume", "requestId": "req-r", "afterSeq": after})
    assert answer["payload"] == {"requestId": "req-r", "status": "resumed"}
    replay = gateway.events()[len(live) :]
    text, next_seq, types = _apply(replay, after + 1)
    assert _text(live[: after + 1]) + text == _text(live) and next_seq == len(live)
    assert types[-1:] == ([] if after == len(live) - 1 else ["end"])
    assert all(p["channel"] == f"/responses/{SUB}/conv-1" for p in gateway.publishes())


def test_resume_of_an_unknown_or_foreign_request_is_a_stream_gap(gateway: Gateway) -> None:
    gateway.publish(ask(requestId="mine"))
    gateway.run_jobs()
    before = len(gateway.events(f"/responses/{SUB}"))
    other = "9a8b7c6d-1111-2222-3333-444455556666"
    gateway.publish({"action": "resume", "requestId": "mine"}, sub=other, channel=f"/chat/{other}")
    [gap] = gateway.events(f"/responses/{other}")
    assert gap["type"] == "error" and gap["code"] == "stream_gap" and gap["requestId"] == "mine"
    assert len(gateway.events(f"/responses/{SUB}")) == before  # the owner's answer went to nobody else


def test_bad_actions_are_typed_invalid_requests(gateway: Gateway) -> None:
    for payload in (
        {"action": "rewind", "requestId": "r"},
        {"action": "resume"},
        {"action": "resume", "requestId": "r", "afterSeq": "3"},
        {"action": "cancel", "requestId": "r", "afterSeq": 3},
    ):
        [answer] = gateway.publish(payload)
        assert answer["error"].startswith("invalid_request: ")
    assert gateway.jobs == [] and gateway.calls["GetItem"] == 0


def test_text_refused_by_appsync_is_recovered_from_the_journal(
    dynamodb: Any, bedrock: BedrockEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway, receiver, _ = answered_through_refusals(dynamodb, bedrock, monkeypatch, rejecting("delta", 2), ask())
    events = gateway.events()
    assert events[-1]["type"] == "end"  # the journal has the text: an end, and a seq hole the client sees
    seqs = [e["seq"] for e in events]
    hole = next(i for i, s in enumerate(seqs) if s != i)
    receiver.start()
    try:
        gateway.publish({"action": "resume", "requestId": events[0]["requestId"], "afterSeq": hole - 1})
    finally:
        receiver.stop()
    text, next_seq, _ = _apply(gateway.events()[len(events) :], hole)
    state = gateway.journal.read(SUB, events[0]["requestId"])
    assert state is not None and _text(events[:hole]) + text == _text(list(state.events))
    assert len(_text(events)) < len(_text(list(state.events)))  # text was missing live
    assert next_seq == seqs[-1] + 1


def test_cancel_stops_generation_ends_cancelled_and_charges_what_was_generated(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway.bedrock.answer = lambda body: "word " * 400  # a long answer, in many deltas
    gateway.worker.journal_interval_s = 0  # check at every delta: the test cancels after the first
    gateway.worker.config = gateway.worker.config.model_copy(update={"flush_interval_ms": 1})
    real_publish = gateway.worker.publish
    cancelled: list[Any] = []

    def publish_then_cancel(channel: str, batch: list[dict[str, Any]]) -> Any:
        result = real_publish(channel, batch)
        if not cancelled and any(e["type"] == "delta" for e in batch):
            cancelled.extend(gateway.publish({"action": "cancel", "requestId": "req-c"}, event_id="cancel"))
        return result

    gateway.worker.publish = publish_then_cancel
    gateway.publish(ask(requestId="req-c", maxTokens=512))
    gateway.run_jobs()
    assert cancelled[0]["payload"] == {"requestId": "req-c", "status": "cancelling"}
    events = gateway.events()
    end = events[-1]
    assert end["type"] == "end" and end["stopReason"] == "cancelled"
    assert 0 < len(_text(events)) < len("word " * 400)
    usage = gateway.meter.usage(SUB, gateway.config.tier("free").limits)
    assert usage.reserved == 0 and usage.month_used == end["usage"]["input"] + end["usage"]["output"]
    assert end["usage"]["output"] < 400  # 400 words would be at least 400 tokens
    state = gateway.journal.read(SUB, "req-c")
    assert state is not None and state.done and state.events[-1] == end
    # Cancelling what has finished changes nothing.
    [late] = gateway.publish({"action": "cancel", "requestId": "req-c"}, event_id="late")
    assert late["payload"]["status"] == "finished"
