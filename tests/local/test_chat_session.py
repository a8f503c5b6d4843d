"""`aigw chat`'s session against a running `aigw dev`: a dropped socket is resumed with no text lost or repeated,
Stop (Ctrl-C) cancels at the gateway and keeps the conversation, and the slash commands never reach the model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from aigw import cli
from aigw.admin import ChatSession
from aigw.client import EventsClient, sign_in
from aigw.dev import DevGateway, Ports, running
from components.settings import StackSettings
from runtime.protocol import estimate_output_tokens
from tests.local.test_dev_gateway import endpoints

ROOT = Path(__file__).resolve().parents[2]
WORDS = 300  # the long answer: one emulated token per word, 10 ms apart, so about 3 s of streaming


def long_answer(body: dict[str, Any]) -> str:
    return "".join(f" word{i}" for i in range(WORDS))


@pytest.fixture(scope="module")
def gateway() -> Iterator[DevGateway]:
    settings = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
    with running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0.01, keepalive_s=5, stack="chatsess") as gw:
        assert gw.bedrock is not None
        gw.bedrock.answer = long_answer
        yield gw


def token(gw: DevGateway) -> str:
    demo = gw.info["demo_user"]
    return sign_in(endpoints(gw), demo["username"], demo["password"])["IdToken"]


def test_a_dropped_socket_is_reconnected_and_the_answer_resumed_with_nothing_lost_or_repeated(
    gateway: DevGateway,
) -> None:
    async def converse() -> tuple[list[dict[str, Any]], ChatSession]:
        async with EventsClient(endpoints(gateway), token(gateway)) as client:
            session = await ChatSession(client).open()
            events, dropped = [], False
            async for event in session.turn("Tell me a long story"):
                events.append(event)
                if not dropped and sum(e["type"] == "delta" for e in events) == 20:
                    assert gateway.events is not None
                    dropped = True
                    closed = await asyncio.to_thread(
                        gateway.events.call, gateway.events.server.close_connections()
                    )
                    assert closed >= 1
            return events, session

    events, session = asyncio.run(converse())
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert text == long_answer({})  # every word once, in order
    assert events[-1]["type"] == "end" and events[-1]["usage"]["output"] == WORDS
    seqs = [e["seq"] for e in events if "firstSeq" not in e]
    assert seqs == sorted(set(seqs))  # in order, none twice
    assert session.resumes >= 1
    assert session.messages[-1]["content"][0]["text"] == text  # the turn is kept in the history


def test_cancel_stops_the_model_charges_what_was_written_and_keeps_the_history(gateway: DevGateway) -> None:
    async def converse() -> tuple[dict[str, Any], ChatSession, str]:
        async with EventsClient(endpoints(gateway), token(gateway)) as client:
            session = await ChatSession(client).open()
            session.messages = [{"role": "user", "content": [{"text": "earlier"}]},
                                {"role": "assistant", "content": [{"text": "answer"}]}]
            deltas, shown = 0, ""
            async for event in session.turn("Tell me a long story"):
                if event["type"] == "delta":
                    deltas, shown = deltas + 1, shown + event["text"]
                    if deltas == 10:
                        await session.cancel()
                if event["type"] in ("end", "error"):
                    return event, session, shown
            raise AssertionError("no end")

    end, session, shown = asyncio.run(converse())
    assert end["type"] == "end" and end["stopReason"] == "cancelled"
    # A closed stream reports no usage, so the worker charges its conservative estimate of the text it streamed:
    # at least what the client was shown, and well under the whole answer (it stopped within a second of 3).
    whole = estimate_output_tokens(long_answer({}))
    assert estimate_output_tokens(shown) <= end["usage"]["output"] < whole * 0.8
    assert len(session.messages) == 2  # a stopped answer is not history


def test_ctrl_c_during_an_answer_cancels_it_and_the_session_goes_on(gateway: DevGateway) -> None:
    console = Console(record=True, width=100)
    printed = {"deltas": 0}
    real_print = console.print

    def print_then_interrupt(*args: Any, **kwargs: Any) -> None:
        real_print(*args, **kwargs)
        if kwargs.get("end") == "":  # a delta
            printed["deltas"] += 1
            if printed["deltas"] == 5:
                raise KeyboardInterrupt  # what the terminal's Ctrl-C raises in the running coroutine

    with asyncio.Runner() as runner:
        client = EventsClient(endpoints(gateway), token(gateway))
        runner.run(client.__aenter__())
        try:
            session = runner.run(ChatSession(client).open())
            console.print = print_then_interrupt  # type: ignore[method-assign]
            assert cli._chat_turn(runner, session, "Tell me a long story", console, wait=False) is False
            console.print = real_print  # type: ignore[method-assign]
            assert session.messages == []
            # The session is still usable: the next message is answered.
            gateway.bedrock.answer = lambda body: " short"  # type: ignore[union-attr]
            try:
                assert cli._chat_turn(runner, session, "And now?", console, wait=False) is True
            finally:
                gateway.bedrock.answer = long_answer  # type: ignore[union-attr]
        finally:
            runner.run(client.close())
    out = console.export_text()
    assert "stopped:" in out and "tokens written and charged" in out
    assert len(session.messages) == 2


def test_slash_commands_run_locally_and_unknown_ones_are_not_sent(gateway: DevGateway) -> None:
    console = Console(record=True, width=120)
    with asyncio.Runner() as runner:
        client = EventsClient(endpoints(gateway), token(gateway))
        runner.run(client.__aenter__())
        try:
            session = runner.run(ChatSession(client).open())
            session.messages = [{"role": "user", "content": [{"text": "q"}]},
                                {"role": "assistant", "content": [{"text": "a"}]}]
            requests_before = len(gateway.bedrock.requests)  # type: ignore[union-attr]
            for command in ("/help", "/models", "/usage", "/model no.such-model", "/frobnicate", "/new"):
                assert cli._chat_command(runner, session, command, console) is True
            assert cli._chat_command(runner, session, "/quit", console) is False
            assert len(gateway.bedrock.requests) == requests_before  # type: ignore[union-attr]
        finally:
            runner.run(client.close())
    out = console.export_text()
    assert "/new" in out and "(default)" in out and "tokens left in this window" in out
    assert "no.such-model is not offered" in out and "unknown command /frobnicate" in out
    assert session.messages == []  # /new cleared the history


def test_on_a_terminal_answers_break_between_words(gateway: DevGateway) -> None:
    console = Console(record=True, width=32, force_terminal=True)
    words = [f"w{'x' * (i % 7)}{i}" for i in range(60)]
    gateway.bedrock.answer = lambda body: " ".join(words)  # type: ignore[union-attr]
    try:
        with asyncio.Runner() as runner:
            client = EventsClient(endpoints(gateway), token(gateway))
            runner.run(client.__aenter__())
            try:
                session = runner.run(ChatSession(client).open())
                assert cli._chat_turn(runner, session, "Wrap it", console, wait=False) is True
            finally:
                runner.run(client.close())
    finally:
        gateway.bedrock.answer = long_answer  # type: ignore[union-attr]
    lines = console.export_text().splitlines()
    answer_lines = [line for line in lines if line.split() and set(line.split()) <= set(words)]
    assert " ".join(answer_lines).split() == words  # every word whole, in order
    assert len(answer_lines) > 5 and all(len(line) <= 32 for line in answer_lines)
