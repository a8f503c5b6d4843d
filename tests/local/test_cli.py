"""`aigw chat|users|limits|usage|cache` through typer's CliRunner, against an in-process `aigw dev` gateway.

Every command gets `--dev-json <tmp>/.aigw/dev.json`; the stack file is found next to it (copied there), so
nothing depends on the working directory.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from aigw import admin, client
from aigw.cli import _show_error, app
from aigw.client import EventsClient, ProtocolError, sign_in
from aigw.dev import Ports, running
from aigw.emulators.bedrock import default_answer
from components.settings import StackSettings

ROOT = Path(__file__).resolve().parents[2]
NOVA = "amazon.nova-lite-v1:0"
PASSWORD = "Str0ng!Passw0rd-for-tests"


@pytest.fixture(scope="module")
def dev_json(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    project = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "Pulumi.dev.yaml", project / "Pulumi.dev.yaml")
    settings = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
    # moto's backends are process-wide: a stack name of our own keeps our tables apart from any other
    # in-process gateway of this pytest session (`ai-gateway-dev-*` may already exist).
    stack = f"cli{uuid.uuid4().hex[:8]}"
    with running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0, stack=stack) as gw:
        yield gw.write_info(project / ".aigw")


# The in-process gateway's JSON logs and EMF lines land in the same captured stdout, between streamed deltas.
_GATEWAY_LOG = re.compile(r'\{"(?:level|_aws)"[^\n]*\n')


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str
    output: str


def aigw(dev_json: Path, *args: str, input: str | None = None) -> Run:
    result = CliRunner().invoke(app, [*args, "--dev-json", str(dev_json)], input=input, env={"COLUMNS": "200"})
    # Whatever happened, it was a clean exit with a message, never a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return Run(result.exit_code, *(_GATEWAY_LOG.sub("", t) for t in (result.stdout, result.stderr, result.output)))


def as_json(result: Run) -> Any:
    """A command's `--json` output, parsed: it exited 0 and stdout is JSON only (the gateway's logs taken out)."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def answer_to(text: str) -> str:
    return default_answer({"messages": [{"role": "user", "content": [{"text": text}]}]})


# -- users


def test_users_add_list_set_tier_round_trip(dev_json: Path) -> None:
    added = aigw(dev_json, "users", "add", "alice@example.com", "--tier", "free")
    assert added.exit_code == 0, added.output
    password = re.search(r"password: (\S+)", added.stdout)
    assert password, "a generated password is printed"
    target = admin.Target.from_dev_json(dev_json)
    assert sign_in(target.endpoints(), "alice@example.com", password[1])["IdToken"]  # and it signs in

    listed = aigw(dev_json, "users", "list")
    assert listed.exit_code == 0
    row = next(line for line in listed.stdout.splitlines() if "alice@example.com" in line)
    assert "free" in row and "pro" not in row
    assert "demo@example.com" in listed.stdout

    moved = aigw(dev_json, "users", "set-tier", "alice@example.com", "pro")
    assert moved.exit_code == 0, moved.output
    row = next(line for line in aigw(dev_json, "users", "list").stdout.splitlines() if "alice@example.com" in line)
    assert "pro" in row and "free" not in row


