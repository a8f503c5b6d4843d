"""`aigw teams|budgets`, `users add --team`, `users set-team` and `usage --json|--team`: the pure part (names,
limits, views), then the commands through typer's CliRunner against an in-process `aigw dev` gateway whose stack
file enables a stack ceiling, and one request path end to end: a team's spent budget refuses its member."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aigw import admin
from aigw.admin import AdminError
from aigw.client import EventsClient, sign_in
from aigw.dev import Ports, running
from aigw.teams import budget_view, changed_limits, check_limits, check_team_name
from components.settings import StackSettings
from runtime.budgets import STACK_KEY, BudgetLimits, Budgets, BudgetUsage, Hold, Remaining, budget_key
from runtime.metering import Limits
from tests.local.test_cli import PASSWORD, aigw, as_json

ROOT = Path(__file__).resolve().parents[2]
CEILING_USD = 5.0

# --- the pure part --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["platform", "a", "data-science", "team7", "x" * 63])
def test_team_names_that_are_accepted(name: str) -> None:
    assert check_team_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "not a team name"),
        ("Platform", "did you mean 'platform'"),
        ("team:a", "not a team name"),
        ("a#b", "not a team name"),
        ("-lead", "starting and ending"),
        ("trail-", "starting and ending"),
        ("two words", "not a team name"),
        ("x" * 64, "1-63"),
    ],
)
def test_team_names_that_are_refused_say_what_a_name_may_be(name: str, why: str) -> None:
    with pytest.raises(AdminError, match=re.escape(why)):
        check_team_name(name)


def test_limits_must_be_positive() -> None:
    assert check_limits(0.01, None) == BudgetLimits(monthly_usd=0.01)
    refused = ((0.0, None, None, "--monthly-usd"), (-1.0, None, None, "--monthly-usd"),
               (None, 0, None, "--monthly-tokens"), (None, None, 0, "--window-tokens"))
    for usd, tokens, window, flag in refused:
        with pytest.raises(AdminError, match=flag):
            check_limits(usd, tokens, window)


def test_set_budget_changes_what_is_named_and_keeps_the_rest() -> None:
    current = BudgetLimits(monthly_usd=10.0, monthly_tokens=1_000)
    assert changed_limits(current, monthly_usd=20.0) == BudgetLimits(20.0, 1_000)
    assert changed_limits(current, no_monthly_usd=True) == BudgetLimits(None, 1_000)
    assert changed_limits(current, monthly_tokens=5, no_monthly_usd=True) == BudgetLimits(None, 5)
    assert changed_limits(current, no_monthly_tokens=True) == BudgetLimits(10.0, None)
    windowed = changed_limits(current, window_tokens=300)
    assert windowed == BudgetLimits(10.0, 1_000, window_tokens=300)
    assert changed_limits(windowed, monthly_usd=1.0) == BudgetLimits(1.0, 1_000, window_tokens=300)
    assert changed_limits(windowed, no_window_tokens=True) == current
    with pytest.raises(AdminError, match="contradict"):
        changed_limits(current, monthly_usd=1.0, no_monthly_usd=True)
    with pytest.raises(AdminError, match="--window-tokens and --no-window-tokens contradict"):
        changed_limits(current, window_tokens=1, no_window_tokens=True)
    with pytest.raises(AdminError, match="nothing to change"):
        changed_limits(current)


def test_a_budget_view_counts_in_dollars_and_tokens_and_never_shows_a_negative_remainder() -> None:
    limits = BudgetLimits(monthly_usd=0.01, monthly_tokens=None)
    usage = BudgetUsage("team#t", "2026-12", limits, 12_500, 300, Remaining(-2_500, 0))  # a lowered limit
    assert budget_view(usage, "ignored") == {
        "month": "2026-12",
        "limit": {"usd": 0.01, "tokens": None},
        "spent": {"usd": 0.0125, "tokens": 300},
        "remaining": {"usd": 0.0, "tokens": None},
        "window": {"seconds": 600, "limit": None, "spent": 0, "remaining": None, "limit_usd": None, "spent_usd": 0.0,
                   "remaining_usd": None},
    }
    # No item yet: nothing spent, the default's limits (the stack's setting).
    fresh = budget_view(None, "2026-12", BudgetLimits(monthly_usd=5.0))
    assert fresh["spent"] == {"usd": 0.0, "tokens": 0} and fresh["remaining"] == {"usd": 5.0, "tokens": None}


def test_aigw_chat_says_what_the_team_and_the_gateway_have_left() -> None:
    from aigw.cli import _budgets_text

    budgets = {"team": {"name": "platform", "usd": 4.2, "tokens": None, "window": 1_500},
               "stack": {"usd": 1_999.5, "tokens": None}}
    assert _budgets_text(budgets) == ("your team platform: $4.20 left this month, 1,500 tokens left in 10 minutes; "
                                      "this gateway: $1,999.50 left this month")
    assert _budgets_text({"team": {"name": "t", "usd": None, "tokens": None}}) == ""
    assert _budgets_text({"user": {"usd": 0.5, "tokens": None}}) == "you: $0.50 left this month"
    assert _budgets_text(None) == ""


# --- the commands ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_json(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The dev stack with a stack ceiling: the gateway enforces it, and the commands' target knows it is on."""
    project = tmp_path_factory.mktemp("project")
    text = (ROOT / "Pulumi.dev.yaml").read_text() + f"  ai-gateway:stackMonthlyUsd: {CEILING_USD}\n"
    (project / "Pulumi.dev.yaml").write_text(text)
    shutil.copy(ROOT / "Pulumi.dev.yaml", project / "Pulumi.noceiling.yaml")
    settings = StackSettings.from_stack_file(project / "Pulumi.dev.yaml")
    with running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0, stack=f"teams{uuid.uuid4().hex[:8]}") as gw:
        yield gw.write_info(project / ".aigw")


