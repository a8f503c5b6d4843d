"""The chat page in a real browser: Debian's Chromium, driven by Playwright, against a running `aigw dev`.

One gateway for the module (the dev `free` and `pro` tiers, plus a `tiny` tier whose 10-second window two long
questions overflow) and one browser; each test signs its own users in through the page, as a person would:
typing into the form, pressing Enter, clicking. The Bedrock emulator streams its deterministic answers a word
at a time with a small pause, so the page really renders text as it arrives.

Without Chromium or Playwright the tests skip saying what is missing (`make test` installs both when it can).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aigw.dev import DevGateway, Ports, running
from aigw.emulators.bedrock import default_answer
from aigw.local_cognito import add_user
from aigw.stream_assembler import StreamAssembler
from components.models import display_name
from components.settings import StackSettings
from runtime.appsync_publish import MAX_EVENT_BYTES
from runtime.budgets import BudgetLimits, Budgets, budget_key
from runtime.cache import AnswerCache
from runtime.metering import Limits, Meter
from runtime.protocol import estimate_output_tokens
from tests.local.test_stream_assembler import deliveries

playwright = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (a dev dependency: `make test` installs it)"
)
expect = playwright.expect

pytestmark = pytest.mark.moto

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("AIGW_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = os.environ.get("AIGW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's notes prescribe: no sandbox (root in a container), and no background calls to Google's
# services, which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "Correct-Horse-9-Battery"
FREE_MODEL = "amazon.nova-lite-v1:0"
PRO_MODEL = "us.anthropic.claude-haiku-5-5"
SETTINGS = StackSettings.from_values(
    {
        "region": "us-east-1",
        "defaultTier": "free",
        # As prod: two-step sign-in required. Users made with a permanent password and no authenticator sign in
        # with the password alone on moto; the first-sign-in test walks the whole new-user journey.
        "mfa": "ON",
        "tiers": [
            {"name": "free", "precedence": 20, "windowTokens": 20_000, "monthlyTokens": 500_000,
             "maxOutputTokens": 1024, "models": [FREE_MODEL]},
            {"name": "pro", "precedence": 10, "windowTokens": 100_000, "monthlyTokens": 5_000_000,
             "maxOutputTokens": 4096, "models": [FREE_MODEL, PRO_MODEL], "defaultModel": PRO_MODEL},
            # 400 tokens per 10 s: one long question fits, the next is refused until the first leaves the window.
            {"name": "tiny", "precedence": 30, "windowTokens": 400, "monthlyTokens": 100_000, "windowSeconds": 10,
             "minOutputTokens": 64, "maxOutputTokens": 128, "models": [FREE_MODEL]},
        ],
    }
)
LONG_QUESTION = "Please summarise the following notes. " + " ".join(f"note{i:03d} is fine." for i in range(48))
ANSWER_TIMEOUT_MS = 20_000


def expected_answer(question: str) -> str:
    return default_answer({"messages": [{"role": "user", "content": [{"text": question}]}]})


# -- fixtures


@pytest.fixture(scope="module")
def sync_playwright() -> Any:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs Debian's package (apt-get install chromium) "
                    "when it runs as root; elsewhere install it, or point AIGW_CHROMIUM at one")
    return playwright.sync_playwright


@pytest.fixture(scope="module")
def gateway() -> Iterator[DevGateway]:
    saved = dict(os.environ)
    try:
        # pacing: the emulator pauses between words, so answers arrive over ~0.1-0.5 s, in many deltas.
        with running(SETTINGS, ports=Ports(0, 0, 0, 0), stack=f"web{secrets.token_hex(3)}", pacing_s=0.01,
                     seed_user=False) as gw:
            yield gw
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def browser(sync_playwright: Any, gateway: DevGateway) -> Iterator[Any]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Users:
    def __init__(self, gw: DevGateway) -> None:
        c = gw.info["cognito"]
        self.idp = boto3.client("cognito-idp", region_name=gw.info["region"], endpoint_url=c["endpoint"])
        assert gw.pool is not None
        self.pool = gw.pool

    def new(self, tier: str = "free") -> tuple[str, str]:
        """A fresh confirmed user of `tier`: (email, sub)."""
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        return email, add_user(self.idp, self.pool, email, PASSWORD, tier=tier)


@pytest.fixture(scope="module")
def users(gateway: DevGateway) -> Users:
    return Users(gateway)


class Page:
    """One browser tab on the chat page, with what it logged; `problems` are console errors and CSP refusals."""

    def __init__(self, context: Any, url: str) -> None:
        self.context = context
        self.page = context.new_page()
        self.page.set_default_timeout(ANSWER_TIMEOUT_MS)
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))
        self.page.goto(url)

    def sign_in(self, email: str) -> None:
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_label("Password", exact=True).fill(PASSWORD)
        self.page.get_by_label("Password", exact=True).press("Enter")
        self.page.locator("#chat-view").wait_for(state="visible")
        self.page.get_by_text("Connected").wait_for()

    def sign_out(self) -> None:
        self.page.get_by_role("button", name="Sign out").click()
        self.page.locator("#sign-in-view").wait_for(state="visible")

    def send(self, text: str) -> None:
        prompt = self.page.get_by_label("Message", exact=True)
        prompt.fill(text)
        prompt.press("Enter")

    def answers(self) -> Any:
        return self.page.locator("#messages .message.assistant")

    def wait_settled(self, index: int = -1) -> Any:
        """The assistant message at `index` once it is no longer streaming."""
        answer = self.answers().nth(index)
        answer.locator(".meta").filter(has_not_text="answering…").wait_for()
        return answer

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser: Any, gateway: DevGateway) -> Iterator[Any]:
    opened: list[Page] = []

    def open_(context: Any = None, **options: Any) -> Page:
        page = Page(context or browser.new_context(**options), gateway.info["web"])
        opened.append(page)
        return page

    yield open_
    for page in opened:
        page.close()


@pytest.fixture
def signed_in(open_page: Any, users: Users) -> Any:
    """`signed_in(tier="free", **context_options)`: a new tab, signed in as a fresh user of `tier`."""

    def sign_in(tier: str = "free", **options: Any) -> Page:
        email, _ = users.new(tier)
        tab = open_page(**options)
        tab.sign_in(email)
        return tab

    return sign_in


@dataclass(frozen=True)
class Tables:
    """The gateway's DynamoDB tables as the runtime's adapters see them, to prepare answers and spend budgets."""

    cache: AnswerCache
    meter: Meter
    budgets: Budgets


@pytest.fixture(scope="module")
def tables(gateway: DevGateway) -> Tables:
    info = gateway.info
    dynamodb = boto3.client("dynamodb", region_name=info["region"], endpoint_url=info["cognito"]["endpoint"])
    return Tables(
        AnswerCache(info["tables"]["cache"], client=dynamodb, namespace=SETTINGS.cache_namespace),
        Meter(info["tables"]["metering"], client=dynamodb),
        Budgets(info["tables"]["metering"], client=dynamodb),
    )


def tokens_left(page: Page, which: str) -> int:
    figure = page.page.locator(f"#budget-{which}-text")
    expect(figure).to_have_text(re.compile(r"[\d,]+ tokens left"))  # once the sign-in's usage read is answered
    text = figure.inner_text()
    found = re.fullmatch(r"([\d,]+) tokens left", text)
    assert found, text
    return int(found.group(1).replace(",", ""))


# -- the tests


def test_sign_in_send_and_watch_the_answer_stream_in(open_page: Any, users: Users) -> None:
    email, _ = users.new("free")
    tab = open_page(viewport={"width": 1100, "height": 720}, color_scheme="light")
    tab.sign_in(email)
    assert tab.page.locator("#who").inner_text() == f"Signed in as {email}"
    assert tab.page.locator("#budget-window-text").inner_text() == "–"  # nothing known before the first answer

    # Record every length the answer's text goes through, to see it arrive in pieces rather than at once.
    tab.page.evaluate("""() => {
        window.seenLengths = [];
        new MutationObserver(() => {
            const text = document.querySelector('#messages .message.assistant .text');
            if (text) window.seenLengths.push(text.textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")
    question = "What does the gateway meter?"
    tab.send(question)
    tab.page.locator("#stop").wait_for(state="visible")  # while it streams, it can be stopped
    answer = tab.wait_settled()

    assert answer.locator(".text").inner_text() == expected_answer(question)
    assert answer.locator(".meta").inner_text() == display_name(FREE_MODEL)
    assert answer.locator(".meta").get_attribute("title") == FREE_MODEL  # the id stays at hand
    assert tab.page.locator("#messages .message.user .text").inner_text() == question
    lengths = [n for n in tab.page.evaluate("window.seenLengths") if n > 0]
    assert len(set(lengths)) >= 3 and lengths == sorted(lengths), lengths
    assert tab.page.locator("#stop").is_hidden()

    window, month = tokens_left(tab, "window"), tokens_left(tab, "month")
    assert 0 < window < 20_000 and 0 < month < 500_000
    assert 20_000 - window == 500_000 - month  # one request, counted once in each
    meter = tab.page.locator("#budget-window")
    assert float(meter.get_attribute("max") or 0) == 20_000 and float(meter.get_attribute("value") or 0) == window
    # The conversation is named after its first question.
    assert tab.page.locator("#conversation-list .title").first.inner_text() == question
    assert tab.problems == []

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.page.screenshot(path=ARTIFACTS / "web-chat.png")

    # A second question in the same conversation is answered with the first exchange as history,
    # and the budget moves again.
    tab.send("And how?")
    tab.wait_settled()
    assert tab.answers().count() == 2
    assert tokens_left(tab, "window") < window


def test_text_from_the_conversation_is_never_markup(signed_in: Any) -> None:
    tab = signed_in()
    question = '<img src=x onerror="window.injected = 1"><b>bold?</b>'
    tab.send(question)
    tab.wait_settled()
    messages = tab.page.locator("#messages")
    assert messages.locator("img, b").count() == 0
    assert tab.page.locator("#messages .message.user .text").inner_text() == question
    assert tab.page.evaluate("window.injected") is None


def test_a_second_user_sees_none_of_the_first_users_conversations(open_page: Any, users: Users) -> None:
    first, first_sub = users.new("free")
    second, _ = users.new("free")
    tab = open_page()
    tab.sign_in(first)
    tab.send("A private question about my payslip")
    tab.wait_settled()

    assert tokens_left(tab, "window") < 20_000

    # Same browser, same storage: the next person to sign in sees a fresh, empty conversation list, and none of
    # the first user's figures...
    tab.sign_out()
    assert "payslip" not in tab.page.content()  # gone from the page itself, not only hidden
    tab.sign_in(second)
    titles = tab.page.locator("#conversation-list .title").all_inner_texts()
    assert titles == ["New conversation"]
    assert tab.answers().count() == 0
    assert "payslip" not in tab.page.locator("main").inner_text()
    assert tokens_left(tab, "window") == 20_000  # the second user's own (untouched) window, from their usage read

    # ...and the server refuses them the first user's channels even when they ask from the page directly.
    refused = tab.page.evaluate(
        """async (channel) => {
            const { EventsClient } = await import('./events.js');
            const config = await (await fetch('config.json')).json();
            const token = JSON.parse(sessionStorage.getItem('aigw.session')).idToken;
            const client = new EventsClient({ http: config.http, realtime: config.realtime, getToken: () => token });
            try {
                await client.subscribe(channel, () => {});
                return 'subscribed';
            } catch (err) {
                return err.errorType || String(err);
            } finally {
                client.close();
            }
        }""",
        f"/responses/{first_sub}/*",
    )
    assert refused == "UnauthorizedException"

    # Back as the first user, their conversation is still there, answer and all.
    tab.sign_out()
    tab.sign_in(first)
    assert tab.page.locator("#conversation-list .title").all_inner_texts() == ["A private question about my payslip"]
    assert tab.answers().count() == 1


def test_over_the_limit_shows_a_live_countdown(signed_in: Any) -> None:
    tab = signed_in("tiny")
    tab.send(LONG_QUESTION)
    tab.wait_settled()
    notice = tab.page.locator("#notice")

    # Asked again in the same conversation, the history makes it larger than the whole window: no wait helps,
    # and the page says so in the gateway's words rather than counting down.
    tab.send(LONG_QUESTION)
    notice.filter(has_text="larger than your rolling-window limit allows").wait_for()
    assert tab.page.locator("#send").is_enabled()

    # In a new conversation it would fit, once the first question has left the window.
    tab.page.locator("#new-conversation").click()
    tab.send(LONG_QUESTION)
    notice.filter(has_text="You can send again in").wait_for()
    countdown = re.compile(r"You can send again in (\d+) s\.")
    found = countdown.search(notice.inner_text())
    assert found, notice.inner_text()
    first = int(found.group(1))
    assert 0 < first <= 20
    assert tab.page.locator("#send").is_disabled()
    refused = tab.wait_settled()
    assert "Rate limited" in refused.locator(".meta").inner_text()
    # The number counts down in place, and sending is refused meanwhile.
    # (Playwright's own polling: wait_for_function would evaluate a string in the page, which the CSP forbids.)
    expect(notice).to_have_text(re.compile(rf"again in ({'|'.join(map(str, range(1, first)))}) s"))
    assert tab.page.locator("#send").is_disabled()


def test_a_cached_answer_is_marked(signed_in: Any, tables: Tables) -> None:
    prepared = "We are open nine to five, Monday to Friday."
    tables.cache.put("When are you open?", FREE_MODEL, prepared)
    tab = signed_in()

    tab.send("when are you OPEN?")
    answer = tab.wait_settled()
    assert answer.locator(".text").inner_text() == prepared
    assert answer.locator(".badge").inner_text() == "cached answer"

    tab.send("Something nobody prepared")
    fresh = tab.wait_settled()
    assert fresh.locator(".badge").count() == 0


def test_the_model_picker_offers_the_tiers_models_and_the_answer_names_the_one_used(
    open_page: Any, users: Users
) -> None:
    free, _ = users.new("free")
    pro, _ = users.new("pro")
    tab = open_page()
    tab.sign_in(free)
    picker = tab.page.get_by_label("Model", exact=True)
    # Options read as the catalog's names; their values are the model ids the request carries.
    free_name, pro_name = display_name(FREE_MODEL), display_name(PRO_MODEL)
    assert free_name != FREE_MODEL and pro_name != PRO_MODEL
    assert picker.locator("option").all_inner_texts() == ["Default", free_name]
    tab.sign_out()

    tab.sign_in(pro)
    assert picker.locator("option").all_inner_texts() == [f"Default ({pro_name})", free_name, pro_name]
    assert picker.locator("option").evaluate_all("os => os.map(o => o.value)") == ["", FREE_MODEL, PRO_MODEL]
    picker.select_option(FREE_MODEL)
    tab.send("Which model is this?")
    assert tab.wait_settled().locator(".meta").inner_text() == display_name(FREE_MODEL)
    picker.select_option("")
    tab.send("And now?")
    assert tab.wait_settled().locator(".meta").inner_text() == display_name(PRO_MODEL)


def test_conversations_can_be_created_switched_renamed_and_deleted(signed_in: Any) -> None:
    tab = signed_in()
    page = tab.page
    tab.send("First topic")
    tab.wait_settled()
    page.locator("#new-conversation").click()
    tab.send("Second topic")
    tab.wait_settled()
    titles = page.locator("#conversation-list .title")
    assert titles.all_inner_texts() == ["Second topic", "First topic"]
    # An empty conversation is already new: asking for another does not pile up empty ones.
    page.locator("#new-conversation").click()
    page.locator("#new-conversation").click()
    assert titles.all_inner_texts() == ["New conversation", "Second topic", "First topic"]
    titles.nth(2).click()  # away to an old one, then "new" again: the empty one is reused, not another added
    page.locator("#new-conversation").click()
    assert titles.all_inner_texts() == ["New conversation", "Second topic", "First topic"]
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete “New conversation”").click()

    titles.nth(1).click()
    assert page.locator("#messages .message.user .text").all_inner_texts() == ["First topic"]

    page.get_by_role("button", name="Rename “First topic”").click()
    name = page.get_by_label("Conversation name")
    name.fill("Renamed topic")
    name.press("Enter")
    assert titles.all_inner_texts() == ["Second topic", "Renamed topic"]
    expect(titles.nth(1)).to_be_focused()  # the keyboard stays on the entry it renamed
    assert page.locator("#conversation-title").inner_text() == "Renamed topic"

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete “Second topic”").click()
    assert titles.all_inner_texts() == ["Renamed topic"]

    # Kept in this browser: a reload finds the same list.
    page.reload()
    page.locator("#chat-view").wait_for(state="visible")
    assert titles.all_inner_texts() == ["Renamed topic"]
    assert page.locator("#messages .message.user .text").all_inner_texts() == ["First topic"]


LONG_WORDS = 600  # one emulated token per word, 10 ms apart: about 6 s of streaming


def long_answer(body: dict[str, Any]) -> str:
    return "".join(f" word{i}" for i in range(LONG_WORDS))


@pytest.fixture
def long_answers(gateway: DevGateway) -> Iterator[None]:
    """The emulator answers every question with `long_answer` for this test (one gateway for the module)."""
    assert gateway.bedrock is not None
    gateway.bedrock.answer = long_answer
    try:
        yield
    finally:
        gateway.bedrock.answer = default_answer


def test_stop_cancels_the_answer_and_charges_only_what_was_written(signed_in: Any, long_answers: None) -> None:
    tab = signed_in()
    before = tokens_left(tab, "window")  # the sign-in's usage read fills the bars before any answer
    tab.send("Tell me a long story")
    answer = tab.answers().last
    answer.locator(".text").filter(has_text="word20").wait_for()
    tab.page.get_by_role("button", name="Stop").click()
    shown = answer.locator(".text").inner_text()
    # The gateway's `end` (stopReason cancelled) arrives within about a second and says what was charged.
    meta = answer.locator(".meta").filter(has_text="tokens charged")
    meta.wait_for()
    found = re.search(r"stopped · ([\d,]+) tokens charged", meta.inner_text())
    assert found, meta.inner_text()
    charged = int(found.group(1).replace(",", ""))
    assert before - tokens_left(tab, "window") == charged  # the budget moved by exactly that
    # The whole answer would have been ~1,600 output tokens by the gateway's estimate; Stop saved most of it.
    whole = estimate_output_tokens(long_answer({}))
    assert charged < whole * 0.6, (charged, whole)
    assert answer.locator(".text").inner_text() == shown  # the stopped text does not grow
    assert long_answer({}).startswith(shown.replace("\n", ""))
    assert tab.problems == []


def test_a_connection_dropped_mid_answer_is_resumed_with_nothing_lost_or_repeated(
    signed_in: Any, gateway: DevGateway, long_answers: None
) -> None:
    tab = signed_in()
    tab.send("Tell me a long story")
    answer = tab.answers().last
    answer.locator(".text").filter(has_text="word40").wait_for()
    assert gateway.events is not None
    assert gateway.events.call(gateway.events.server.close_connections()) >= 1
    tab.page.locator("#connection").filter(has_text="Reconnecting…").wait_for()
    settled = tab.wait_settled()
    # Every word exactly once and in order: what was published while the socket was down came from the journal.
    assert settled.locator(".text").inner_text().split() == long_answer({}).split()
    assert "answering" not in settled.locator(".meta").inner_text()
    assert "error" not in (settled.get_attribute("class") or "")
    assert tab.problems == []


def test_the_bars_show_the_users_own_limits_and_team_budget_at_sign_in(
    open_page: Any, users: Users, tables: Tables, gateway: DevGateway
) -> None:
    email, sub = users.new("free")
    # The tier has 20k / 500k tokens and no USD month; the override has its own of each.
    tables.meter.set_override(sub, Limits(window_tokens=7_000, monthly_tokens=100_000, monthly_usd=0.8))
    team = f"web{uuid.uuid4().hex[:6]}"
    users.idp.create_group(GroupName=f"team:{team}", UserPoolId=users.pool.user_pool_id)
    users.idp.admin_add_user_to_group(UserPoolId=users.pool.user_pool_id, Username=email, GroupName=f"team:{team}")
    tables.budgets.set_limits(budget_key("team", team), BudgetLimits(monthly_usd=4.2, window_tokens=9_000))
    tab = open_page()
    tab.sign_in(email)
    # Before any answer: the override's figures, not the tier's, and the team's month in dollars.
    expect(tab.page.locator("#budget-window-text")).to_have_text("7,000 tokens left")
    expect(tab.page.locator("#budget-month-text")).to_have_text("100,000 tokens left")
    assert tab.page.locator("#budget-window").get_attribute("max") == "7000"
    expect(tab.page.locator("#budget-team")).to_have_text(
        f"You: $0.80 left this month · Team {team}: $4.20 left this month, 9,000 tokens left in 10 minutes")
    tab.page.screenshot(path=ARTIFACTS / "web-chat-budgets.png")
    assert tab.problems == []


def test_keyboard_only_sign_in_and_send(open_page: Any, users: Users, gateway: DevGateway) -> None:
    email, _ = users.new("free")
    tab = open_page()
    page = tab.page
    expect(page.locator("#username")).to_be_focused()  # focus starts there
    page.keyboard.type(email)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.get_by_text("Connected").wait_for()
    expect(page.locator("#prompt")).to_be_focused()  # focus lands where typing happens
    page.keyboard.type("Hello there")
    page.keyboard.press("Enter")
    tab.wait_settled()
    assert tab.answers().count() == 1

    # On Stop when the answer ends (and Stop goes away), the keyboard lands back in the message box.
    assert gateway.bedrock is not None
    gateway.bedrock.pacing_s = 0.1  # a slow answer: time to reach Stop before it ends
    try:
        page.keyboard.type("A slow one, please")
        page.keyboard.press("Enter")
        stop = page.get_by_role("button", name="Stop")
        stop.wait_for(state="visible")
        page.keyboard.press("Tab")  # from the message box to the model picker...
        page.keyboard.press("Tab")  # ...and on to Stop
        expect(stop).to_be_focused()
        tab.wait_settled()
    finally:
        gateway.bedrock.pacing_s = 0.01
    expect(stop).to_be_hidden()
    expect(page.locator("#prompt")).to_be_focused()


def test_dark_mode_follows_the_system(open_page: Any) -> None:
    light = open_page(color_scheme="light")
    dark = open_page(color_scheme="dark")
    colour = "getComputedStyle(document.body).backgroundColor"
    assert light.page.evaluate(colour) == "rgb(255, 255, 255)"
    assert dark.page.evaluate(colour) == "rgb(19, 20, 24)"


def test_a_dropped_connection_is_reopened_and_subscriptions_come_back(
    signed_in: Any, gateway: DevGateway
) -> None:
    tab = signed_in()
    tab.send("Before the drop")
    tab.wait_settled()

    assert gateway.events is not None
    dropped = gateway.events.call(gateway.events.server.close_connections())
    assert dropped >= 1
    connection = tab.page.locator("#connection")
    connection.filter(has_text="Reconnecting…").wait_for()
    connection.filter(has_text="Connected").wait_for()  # backoff starts at 0.5-1 s

    # The conversation's subscription was renewed on the new connection: its answers arrive again.
    tab.send("After the drop")
    assert tab.wait_settled().locator(".text").inner_text() == expected_answer("After the drop")
    assert tab.problems == []


def test_a_session_is_refreshed_before_its_tokens_expire(signed_in: Any) -> None:
    tab = signed_in()
    page = tab.page
    before = page.evaluate("JSON.parse(sessionStorage.getItem('aigw.session'))")
    # Pretend the tokens expire in a minute (inside the refresh margin), then come back to the page.
    page.evaluate("""() => {
        const tokens = JSON.parse(sessionStorage.getItem('aigw.session'));
        tokens.expiresAt = Date.now() + 60_000;
        sessionStorage.setItem('aigw.session', JSON.stringify(tokens));
    }""")
    page.reload()
    page.get_by_text("Connected").wait_for()
    after = page.evaluate("JSON.parse(sessionStorage.getItem('aigw.session'))")
    assert after["refreshToken"] == before["refreshToken"]
    assert after["expiresAt"] > page.evaluate("Date.now()") + 10 * 60_000  # a fresh hour from Cognito
    tab.send("Still signed in?")
    tab.wait_settled()
    assert tab.answers().last.locator(".meta").inner_text() == display_name(FREE_MODEL)

    # A refresh token Cognito no longer honours ends the session on the sign-in form, saying why.
    page.evaluate("""() => {
        const tokens = JSON.parse(sessionStorage.getItem('aigw.session'));
        Object.assign(tokens, { expiresAt: 0, refreshToken: 'revoked' });
        sessionStorage.setItem('aigw.session', JSON.stringify(tokens));
    }""")
    page.reload()
    page.locator("#sign-in-view").wait_for(state="visible")


def test_an_exhausted_month_shows_when_it_resets(open_page: Any, users: Users, tables: Tables) -> None:
    email, sub = users.new("free")
    meter = tables.meter
    # This user's month allows 2,000 tokens, and 1,990 of them are already spent.
    limits = Limits(window_tokens=20_000, monthly_tokens=2_000)
    meter.set_override(sub, limits)
    spent = meter.admit(sub, limits, input_tokens=1_000, max_output_tokens=990)
    assert spent.admitted
    meter.settle(sub, spent.reservation_id, 1_000, 990)

    tab = open_page()
    tab.sign_in(email)
    tab.send("One more question")
    notice = tab.page.locator("#notice")
    notice.wait_for(state="visible")
    now = datetime.now(UTC)
    first_of_next = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert notice.inner_text() == (
        f"This month's allowance is used up. It resets on {first_of_next:%B} {first_of_next.day}, "
        f"{first_of_next.year} (UTC)."
    )
    assert tokens_left(tab, "month") == 10


def test_a_connection_gone_quiet_is_given_up_and_reopened(open_page: Any, users: Users) -> None:
    """No `ka` within the ack's connectionTimeoutMs means the socket is dead even if it looks open."""
    email, _ = users.new("free")
    tab = open_page()
    page = tab.page
    quiet = {"on": True, "connections": 0}

    def between_page_and_server(ws: Any) -> None:
        server = ws.connect_to_server()
        quiet["connections"] += 1

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if quiet["on"]:
                if frame.get("type") == "ka":
                    return  # swallowed: the page hears nothing between operations
                if frame.get("type") == "connection_ack":
                    frame["connectionTimeoutMs"] = 1_500
            ws.send(json.dumps(frame))

        server.on_message(from_server)

    page.route_web_socket(re.compile(r"/event/realtime$"), between_page_and_server)
    tab.sign_in(email)
    page.locator("#connection").filter(has_text="Reconnecting…").wait_for(timeout=5_000)
    quiet["on"] = False
    page.locator("#connection").filter(has_text="Connected").wait_for(timeout=10_000)
    assert quiet["connections"] >= 2
    tab.send("Are you there?")
    assert tab.wait_settled().locator(".text").inner_text() == expected_answer("Are you there?")


AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}}


def axe_violations(page: Any) -> list[tuple[str, str, list[Any]]]:
    """axe-core (Deque's engine, bundled by axe-playwright-python) against WCAG 2.1 A/AA and best practice."""
    from axe_playwright_python.sync_playwright import Axe

    violations = Axe().run(page, options=AXE_OPTIONS).response["violations"]
    return [(v["id"], v["help"], [n["target"] for n in v["nodes"]]) for v in violations]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_accessibility_violations_axe_finds(open_page: Any, users: Users, scheme: str) -> None:
    tab = open_page(color_scheme=scheme)
    tab.page.locator("#sign-in-view").wait_for(state="visible")
    found = {"sign-in": axe_violations(tab.page)}
    email, _ = users.new("tiny")
    tab.sign_in(email)
    tab.send(LONG_QUESTION)
    tab.wait_settled()
    tab.page.locator("#new-conversation").click()
    tab.send(LONG_QUESTION)  # refused: the countdown notice is on screen too
    tab.page.locator("#notice").wait_for(state="visible")
    found["chat"] = axe_violations(tab.page)
    assert found == {"sign-in": [], "chat": []}


def test_a_phone_sized_screen_needs_no_sideways_scrolling(signed_in: Any) -> None:
    tab = signed_in(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    tab.send("A question with a long unbroken word: " + "x" * 120)
    tab.wait_settled()
    overflow = "document.scrollingElement.scrollWidth - document.documentElement.clientWidth"
    tab.page.screenshot(path=ARTIFACTS / "web-chat-phone.png", full_page=True)
    assert tab.page.evaluate(overflow) <= 0
    # Everything needed to chat is within the screen's width.
    for target in ("#prompt", "#send", "#model", "#new-conversation", "#sign-out"):
        box = tab.page.locator(target).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, (target, box)


def totp_code(secret: str, offset_steps: int = 0) -> str:
    """What an authenticator app shows for `secret` (RFC 6238: SHA-1, 6 digits, 30 s), `offset_steps` away."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)
    totp = TOTP(key, 6, SHA1(), 30, enforce_key_length=False)
    return totp.generate(time.time() + 30 * offset_steps).decode()


def test_first_sign_in_new_password_then_authenticator_set_up_then_codes(
    open_page: Any, users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prod journey: an admin-made user with a temporary password, in a pool that requires TOTP."""
    monkeypatch.setenv("MOTO_COGNITO_IDP_USER_POOL_ENABLE_TOTP", "true")  # moto checks the codes, as Cognito does
    email = f"new-{uuid.uuid4().hex[:10]}@example.com"
    users.idp.admin_create_user(
        UserPoolId=users.pool.user_pool_id, Username=email, TemporaryPassword="Temporary-Pass-4-Now",
        UserAttributes=[{"Name": "email", "Value": email}, {"Name": "email_verified", "Value": "true"}],
        MessageAction="SUPPRESS",
    )
    tab = open_page()
    page = tab.page
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill("Temporary-Pass-4-Now")
    page.get_by_role("button", name="Sign in").click()

    title = page.locator("#challenge-title")
    title.filter(has_text="Choose a new password").wait_for()
    expect(page.locator("#new-password")).to_be_focused()
    page.get_by_label("New password", exact=True).fill(PASSWORD)
    page.get_by_label("New password, again").fill(PASSWORD + "x")
    page.get_by_role("button", name="Continue").click()
    assert page.locator("#challenge-error").inner_text() == "Type the same new password twice."
    page.get_by_label("New password, again").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()

    title.filter(has_text="Set up two-step sign-in").wait_for()
    page.locator("#totp-secret").filter(has_text=re.compile(r"\w")).wait_for()
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    link = page.get_by_role("link", name="Add to authenticator app").get_attribute("href") or ""
    assert link.startswith("otpauth://totp/") and f"secret={secret}" in link
    assert axe_violations(page) == []
    code = page.get_by_label("6-digit code from your authenticator app")
    code.fill(totp_code(secret, offset_steps=3))  # a code from 90 s in the future: refused
    page.get_by_role("button", name="Continue").click()
    page.locator("#challenge-error").filter(has_text="did not match").wait_for()
    assert [p for p in tab.problems if "400" not in p] == []
    tab.problems.clear()  # Chromium logs the refused code's HTTP 400; nothing else went wrong
    code.fill(totp_code(secret))
    page.get_by_role("button", name="Continue").click()
    page.get_by_text("Connected").wait_for()
    assert page.locator("#who").inner_text() == f"Signed in as {email}"

    # From now on: password, then the app's current code.
    tab.sign_out()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password", exact=True).press("Enter")
    title.filter(has_text="Two-step sign-in").wait_for()
    assert page.locator("#totp-setup").is_hidden() and page.locator("#new-password-fields").is_hidden()
    code.fill(totp_code(secret))
    code.press("Enter")
    page.get_by_text("Connected").wait_for()
    tab.send("Signed in with two steps")
    assert tab.wait_settled().locator(".meta").inner_text() == display_name(FREE_MODEL)
    assert tab.problems == []


def test_a_model_failure_mid_answer_keeps_the_text_and_says_what_happened(
    signed_in: Any, gateway: DevGateway
) -> None:
    tab = signed_in()
    assert gateway.bedrock is not None
    gateway.bedrock.inject_fault("mid_stream", after_deltas=3)
    question = "Tell me something long"
    tab.send(question)
    answer = tab.wait_settled()
    assert answer.locator(".meta").inner_text().endswith("The model failed to answer. Try again.")
    shown = answer.locator(".text").inner_text()
    assert shown and expected_answer(question).startswith(shown)  # what arrived stays, nothing invented
    assert "error" in (answer.get_attribute("class") or "")
    expect(tab.page.locator("#notice")).to_have_text("The model failed to answer. Try again.")
    # The failed exchange is not sent back as history: the next question is answered as a first one.
    tab.send("Try again")
    assert tab.wait_settled().locator(".text").inner_text() == expected_answer("Try again")
    assert tab.page.locator("#notice").is_hidden()


# -- Markdown: what models write, never markup

ALLOWED_MARKUP = {
    "SPAN": {"class"},  # highlighting: tok-keyword, tok-string, tok-number, tok-comment
    "P": set(), "H3": set(), "H4": set(), "H5": set(), "H6": set(), "PRE": set(), "CODE": {"data-language"},
    "UL": set(), "OL": {"start"}, "LI": set(), "STRONG": set(), "EM": set(), "A": {"href", "rel", "target"},
}
RENDER = """(text) => import('./markdown.js').then(({ renderMarkdown }) => {
    const box = document.createElement('div');
    box.append(renderMarkdown(text));
    return {
        text: box.textContent,
        elements: [...box.querySelectorAll('*')].map((e) => [e.tagName, e.getAttributeNames(), e.getAttribute('href')]),
    };
})"""


@pytest.fixture(scope="module")
def blank_page(browser: Any, gateway: DevGateway) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(gateway.info["web"])
    yield page
    context.close()


# Markdown's constructs around text full of HTML and Markdown metacharacters, strung together.
_atoms = st.sampled_from([*"ab <>&\"'`*_#-+[]()!:/.1 ", "<script>", "<img src=x onerror=alert(1)>", "</p>", "&lt;",
                          "<b>", "**", "](", "http://x.y"])
_inner = st.lists(_atoms, max_size=8).map("".join)
markdownish = st.lists(
    st.one_of(
        _atoms,
        st.sampled_from(["\n", "\n\n", "\n- ", "\n1. ", "\n## ", "\n```\n", "\n  "]),
        st.tuples(st.sampled_from(["`", "**", "*", "_", "__"]), _inner).map(lambda t: t[0] + t[1] + t[0]),
        st.tuples(_inner, st.sampled_from(["http://x.y/", "https://a.b/c?d=<e>", "javascript:alert(1)",
                                           "data:text/html,<b>x</b>"])).map(lambda t: f"[{t[0]}]({t[1]})"),
        _inner.map(lambda code: f"```js\n{code}\n```"),
    ),
    max_size=12,
).map("".join)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(markdownish)
def test_markdown_never_makes_markup_of_the_text(blank_page: Any, text: str) -> None:
    rendered = blank_page.evaluate(RENDER, text)
    for tag, attributes, href in rendered["elements"]:
        assert tag in ALLOWED_MARKUP and set(attributes) <= ALLOWED_MARKUP[tag], (tag, attributes)
        if tag == "A":
            assert href.startswith(("http://", "https://")), href
    # Markdown only ever consumes its own punctuation: every '<', '>' and '&' is still there, as text.
    for char in "<>&":
        assert rendered["text"].count(char) == text.count(char), char


HIGHLIGHT = """([code, language]) => import('./markdown.js').then(({ highlight }) => {
    const box = document.createElement('div');
    box.append(...highlight(code, language));
    return { text: box.textContent, tags: [...box.querySelectorAll('*')].map((e) => e.tagName + '.' + e.className) };
})"""


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([*"ab1_ .#/*-'\"`\\\n<>&x0", "def ", "SELECT ", "return"]), max_size=30).map("".join),
       st.sampled_from(["python", "js", "sql", ""]))
def test_highlighting_keeps_every_character_of_the_code(blank_page: Any, code: str, language: str) -> None:
    rendered = blank_page.evaluate(HIGHLIGHT, [code, language])
    assert rendered["text"] == code
    assert set(rendered["tags"]) <= {f"SPAN.tok-{k}" for k in ("keyword", "string", "number", "comment")}


ASSEMBLE = """(pieces) => import('./stream.js').then(({ StreamAssembler }) => {
    const assembler = new StreamAssembler();
    const out = pieces.flatMap((piece) => assembler.offer(piece));
    return { out, lastSeq: assembler.lastSeq, hasGap: assembler.hasGap, finished: assembler.finished };
})"""


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(deliveries())
def test_the_page_puts_an_answer_back_together_exactly_as_aigw_chat_does(
    blank_page: Any, case: tuple[list[str], list[dict[str, Any]]]
) -> None:
    # Any mix of live events, drops, merged replays and duplicates: the page's stream.js and aigw chat's
    # StreamAssembler hand back the same events (the whole text, once, in order), and so stay one contract.
    words, pieces = case
    cut = pieces[: len(pieces) // 2]  # also part-way, where holes and held events are still about
    for delivery in (pieces, cut):
        python = StreamAssembler()
        expected = [e for piece in delivery for e in python.offer(piece)]
        got = blank_page.evaluate(ASSEMBLE, delivery)
        assert got["out"] == expected
        assert (got["lastSeq"], got["hasGap"], got["finished"]) == (python.last_seq, python.has_gap, python.finished)
    assert "".join(e.get("text", "") for e in blank_page.evaluate(ASSEMBLE, pieces)["out"]) == "".join(words)


def test_a_markdown_answer_is_formatted_and_stays_safe(signed_in: Any, tables: Tables) -> None:
    prepared = (
        "## Setting up\n\nRun **two** commands, *in order*:\n\n1. `make dev`\n2. `make test`\n\n"
        "```sh\nmake dev  # <b>not bold</b>\n```\n\nSee [the docs](https://example.com/docs) - not "
        "[this](javascript:alert(1)) or <img src=x onerror=\"window.injected=1\">."
    )
    tables.cache.put("How do I start?", FREE_MODEL, prepared)
    tab = signed_in()
    tab.send("How do I start?")
    text = tab.wait_settled().locator(".text")
    assert text.locator("h4").inner_text() == "Setting up"
    assert text.locator("strong").inner_text() == "two" and text.locator("em").inner_text() == "in order"
    assert text.locator("ol > li").all_inner_texts() == ["make dev", "make test"]
    assert text.locator("pre code").inner_text() == "make dev  # <b>not bold</b>"
    link = text.get_by_role("link", name="the docs")
    assert link.get_attribute("href") == "https://example.com/docs" and "noopener" in (link.get_attribute("rel") or "")
    assert text.locator("a").count() == 1  # the javascript: one stays text
    assert text.locator("img, b, script").count() == 0
    assert "[this](javascript:alert(1))" in text.inner_text()
    assert tab.page.evaluate("window.injected") is None


PYTHON_ANSWER = 'Like this:\n\n```python\ndef greet(name):\n    return "hi " + name  # 42\n```\n\nDone.'


def test_code_is_highlighted_and_answers_and_code_blocks_have_copy_buttons(
    signed_in: Any, tables: Tables
) -> None:
    tables.cache.put("Show me code", FREE_MODEL, PYTHON_ANSWER)
    tab = signed_in(permissions=["clipboard-read", "clipboard-write"])
    tab.send("Show me code")
    answer = tab.wait_settled()
    code = answer.locator("pre code")
    assert code.inner_text() == 'def greet(name):\n    return "hi " + name  # 42'  # every character, in order
    assert code.locator(".tok-keyword").all_inner_texts() == ["def", "return"]
    assert code.locator(".tok-string").all_inner_texts() == ['"hi "']
    assert code.locator(".tok-comment").all_inner_texts() == ["# 42"]
    answer.get_by_role("button", name="Copy the code").click()
    expect(answer.get_by_role("button", name="Copy the code")).to_have_text("Copied")
    assert tab.page.evaluate("navigator.clipboard.readText()") == code.inner_text()
    answer.get_by_role("button", name="Copy the answer").click()
    assert tab.page.evaluate("navigator.clipboard.readText()") == PYTHON_ANSWER  # the Markdown as written
    tab.page.screenshot(path=ARTIFACTS / "web-chat-code.png")
    assert tab.problems == []


def test_long_titles_are_shown_whole_on_hover(signed_in: Any) -> None:
    tab = signed_in()
    question = "Where should a platform team keep its budget alarms?"  # under the 60-character title cut
    tab.send(question)
    tab.wait_settled()
    title = tab.page.locator("#conversation-list .title").first
    assert title.get_attribute("title") == question
    assert title.inner_text() == question  # the text is whole too; only the display is cut to fit


def test_the_page_over_tls_signs_in_and_streams(browser: Any, tmp_path: Path) -> None:
    """`aigw dev --tls`: the page on https://localhost, the socket on wss://, under the CSP for those origins."""
    saved = dict(os.environ)
    try:
        with running(SETTINGS, ports=Ports(0, 0, 0, 0), stack=f"webtls{secrets.token_hex(3)}", pacing_s=0.0,
                     tls=True, tls_dir=tmp_path, analytics_dir=None) as gw:
            assert gw.info["web"].startswith("https://localhost:")
            # The local CA is not in Chromium's store; the test trusts it the way a developer's browser would.
            context = browser.new_context(ignore_https_errors=True)
            try:
                tab = Page(context, gw.info["web"])
                demo = gw.info["demo_user"]
                tab.page.get_by_label("Email").fill(demo["username"])
                tab.page.get_by_label("Password", exact=True).fill(demo["password"])
                tab.page.get_by_label("Password", exact=True).press("Enter")
                tab.page.get_by_text("Connected").wait_for()
                tab.send("Over TLS?")
                assert tab.wait_settled().locator(".text").inner_text() == expected_answer("Over TLS?")
                csp = tab.page.evaluate("fetch('config.json').then((r) => r.headers.get('content-security-policy'))")
                assert "wss://localhost:" in csp and "https://localhost:" in csp
                assert tab.problems == []
            finally:
                context.close()
    finally:
        # Back to the module's gateway: its environment, and handlers that build their clients from it again.
        os.environ.clear()
        os.environ.update(saved)
        from runtime import handlers

        for cached in (handlers.config, handlers.gatekeeper, handlers.worker):
            cached.cache_clear()


def test_the_module_gateway_still_answers_after_the_tls_one(signed_in: Any) -> None:
    tab = signed_in()
    tab.send("Still here?")
    assert tab.wait_settled().locator(".text").inner_text() == expected_answer("Still here?")


def test_full_browser_storage_keeps_the_newest_conversations_and_says_so(open_page: Any, users: Users) -> None:
    email, sub = users.new("free")
    tab = open_page()
    tab.sign_in(email)
    page = tab.page
    for topic in ("Oldest topic", "Middle topic"):
        page.locator("#new-conversation").click()
        tab.send(topic)
        tab.wait_settled()
    # From now on the browser refuses to store more than it holds now (as a full quota does).
    page.evaluate("""(key) => {
        const limit = localStorage.getItem(key).length + 200;
        const setItem = Storage.prototype.setItem;
        Storage.prototype.setItem = function (k, v) {
            if (k === key && v.length > limit) throw new DOMException('full', 'QuotaExceededError');
            return setItem.call(this, k, v);
        };
    }""", f"aigw.conversations.{sub}")
    page.locator("#new-conversation").click()
    tab.send("Newest topic")
    tab.wait_settled()
    expect(page.locator("#notice")).to_have_text(
        "This browser's storage is full: the oldest conversations will not be kept after a reload."
    )
    titles = page.locator("#conversation-list .title")
    assert titles.all_inner_texts()[:3] == ["Newest topic", "Middle topic", "Oldest topic"]  # still on screen

    page.reload()  # the patch goes with the old page
    page.locator("#chat-view").wait_for(state="visible")
    kept = titles.all_inner_texts()
    assert kept[0] == "Newest topic" and "Oldest topic" not in kept


def test_a_message_over_240_kb_is_refused_in_words_before_sending_and_stays_in_the_box(signed_in: Any) -> None:
    tab = signed_in()
    huge = "Please read all of this. " * (300 * 1024 // 25)  # about 300 KB, as if pasted
    tab.send(huge)
    notice = tab.page.locator("#notice")
    notice.filter(has_text="message too long").wait_for()
    assert re.search(r"Not sent: message too long: 30\d KB, the limit is 240 KB per request", notice.inner_text())
    assert "BadRequestException" not in notice.inner_text()
    # Nothing was sent or recorded, and the text is still there to shorten.
    assert tab.answers().count() == 0
    assert tab.page.get_by_label("Message", exact=True).input_value() == huge  # as typed
    # The page carries on: a short message is answered.
    tab.send("short one")
    assert tab.wait_settled().locator(".text").inner_text().strip() == expected_answer("short one").strip()
    assert tab.problems == []


def test_the_page_measures_against_the_runtimes_event_limit() -> None:
    found = re.search(r"const MAX_EVENT_BYTES = (\d+);", (ROOT / "web" / "app.js").read_text())
    assert found and int(found.group(1)) == MAX_EVENT_BYTES