def test_bad_input_exits_2_with_a_message(dev_json: Path, tmp_path: Path) -> None:
    cases = [
        (("users", "add", "gold@example.com", "--tier", "gold"), "unknown tier 'gold'"),
        (("users", "add", "not-an-email"), "not an email address"),
        (("users", "add", "weak@example.com", "--password", "short"), "password refused"),
        (("users", "set-tier", "demo@example.com", "platinum"), "unknown tier 'platinum'"),
        (("users", "set-tier", "nobody@example.com", "pro"), "unknown user"),
        (("limits", "show", "nobody@example.com"), "unknown user"),
        (("usage", "00000000-0000-0000-0000-000000000000"), "unknown user"),
        (("usage", "not a user!"), "neither an email address nor a user id"),
        (("limits", "set", "demo@example.com", "--window-tokens", "0", "--monthly-tokens", "10"), "window_tokens"),
        (("limits", "set", "demo@example.com", "--window-tokens", "100", "--monthly-tokens", "1000",
          "--window-seconds", "15"), "multiple of 10"),
        (("cache", "put", "   ", "an answer", "--model", NOVA), "question"),
        (("cache", "put", "q", "a", "--model", NOVA, "--ttl-days", "0"), "--ttl-days"),
        (("cache", "import", str(tmp_path / "missing.jsonl")), "no such file"),
        (("chat", "--user", "demo@example.com", "--password", "Wr0ng!password", "--prompt", "hi"), "sign-in refused"),
    ]
    for args, message in cases:
        result = aigw(dev_json, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
    # The refused password left no half-made user behind.
    assert "weak@example.com" not in aigw(dev_json, "users", "list").stdout

    missing = aigw(tmp_path / "nowhere.json", "users", "list")
    assert missing.exit_code == 2 and "aigw dev" in missing.stderr


# -- limits and usage


def test_limits_set_show_clear_change_what_usage_reports(dev_json: Path) -> None:
    assert aigw(dev_json, "users", "add", "bob@example.com", "--password", PASSWORD).exit_code == 0
    sub = next(line for line in aigw(dev_json, "users", "list").stdout.splitlines() if "bob@example.com" in line)
    sub = re.search(r"[0-9a-f]{8}-[0-9a-f-]{27}", sub)[0]  # type: ignore[index]

    before = aigw(dev_json, "usage", "bob@example.com")
    assert before.exit_code == 0 and "limits from tier free" in before.stdout and "20,000" in before.stdout

    changed = aigw(dev_json, "limits", "set", "bob@example.com", "--window-tokens", "5000", "--monthly-tokens",
                   "90000", "--window-seconds", "300")
    assert changed.exit_code == 0, changed.output
    shown = aigw(dev_json, "limits", "show", sub)  # by sub as well as by email
    assert shown.exit_code == 0
    override = next(line for line in shown.stdout.splitlines() if "override" in line)
    assert "5,000" in override and "90,000" in override and "300" in override and "64" in override
    during = aigw(dev_json, "usage", sub)
    assert "limits from override" in during.stdout and "5,000" in during.stdout and "90,000" in during.stdout

    cleared = aigw(dev_json, "limits", "clear", "bob@example.com")
    assert cleared.exit_code == 0 and "tier free limits apply" in cleared.stdout
    after = aigw(dev_json, "usage", "bob@example.com")
    assert "limits from tier free" in after.stdout and "20,000" in after.stdout and "5,000" not in after.stdout
    assert "no override" in aigw(dev_json, "limits", "show", "bob@example.com").stdout


def test_limits_json_says_tier_override_and_effective_in_one_shape(dev_json: Path) -> None:
    assert aigw(dev_json, "users", "add", "jo@example.com", "--password", PASSWORD).exit_code == 0
    shown = json.loads(aigw(dev_json, "limits", "show", "jo@example.com", "--json").stdout)
    assert shown["limits_from"] == "tier" and shown["override"] is None and shown["tier"] == "free"
    assert shown["effective"] == shown["tier_limits"] and shown["tier_limits"]["window_tokens"] == 20_000
    changed = aigw(dev_json, "limits", "set", "jo@example.com", "--window-tokens", "5000", "--monthly-tokens",
                   "90000", "--monthly-usd", "2.5", "--json")
    assert changed.exit_code == 0, changed.output
    view = json.loads(changed.stdout)
    assert view["limits_from"] == "override" and view["sub"] == shown["sub"]
    assert view["override"] == view["effective"] == {
        "window_tokens": 5_000, "monthly_tokens": 90_000, "window_seconds": 600, "min_output_tokens": 64,
        "monthly_usd": 2.5,
    }
    assert json.loads(aigw(dev_json, "limits", "show", "jo@example.com", "--json").stdout) == view
    assert "$2.50" in aigw(dev_json, "limits", "show", "jo@example.com").stdout
    cleared = json.loads(aigw(dev_json, "limits", "clear", "jo@example.com", "--json").stdout)
    assert cleared["override"] is None and cleared["effective"] == shown["tier_limits"]


# -- cache


def test_cache_put_get_list_rm_import(dev_json: Path, tmp_path: Path) -> None:
    put = aigw(dev_json, "cache", "put", "What is AIGW?", "A serverless AI gateway.", "--model", NOVA,
               "--ttl-days", "7")
    assert put.exit_code == 0, put.output
    got = aigw(dev_json, "cache", "get", "what is  aigw", "--model", NOVA)  # normalized like the gateway does
    assert got.exit_code == 0 and "A serverless AI gateway." in got.stdout
    listed = aigw(dev_json, "cache", "list")
    assert "What is AIGW?" in listed.stdout and NOVA in listed.stdout
    assert aigw(dev_json, "cache", "rm", "What is AIGW?", "--model", NOVA).exit_code == 0
    gone = aigw(dev_json, "cache", "get", "What is AIGW?", "--model", NOVA)
    assert gone.exit_code == 1 and "no answer stored" in gone.stderr
    assert aigw(dev_json, "cache", "rm", "What is AIGW?", "--model", NOVA).exit_code == 1

    lines = tmp_path / "answers.jsonl"
    lines.write_text(
        '{"question": "Opening hours?", "answer": "Nine to five.", "modelId": "amazon.nova-lite-v1:0"}\n'
        '{"question": "No answer here", "modelId": "amazon.nova-lite-v1:0"}\n'
        "\n"
        '{"question": "Refunds?", "answer": "Within 30 days.", "modelId": "amazon.nova-lite-v1:0", '
        '"ttlSeconds": 3600}\n'
        "not json\n"
    )
    imported = aigw(dev_json, "cache", "import", str(lines))
    assert imported.exit_code == 1  # some lines were bad
    assert "imported 2 answers" in imported.stdout
    assert re.search(r"line 2: missing field\(s\): answer", imported.stdout)
    assert re.search(r"line 5: invalid JSON", imported.stdout)
    assert "Nine to five." in aigw(dev_json, "cache", "get", "opening hours", "--model", NOVA).stdout


def test_cache_json_round_trip(dev_json: Path, tmp_path: Path) -> None:
    put = json.loads(aigw(dev_json, "cache", "put", "Where is the office?", "Lisbon.", "--model", NOVA,
                          "--ttl-days", "2", "--json").stdout)
    assert put["question"] == "Where is the office?" and put["answer"] == "Lisbon." and put["model"] == NOVA
    assert put["expires"].endswith("Z") and put["hits"] == 0
    got = json.loads(aigw(dev_json, "cache", "get", "where is the office", "--model", NOVA, "--json").stdout)
    assert got == put
    listed = json.loads(aigw(dev_json, "cache", "list", "--json").stdout)
    assert put in listed and all({"key", "question", "answer", "expires_at"} <= set(e) for e in listed)
    removed = json.loads(aigw(dev_json, "cache", "rm", "Where is the office?", "--model", NOVA, "--json").stdout)
    assert removed == {"removed": {"question": "Where is the office?", "model": NOVA}}
    missing = aigw(dev_json, "cache", "get", "Where is the office?", "--model", NOVA, "--json")
    assert missing.exit_code == 1 and missing.stdout == ""  # nothing to parse, the reason on stderr
    lines = tmp_path / "more.jsonl"
    lines.write_text('{"question": "Parking?", "answer": "Level -1.", "modelId": "amazon.nova-lite-v1:0"}\nnope\n')
    imported = aigw(dev_json, "cache", "import", str(lines), "--json")
    assert imported.exit_code == 1
    report = json.loads(imported.stdout)
    assert report["imported"] == 1 and [e["line"] for e in report["errors"]] == [2]


# -- chat


def test_chat_prompt_streams_an_answer_and_the_remaining_budget(dev_json: Path) -> None:
    result = aigw(dev_json, "chat", "--prompt", "hi")
    assert result.exit_code == 0, result.output
    assert answer_to("hi") in result.stdout
    assert re.search(r"remaining: [\d,]+ tokens in this window, [\d,]+ this month", result.stdout)


def test_chat_is_multi_turn_and_ends_on_quit(dev_json: Path) -> None:
    result = aigw(dev_json, "chat", input="hello there\n\nand then?\n/quit\nnever sent\n")
    assert result.exit_code == 0, result.output
    assert answer_to("hello there") in result.stdout and answer_to("and then?") in result.stdout
    assert result.stdout.count("remaining:") == 2

    # The session sends the whole history each turn and keeps only answered turns.
    target = admin.Target.from_dev_json(dev_json)
    assert target.demo_user is not None
    token = sign_in(target.endpoints(), *target.demo_user)["IdToken"]

    async def two_turns() -> list[dict[str, Any]]:
        async with EventsClient(target.endpoints(), token) as client:
            session = await admin.ChatSession(client).open()
            for prompt in ("first", "second"):
                events = [e async for e in session.turn(prompt)]
                assert events[-1]["type"] == "end"
            return session.messages

    messages = asyncio.run(two_turns())
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"][0]["text"] == answer_to("first")


def test_chat_rate_limited_says_when_to_retry(dev_json: Path) -> None:
    assert aigw(dev_json, "users", "add", "carol@example.com", "--password", PASSWORD).exit_code == 0
    # A window just big enough for one answer: the second request must wait for the first to leave the window.
    limited = aigw(dev_json, "limits", "set", "carol@example.com", "--window-tokens", "100", "--monthly-tokens",
                   "1000000", "--min-output-tokens", "80")
    assert limited.exit_code == 0, limited.output
    login = ("--user", "carol@example.com", "--password", PASSWORD)
    first = aigw(dev_json, "chat", *login, "--prompt", "hi")
    assert first.exit_code == 0, first.output

    # --no-wait: say how long to wait instead of counting it down (and resending), so the test does not wait.
    second = aigw(dev_json, "chat", *login, "--prompt", "hi again", "--no-wait")
    assert second.exit_code == 1, second.output
    retry = re.search(r"rate limited: .*Retry in (\d+) s\.", second.stdout)
    assert retry and 0 < int(retry[1]) <= 610, second.stdout


def test_rate_limit_countdown_runs_out_then_resends() -> None:
    # Without --no-wait the wait is counted down once a second (Ctrl-C stops it) and the message resent.
    console = Console(record=True, width=200)
    again = _show_error({"type": "error", "code": "rate_limited", "message": "too many tokens",
                         "retryAfterSeconds": 0.4}, console, wait=True)
    assert again is True
    assert "Retry in 1 s." in console.export_text()


def test_text_typed_on_a_terminal_during_a_countdown_is_the_next_prompt(tmp_path: Path) -> None:
    # On a real terminal (a pty): what is typed while `aigw chat` counts down stays in the terminal's line buffer,
    # so the prompt after the countdown reads it rather than losing it.
    import os
    import pty
    import select
    import sys
    import time

    program = (
        "from rich.console import Console\n"
        "from aigw.cli import _countdown\n"
        "_countdown(Console(), 2)\n"
        "print('NEXT:' + input('you> '), flush=True)\n"
    )
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal's side
        os.chdir(str(Path(__file__).resolve().parents[2]))
        os.execv(sys.executable, [sys.executable, "-c", program])
    output = b""
    try:
        time.sleep(0.7)  # the countdown is running
        os.write(fd, b"typed while waiting\n")
        deadline = time.monotonic() + 20
        while b"NEXT:" not in output and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    output += os.read(fd, 4096)
                except OSError:
                    break
    finally:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):  # still waiting for input: the text was lost
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert b"NEXT:typed while waiting" in output, output