def budgets_of(dev_json: Path) -> Budgets:
    target = admin.Target.from_dev_json(dev_json)
    assert target.metering_table is not None
    return Budgets(target.metering_table, target.dynamodb())


def test_teams_add_list_set_budget_remove(dev_json: Path) -> None:
    added = as_json(aigw(dev_json, "teams", "add", "research", "--monthly-usd", "12.5", "--json"))
    assert added["name"] == "research" and added["members"] == 0
    assert added["limit"] == {"usd": 12.5, "tokens": None} and added["remaining"] == {"usd": 12.5, "tokens": None}
    as_json(aigw(dev_json, "teams", "add", "ops", "--json"))  # no limits: its spending is counted all the same
    assert budgets_of(dev_json).usage(budget_key("team", "ops")) is not None

    listed = {t["name"]: t for t in as_json(aigw(dev_json, "teams", "list", "--json"))}
    assert {"research", "ops"} <= set(listed) and listed["ops"]["limit"] == {"usd": None, "tokens": None}
    text = aigw(dev_json, "teams", "list")
    assert text.exit_code == 0 and re.search(r"research\s.*\$12\.50", text.stdout), text.stdout

    changed = as_json(aigw(dev_json, "teams", "set-budget", "research", "--monthly-tokens", "900", "--json"))
    assert changed["limit"] == {"usd": 12.5, "tokens": 900}  # the USD limit, not mentioned, is kept
    changed = as_json(aigw(dev_json, "teams", "set-budget", "research", "--no-monthly-usd", "--json"))
    assert changed["limit"] == {"usd": None, "tokens": 900}

    windowed = as_json(aigw(dev_json, "teams", "set-budget", "research", "--window-tokens", "5000", "--json"))
    assert windowed["window"] == {"seconds": 600, "limit": 5000, "spent": 0, "remaining": 5000, "limit_usd": None,
                                  "spent_usd": 0.0, "remaining_usd": None}
    assert windowed["limit"] == {"usd": None, "tokens": 900}  # the month's limits are kept
    text = aigw(dev_json, "teams", "list")
    assert re.search(r"research\s.*5,000 of 5,000", text.stdout), text.stdout
    in_dollars = as_json(aigw(dev_json, "teams", "set-budget", "research", "--window-usd", "0.5", "--json"))
    assert in_dollars["window"]["limit"] == 5000 and in_dollars["window"]["limit_usd"] == 0.5
    assert in_dollars["window"]["remaining_usd"] == 0.5
    text = aigw(dev_json, "teams", "list")
    assert re.search(r"research\s.*5,000 of 5,000, \$0\.50 of \$0\.50", text.stdout), text.stdout
    unwindowed = as_json(aigw(dev_json, "teams", "set-budget", "research", "--no-window-tokens", "--no-window-usd",
                              "--json"))
    assert unwindowed["window"]["limit"] is None and unwindowed["window"]["limit_usd"] is None

    assert as_json(aigw(dev_json, "teams", "remove", "ops", "--json")) == {"removed": "ops", "members_removed": []}
    names = [t["name"] for t in as_json(aigw(dev_json, "teams", "list", "--json"))]
    assert "ops" not in names and "research" in names
    assert budgets_of(dev_json).usage(budget_key("team", "ops")) is None  # the budget item went with the group