def test_quota_exhausted_names_the_reset_date() -> None:
    console = Console(record=True, width=200)
    again = _show_error({"type": "error", "code": "quota_exhausted", "message": "your monthly token quota is used up",
                         "retryAfterSeconds": 1000.0}, console, wait=True)
    assert again is False
    assert re.search(r"resets on \d{4}-\d{2}-01 00:00 UTC", console.export_text())


# -- targets


def test_from_stack_reads_pulumi_outputs_or_asks_for_flags(tmp_path: Path) -> None:
    with pytest.raises(admin.AdminError, match="--region, --user-pool-id"):
        admin.Target.from_stack("prod", which=lambda _: None)

    outputs = ('{"region": "eu-west-1", "user_pool_id": "eu-west-1_abc", "web_client_id": "client", '
               '"metering_table": "m", "cache_table": "c", "http_endpoint": "https://h/event", '
               '"realtime_endpoint": "wss://r/event/realtime"}')
    seen: list[list[str]] = []

    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append(args)
        return subprocess.CompletedProcess(args, 0, stdout=outputs, stderr="")

    target = admin.Target.from_stack("prod", ROOT / "Pulumi.prod.yaml", which=lambda _: "/bin/pulumi", run=run)
    assert seen == [["/bin/pulumi", "stack", "output", "--json", "--stack", "prod"]]
    assert (target.region, target.user_pool_id, target.client_id) == ("eu-west-1", "eu-west-1_abc", "client")
    assert (target.metering_table, target.cache_table, target.local) == ("m", "c", False)
    assert target.tiers and target.default_tier

    result = CliRunner().invoke(app, ["users", "list", "--stack", "prod"], env={"PATH": str(tmp_path)})
    assert result.exit_code == 2 and "pulumi" in result.stderr


def test_every_admin_command_has_json() -> None:
    import typer.main

    root = typer.main.get_command(app)
    commands = [["usage"]] + [
        [group, name]
        for group in ("users", "limits", "cache", "teams", "budgets")
        for name in root.commands[group].commands  # type: ignore[attr-defined]
    ]
    assert len(commands) > 15
    for command in commands:
        result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--json" in result.output, command


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (["users", "add"], {"--dev-json", "--stack", "--stack-file", "--region", "--user-pool-id"}),
        (["limits", "set"], {"--dev-json", "--stack", "--region", "--user-pool-id", "--metering-table"}),
        (["cache", "put"], {"--dev-json", "--stack", "--region", "--cache-table"}),
        (["teams", "add"], {"--dev-json", "--stack", "--region", "--user-pool-id", "--metering-table", "--json"}),
        (["teams", "remove"], {"--dev-json", "--stack", "--metering-table", "--force", "--json"}),
        (["users", "set-team"], {"--dev-json", "--stack", "--user-pool-id", "--none", "--json"}),
        (["budgets", "set"], {"--dev-json", "--stack", "--stack-file", "--stack-monthly-usd", "--json"}),
        (["usage"], {"--dev-json", "--stack", "--team", "--json"}),
    ],
)
def test_every_admin_command_offers_the_target_options_and_shows_its_defaults(
    command: list[str], options: set[str]
) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert options <= set(re.findall(r"--[a-z-]+", result.output))
    if command == ["limits", "set"]:
        assert "[default: the tier's]" in result.output  # not eaten as Rich markup
        assert "--cache-table" not in result.output  # only the names the command uses