def test_teams_errors_are_typed_and_exit_2(dev_json: Path) -> None:
    assert aigw(dev_json, "teams", "add", "dupe").exit_code == 0
    cases = [
        (("teams", "add", "Bad_Name"), "not a team name"),
        (("teams", "add", "dupe"), "team 'dupe' already exists"),
        (("teams", "add", "cheap", "--monthly-usd", "0"), "--monthly-usd must be a positive"),
        (("teams", "set-budget", "ghost", "--monthly-usd", "1"), "unknown team 'ghost'"),
        (("teams", "set-budget", "dupe"), "nothing to change"),
        (("teams", "set-budget", "dupe", "--monthly-usd", "1", "--no-monthly-usd"), "contradict"),
        (("teams", "remove", "ghost"), "unknown team 'ghost'"),
        (("users", "add", "lost@example.com", "--team", "ghost"), "unknown team 'ghost'"),
        (("users", "set-team", "demo@example.com", "ghost"), "unknown team 'ghost'"),
        (("users", "set-team", "demo@example.com"), "--none"),
        (("users", "set-team", "demo@example.com", "dupe", "--none"), "--none"),
        (("users", "set-team", "nobody@example.com", "dupe"), "unknown user"),
        (("usage",), "name a user"),
        (("usage", "demo@example.com", "--team", "dupe"), "name a user"),
        (("usage", "--team", "ghost"), "unknown team 'ghost'"),
        (("budgets", "set", "--stack-monthly-usd", "-3"), "--monthly-usd must be a positive"),
    ]
    for args, message in cases:
        result = aigw(dev_json, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
    # The refused team left no half-made user behind.
    assert "lost@example.com" not in aigw(dev_json, "users", "list").stdout


def test_a_user_is_in_at_most_one_team_and_a_team_with_members_is_removed_only_by_force(dev_json: Path) -> None:
    for team in ("alpha", "beta"):
        assert aigw(dev_json, "teams", "add", team).exit_code == 0
    added = as_json(aigw(dev_json, "users", "add", "mover@example.com", "--team", "alpha", "--password", PASSWORD,
                         "--json"))
    assert added["team"] == "alpha" and added["password"] is None  # a given password is not echoed

    moved = aigw(dev_json, "users", "set-team", "mover@example.com", "beta")
    assert moved.exit_code == 0 and "was alpha" in moved.stdout and "next sign-in" in moved.stdout
    listed = {u["email"]: u for u in as_json(aigw(dev_json, "users", "list", "--json"))}
    assert listed["mover@example.com"]["team"] == "beta"  # out of alpha: one team at a time
    row = next(line for line in aigw(dev_json, "users", "list").stdout.splitlines() if "mover@example.com" in line)
    assert "beta" in row and "alpha" not in row
    teams = {t["name"]: t["members"] for t in as_json(aigw(dev_json, "teams", "list", "--json"))}
    assert teams["alpha"] == 0 and teams["beta"] == 1

    refused = aigw(dev_json, "teams", "remove", "beta")
    assert refused.exit_code == 2 and "--force" in refused.stderr
    assert "1 member(s) (mover@example.com)" in refused.stderr
    forced = as_json(aigw(dev_json, "teams", "remove", "beta", "--force", "--json"))
    assert forced["members_removed"] == ["mover@example.com"]
    listed = {u["email"]: u for u in as_json(aigw(dev_json, "users", "list", "--json"))}
    assert listed["mover@example.com"]["team"] is None

    assert aigw(dev_json, "users", "set-team", "mover@example.com", "alpha").exit_code == 0
    out = as_json(aigw(dev_json, "users", "set-team", "mover@example.com", "--none", "--json"))
    assert out["team"] is None and out["former_team"] == "alpha" and out["effective"] == "next sign-in"


def test_budgets_set_changes_the_live_ceiling_and_is_refused_where_the_stack_has_none(dev_json: Path) -> None:
    shown = as_json(aigw(dev_json, "budgets", "show", "--json"))
    assert shown["enabled"] is True and shown["setting_usd"] == CEILING_USD
    assert shown["limit"]["usd"] == CEILING_USD  # no item yet: the setting's starting value
    raised = as_json(aigw(dev_json, "budgets", "set", "--stack-monthly-usd", "7.5", "--json"))
    assert raised["limit"] == {"usd": 7.5, "tokens": None}
    usage = budgets_of(dev_json).usage(STACK_KEY)
    assert usage is not None and usage.limits.monthly_usd == 7.5  # the item the gatekeeper reserves on
    text = aigw(dev_json, "budgets", "show")
    assert text.exit_code == 0 and "$7.50" in text.stdout

    no_ceiling = str(dev_json.parent.parent / "Pulumi.noceiling.yaml")
    refused = aigw(dev_json, "budgets", "set", "--stack-monthly-usd", "3", "--stack-file", no_ceiling)
    assert refused.exit_code == 2
    assert "stack ceiling is off" in refused.stderr and "stackMonthlyUsd" in refused.stderr
    assert budgets_of(dev_json).usage(STACK_KEY).limits.monthly_usd == 7.5  # type: ignore[union-attr]
    off = as_json(aigw(dev_json, "budgets", "show", "--json", "--stack-file", no_ceiling))
    assert off["enabled"] is False
    assert "no stack ceiling" in aigw(dev_json, "budgets", "show", "--stack-file", no_ceiling).stdout


# --- end to end -----------------------------------------------------------------------------------------------


def chat_once(dev_json: Path, email: str, prompt: str) -> dict[str, Any]:
    """One request as `email` through the running gateway; its last event (`end` or `error`)."""
    target = admin.Target.from_dev_json(dev_json)
    token = sign_in(target.endpoints(), email, PASSWORD)["IdToken"]  # a fresh sign-in: the groups of now

    async def turn() -> dict[str, Any]:
        async with EventsClient(target.endpoints(), token) as client:
            session = await admin.ChatSession(client).open()
            return [e async for e in session.turn(prompt)][-1]

    return asyncio.run(turn())


def test_a_teams_spent_budget_refuses_its_member_with_scope_team_and_usage_shows_it(dev_json: Path) -> None:
    assert aigw(dev_json, "budgets", "set", "--stack-monthly-usd", "2").exit_code == 0
    assert aigw(dev_json, "teams", "add", "platform", "--monthly-usd", "0.01").exit_code == 0
    added = aigw(dev_json, "users", "add", "a@x.dev", "--team", "platform", "--password", PASSWORD)
    assert added.exit_code == 0 and "team platform" in added.stdout, added.output

    first = chat_once(dev_json, "a@x.dev", "hello")
    assert first["type"] == "end", first
    after_one = as_json(aigw(dev_json, "usage", "--team", "platform", "--json"))
    assert 0 < after_one["spent"]["usd"] < 0.01 and after_one["spent"]["tokens"] > 0
    assert after_one["members"] == 1
    assert after_one["remaining"]["usd"] == pytest.approx(0.01 - after_one["spent"]["usd"], abs=1e-6)

    # The rest of the month's budget goes to the member's teammates (held as their requests would be).
    store, key = budgets_of(dev_json), budget_key("team", "platform")
    left = store.usage(key)
    assert left is not None and left.remaining.micro_usd > 0
    assert isinstance(store.reserve(key, left.remaining.micro_usd, 0), Hold)

    refused = chat_once(dev_json, "a@x.dev", "and now?")
    assert refused["type"] == "error" and refused["code"] == "quota_exhausted", refused
    assert refused["scope"] == "team" and refused["budgets"]["team"]["usd"] == 0

    spent = as_json(aigw(dev_json, "usage", "--team", "platform", "--json"))
    assert spent["spent"]["usd"] == pytest.approx(0.01) and spent["remaining"]["usd"] == 0
    assert spent["spent"]["tokens"] == after_one["spent"]["tokens"]  # the refused request holds nothing
    text = aigw(dev_json, "usage", "--team", "platform")
    assert text.exit_code == 0 and "$0.01" in text.stdout and "1 member(s)" in text.stdout

    # The member's own usage: their tokens, and the team's and the stack's month in USD.
    mine = as_json(aigw(dev_json, "usage", "a@x.dev", "--json"))
    assert mine["team_name"] == "platform" and mine["tier"] == "free"
    assert mine["month"]["used"] == after_one["spent"]["tokens"] and mine["month"]["limit"] == 500_000
    assert mine["window"]["remaining"] == mine["window"]["limit"] - mine["window"]["used"]
    assert mine["team"]["remaining"]["usd"] == 0 and mine["team"]["limit"]["usd"] == 0.01
    assert mine["stack"]["limit"]["usd"] == 2.0
    assert mine["stack"]["spent"]["usd"] == pytest.approx(after_one["spent"]["usd"])  # the teammates: team only
    table = aigw(dev_json, "usage", "a@x.dev")
    assert table.exit_code == 0 and "team platform USD" in table.stdout and "stack USD" in table.stdout


def test_a_teams_window_refuses_its_member_for_minutes_not_the_month_and_usage_shows_it(dev_json: Path) -> None:
    added = as_json(aigw(dev_json, "teams", "add", "burst", "--window-tokens", "2000", "--json"))
    assert added["window"]["limit"] == 2000
    assert aigw(dev_json, "users", "add", "w@x.dev", "--team", "burst", "--password", PASSWORD).exit_code == 0

    first = chat_once(dev_json, "w@x.dev", "hello")
    assert first["type"] == "end", first
    used = first["usage"]["input"] + first["usage"]["output"]
    assert first["budgets"]["team"] == {"name": "burst", "usd": None, "tokens": None, "window": 2000 - used}
    # A teammate's request holds the rest of the window.
    store, key = budgets_of(dev_json), budget_key("team", "burst")
    assert isinstance(store.reserve(key, 0, 2000 - used), Hold)

    refused = chat_once(dev_json, "w@x.dev", "and now?")
    assert refused["type"] == "error" and refused["code"] == "rate_limited", refused
    assert refused["scope"] == "team" and refused["budgets"]["team"]["window"] == 0
    assert 0 < refused["retryAfterSeconds"] <= 610
    shown = as_json(aigw(dev_json, "usage", "--team", "burst", "--json"))
    assert {k: shown["window"][k] for k in ("limit", "spent", "remaining")} == {"limit": 2000, "spent": 2000,
                                                                               "remaining": 0}
    table = aigw(dev_json, "usage", "--team", "burst")
    assert table.exit_code == 0 and re.search(r"window \(600 s\)\s.*2,000\s.*0\s.*2,000", table.stdout), table.stdout


def test_a_users_own_usd_month_is_spent_by_their_answers_and_usage_shows_it(dev_json: Path) -> None:
    added = as_json(aigw(dev_json, "users", "add", "usd@x.dev", "--tier", "free", "--password", PASSWORD, "--json"))
    target = admin.Target.from_dev_json(dev_json)
    target.meter().set_override(added["sub"], Limits(window_tokens=20_000, monthly_tokens=500_000, monthly_usd=0.05))

    first = chat_once(dev_json, "usd@x.dev", "hello")
    assert first["type"] == "end", first
    left = first["budgets"]["user"]["usd"]
    assert 0 < left < 0.05
    mine = as_json(aigw(dev_json, "usage", "usd@x.dev", "--json"))
    assert mine["usd"]["limit"] == {"usd": 0.05, "tokens": None}
    assert mine["usd"]["spent"]["usd"] == pytest.approx(0.05 - left, abs=1e-6)
    assert mine["usd"]["remaining"]["usd"] == pytest.approx(left, abs=1e-6)
    table = aigw(dev_json, "usage", "usd@x.dev")
    assert table.exit_code == 0 and re.search(r"month USD\s.*\$0\.05", table.stdout), table.stdout


def test_a_failed_budget_write_leaves_no_team_behind(dev_json: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    def failing(self: Budgets, key: str, limits: BudgetLimits) -> None:
        raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected"}},
                          "PutItem")

    monkeypatch.setattr(Budgets, "set_limits", failing)
    failed = aigw(dev_json, "teams", "add", "halfmade", "--monthly-usd", "5")
    assert failed.exit_code == 1, failed.output
    assert "not created" in failed.stderr and "ProvisionedThroughputExceededException" in failed.stderr
    assert "nothing is left" in failed.stderr and "Traceback" not in failed.output
    monkeypatch.undo()
    names = [t["name"] for t in as_json(aigw(dev_json, "teams", "list", "--json"))]
    assert "halfmade" not in names
    target = admin.Target.from_dev_json(dev_json)
    groups = target.cognito().list_groups(UserPoolId=target.user_pool_id)["Groups"]
    assert "team:halfmade" not in {g["GroupName"] for g in groups}
    assert aigw(dev_json, "teams", "add", "halfmade", "--monthly-usd", "5").exit_code == 0  # a retry just works


def test_a_budget_item_that_keeps_changing_is_reported_not_a_traceback(
    dev_json: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.errors import MeterContentionError

    assert aigw(dev_json, "teams", "add", "busy").exit_code == 0

    def contended(self: Budgets, key: str, limits: BudgetLimits) -> None:
        raise MeterContentionError(f"budget {key} kept changing; try again")

    monkeypatch.setattr(Budgets, "set_limits", contended)
    result = aigw(dev_json, "teams", "set-budget", "busy", "--monthly-usd", "3")
    assert result.exit_code == 1 and "kept changing; try again" in result.stderr
    assert "Traceback" not in result.output