# -- requests over AppSync's 240 KB event limit

LIMIT = 240 * 1024


def fake_token(sub: str = "3f1c2a9e-0b7d-4d7e-9a51-2c8f6e1d4b00") -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"sub": sub}).encode()).decode().rstrip("=")
    return f"e30.{claims}.sig"


def chat_request(text: str, conversation_id: str = "conv-1") -> dict[str, Any]:
    return {"requestId": "req-1", "conversationId": conversation_id,
            "messages": [{"role": "user", "content": [{"text": text}]}]}


def padded_to(size: int) -> dict[str, Any]:
    """A chat request whose published event is exactly `size` bytes (two per "é": the limit is in bytes)."""
    overhead = len(client.event_text(chat_request("")).encode())
    request = chat_request("é" * ((size - overhead) // 2) + "x" * ((size - overhead) % 2))
    assert len(client.event_text(request).encode()) == size
    return request


def test_the_client_measures_a_request_in_utf8_bytes_as_published() -> None:
    assert client.too_long_message(len(client.event_text(padded_to(LIMIT)).encode())) is None
    message = client.too_long_message(len(client.event_text(padded_to(LIMIT + 1)).encode()))
    assert message is not None and message.startswith("message too long: 241 KB, the limit is 240 KB per request")
    assert "conversation so far" in message and "start a new conversation" in message


class FakeServer:
    """Stands in for `EventsClient._call`: subscribes succeed; publishes answer `publish_error` (or succeed)."""

    def __init__(self, error_type: str | None = "BadRequestException") -> None:
        self.error_type = error_type
        self.published: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> dict[str, Any]:
        if message["type"] != "publish":
            return {"type": f"{message['type']}_success", "id": message["id"]}
        self.published.append(message)
        if self.error_type is None:
            return {"type": "publish_success", "id": message["id"], "successful": [{"index": 0}], "failed": []}
        frame = {"type": "publish_error", "id": message["id"],
                 "errors": [{"errorType": self.error_type, "message": "raw server text: event 0 is 999 bytes"}]}
        raise ProtocolError(frame)


def local_client(server: FakeServer) -> EventsClient:
    events = EventsClient(client.Endpoints("https://h/event", "wss://h/event/realtime", "us-east-1", None, "p", "c"),
                          fake_token())
    events._call = server  # type: ignore[method-assign]
    return events


def test_a_chat_request_over_the_limit_is_refused_before_sending_with_a_typed_error() -> None:
    server = FakeServer(error_type=None)
    events = local_client(server)
    sub = "3f1c2a9e-0b7d-4d7e-9a51-2c8f6e1d4b00"

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        queue = await events.subscribe(f"/responses/{sub}/*")
        answer = await events.publish(f"/chat/{sub}/conv-1", [padded_to(LIMIT + 1)])
        return answer, queue.get_nowait()

    answer, told = asyncio.run(scenario())
    assert server.published == []  # never sent
    assert [f["index"] for f in answer["failed"]] == [0] and answer["successful"] == []
    assert answer["failed"][0]["errorMessage"].startswith("invalid_request: message too long: 241 KB")
    assert told["type"] == "error" and told["code"] == "invalid_request" and told["requestId"] == "req-1"
    assert told["conversationId"] == "conv-1" and told["message"].startswith("message too long: 241 KB")


def test_a_chat_request_the_server_refuses_is_told_in_words_not_the_raw_exception() -> None:
    events = local_client(FakeServer("BadRequestException"))
    sub = "3f1c2a9e-0b7d-4d7e-9a51-2c8f6e1d4b00"

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        queue = await events.subscribe(f"/responses/{sub}/conv-1")
        answer = await events.publish(f"/chat/{sub}/conv-1", [chat_request("hi")])
        return answer, queue.get_nowait()

    answer, told = asyncio.run(scenario())
    assert answer["failed"][0]["errorMessage"].startswith("invalid_request: ")
    assert told["code"] == "invalid_request" and "240 KB" in told["message"]
    assert "raw server text" not in json.dumps([answer, told]) and "BadRequestException" not in told["message"]
    # What is not a chat request still raises, frame and all, as before.
    with pytest.raises(ProtocolError) as raised:
        asyncio.run(events.publish(f"/chat/{sub}/conv-1", [{"pad": "x"}]))
    assert raised.value.frame["errors"][0]["errorType"] == "BadRequestException"


def test_chat_refuses_a_message_over_240_kb_in_words_and_the_session_carries_on(dev_json: Path) -> None:
    huge = "Please read all of this. " * (300 * 1024 // 25)  # about 300 KB, as if pasted
    result = aigw(dev_json, "chat", input=f"{huge}\nshort one\n/quit\n")
    assert result.exit_code == 0, result.output[-2000:]
    assert re.search(r"invalid_request: message too long: 30\d KB, the limit is 240 KB per request", result.stdout)
    assert "publish_error" not in result.output and "BadRequestException" not in result.output
    # The session did not end: the next message is answered, as a first one (the refused one is not history).
    assert answer_to("short one") in result.stdout and result.stdout.count("remaining:") == 1
