"""Teams and the stack ceiling, administered: the pure part (names, limits, views) and thin adapters over Cognito
and the budget items of `runtime.budgets`.

A team is two things kept together: the Cognito group `team:<name>` (membership, read by the gateway from the
ID token) and the budget item `team#<name>` (limits and this month's spending). `teams add` creates both, even
without limits, so the team's spending is counted from its first request.

The stack ceiling is checked by the gatekeeper only when the stack's settings set `stackMonthlyUsd` (adding the
stack item to every admission costs a round trip, so a stack without it does not pay for it). Its settings give
the ceiling's *starting* value: the gatekeeper creates the item from it only when there is none, and the month's
roll-over keeps the item's stored limit. So `aigw budgets set` writes the item's limit and that value holds,
month after month, until the next `budgets set` (the settings value no longer matters once the item exists).

Views are plain dicts with USD as dollars (6 decimals) and None for "no limit", ready for `--json`.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from aigw.admin import AdminError, StepFailedError, Target, User, aws_words, resolve_user
from runtime.budgets import (
    MICRO,
    STACK_KEY,
    TEAM_GROUP_PREFIX,
    WINDOW_SECONDS,
    BudgetLimits,
    Budgets,
    BudgetUsage,
    budget_key,
    team_of,
)
from runtime.errors import MeterContentionError
from runtime.metering.core import month_key

# Lower-case so `Platform` and `platform` cannot be two teams; no `#` or `:` (they separate the key's parts).
_TEAM_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
NEXT_SIGN_IN = "takes effect at their next sign-in (groups travel in the ID token)"


# -- the pure part


def check_team_name(name: str) -> str:
    """The name, if it can name a team; else `AdminError` saying what a name may be."""
    if not _TEAM_NAME.match(name):
        hint = f" (did you mean {name.lower()!r}?)" if _TEAM_NAME.match(name.lower()) else ""
        raise AdminError(
            f"{name!r} is not a team name{hint}: 1-63 lower-case letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return name


def team_group(name: str) -> str:
    return TEAM_GROUP_PREFIX + name


def check_limits(
    monthly_usd: float | None, monthly_tokens: int | None, window_tokens: int | None = None,
    window_usd: float | None = None,
) -> BudgetLimits:
    """Limits an operator may set: positive amounts (zero would refuse every request; say `remove` instead)."""
    if monthly_usd is not None and not (monthly_usd > 0 and monthly_usd < 1e8):
        raise AdminError(f"--monthly-usd must be a positive amount of dollars (below 100,000,000), got {monthly_usd}")
    if monthly_tokens is not None and not 0 < monthly_tokens < 10**14:
        raise AdminError(f"--monthly-tokens must be a positive number of tokens, got {monthly_tokens}")
    if window_tokens is not None and not 0 < window_tokens < 10**14:
        raise AdminError(f"--window-tokens must be a positive number of tokens, got {window_tokens}")
    if window_usd is not None and not (window_usd > 0 and window_usd < 1e8):
        raise AdminError(f"--window-usd must be a positive amount of dollars (below 100,000,000), got {window_usd}")
    return BudgetLimits(monthly_usd=monthly_usd, monthly_tokens=monthly_tokens, window_tokens=window_tokens,
                        window_usd=window_usd)


def changed_limits(
    current: BudgetLimits,
    *,
    monthly_usd: float | None = None,
    no_monthly_usd: bool = False,
    monthly_tokens: int | None = None,
    no_monthly_tokens: bool = False,
    window_tokens: int | None = None,
    no_window_tokens: bool = False,
    window_usd: float | None = None,
    no_window_usd: bool = False,
) -> BudgetLimits:
    """The limits after `set-budget`: each one set, cleared (`--no-...`) or, when not mentioned, kept."""
    changes = {"monthly-usd": (monthly_usd, no_monthly_usd), "monthly-tokens": (monthly_tokens, no_monthly_tokens),
               "window-tokens": (window_tokens, no_window_tokens), "window-usd": (window_usd, no_window_usd)}
    for flag, (value, clear) in changes.items():
        if clear and value is not None:
            raise AdminError(f"--{flag} and --no-{flag} contradict each other: pass one")
    if all(value is None and not clear for value, clear in changes.values()):
        raise AdminError("nothing to change: pass " + ", ".join(f"--{f}" for f in changes) + " or a --no-… of one")

    def new(value: Any, clear: bool, kept: Any) -> Any:
        return None if clear else (value if value is not None else kept)

    return check_limits(
        new(monthly_usd, no_monthly_usd, current.monthly_usd),
        new(monthly_tokens, no_monthly_tokens, current.monthly_tokens),
        new(window_tokens, no_window_tokens, current.window_tokens),
        new(window_usd, no_window_usd, current.window_usd),
    )


def _usd(micro_usd: int) -> float:
    return round(micro_usd / MICRO, 6)


def budget_view(
    usage: BudgetUsage | None, month: str, default: BudgetLimits | None = None
) -> dict[str, Any]:
    """One level's month: limit, spent and remaining in USD and tokens (None: no limit in that unit), and its
    rolling window in tokens.

    Without an item (no request yet this level's lifetime) nothing is spent and the `default` limits apply."""
    if usage is None:
        limits = default or BudgetLimits()
        spent_usd, spent_tokens, window_spent, window_spent_usd = 0, 0, 0, 0
    else:
        limits, month = usage.limits, usage.month
        spent_usd, spent_tokens = usage.spent_micro_usd, usage.spent_tokens
        window_spent, window_spent_usd = usage.window_spent_tokens, usage.window_spent_micro_usd
    # Spending can pass a limit lowered below it: what remains is then 0, never negative.
    remaining_usd = None if limits.monthly_usd is None else _usd(max(0, limits.micro_usd - spent_usd))
    remaining_tokens = None if limits.monthly_tokens is None else max(0, limits.tokens - spent_tokens)
    return {
        "month": month,
        "limit": {"usd": limits.monthly_usd, "tokens": limits.monthly_tokens},
        "spent": {"usd": _usd(spent_usd), "tokens": spent_tokens},
        "remaining": {"usd": remaining_usd, "tokens": remaining_tokens},
        # The rolling window in tokens, and in USD (limit and remaining None: no window in that unit).
        "window": {
            "seconds": WINDOW_SECONDS,
            "limit": limits.window_tokens,
            "spent": window_spent,
            "remaining": None if limits.window_tokens is None else max(0, limits.window_tokens - window_spent),
            "limit_usd": limits.window_usd,
            "spent_usd": _usd(window_spent_usd),
            "remaining_usd": None if limits.window_usd is None
            else _usd(max(0, round(limits.window_usd * MICRO) - window_spent_usd)),
        },
    }


def _words(err: Exception) -> str:
    return aws_words(err) if isinstance(err, ClientError | BotoCoreError) else str(err)


# -- the adapters


@dataclass(frozen=True)
class Admin:
    """What team and budget commands act through: Cognito, the budget items, and where they live."""

    cognito: Any
    budgets: Budgets
    target: Target

    @classmethod
    def of(cls, target: Target) -> Admin:
        target.require("user_pool_id", "metering_table")
        assert target.metering_table is not None
        return cls(target.cognito(), Budgets(target.metering_table, target.dynamodb()), target)

    @property
    def pool_id(self) -> str | None:
        return self.target.user_pool_id

    def month(self) -> str:
        return month_key(self.budgets.clock())

    # -- teams

    def _group_exists(self, name: str) -> bool:
        try:
            self.cognito.get_group(GroupName=team_group(name), UserPoolId=self.pool_id)
        except self.cognito.exceptions.ResourceNotFoundException:
            return False
        return True

    def _team_names(self) -> list[str]:
        groups: list[str] = []
        for page in self.cognito.get_paginator("list_groups").paginate(UserPoolId=self.pool_id):
            groups += [g["GroupName"] for g in page["Groups"]]
        from_groups = {g.removeprefix(TEAM_GROUP_PREFIX) for g in groups if g.startswith(TEAM_GROUP_PREFIX)}
        return sorted(from_groups | set(self.budgets.teams()))

    def require_team(self, name: str) -> str:
        check_team_name(name)
        if not self._group_exists(name) and self.budgets.usage(budget_key("team", name)) is None:
            known = ", ".join(self._team_names()) or "none yet"
            raise AdminError(f"unknown team {name!r} (teams: {known}); create it with `aigw teams add {name}`")
        return name

    def members(self, name: str) -> list[User]:
        users: list[User] = []
        try:
            pages = self.cognito.get_paginator("list_users_in_group").paginate(
                UserPoolId=self.pool_id, GroupName=team_group(name)
            )
            for page in pages:
                for user in page["Users"]:
                    values = {a["Name"]: a["Value"] for a in user.get("Attributes", [])}
                    users.append(User(user["Username"], values.get("email", user["Username"]),
                                      values.get("sub", user["Username"]), (team_group(name),)))
        except self.cognito.exceptions.ResourceNotFoundException:
            return []  # a budget item without its group: no members
        return sorted(users, key=lambda u: u.email)

    def add_team(self, name: str, limits: BudgetLimits) -> dict[str, Any]:
        check_team_name(name)
        key = budget_key("team", name)
        if self._group_exists(name) or self.budgets.usage(key) is not None:
            raise AdminError(f"team {name!r} already exists: change its budget with `aigw teams set-budget {name}`")
        self.cognito.create_group(
            GroupName=team_group(name), UserPoolId=self.pool_id,
            Description=f"members of team {name} (ai-gateway budgets; see `aigw teams`)",
        )
        try:
            self.budgets.set_limits(key, limits)
        except (ClientError, BotoCoreError, MeterContentionError) as err:
            # A group without its budget item would be a team whose limits were never set, and would make a retry
            # of `teams add` refuse it as existing: undo the group so the failure leaves nothing behind.
            raise StepFailedError(f"team {name!r} not created: writing its budget item failed ({_words(err)}); "
                                  f"{self._undo_group(name)}") from err
        return self.team(name)

    def _undo_group(self, name: str) -> str:
        """Delete a group just created; what became of it, in words for the operator."""
        try:
            self.cognito.delete_group(GroupName=team_group(name), UserPoolId=self.pool_id)
        except (ClientError, BotoCoreError) as err:
            return (f"its group {team_group(name)} is left behind (deleting it failed: {aws_words(err)}): "
                    f"`aigw teams remove {name}` deletes it")
        return f"its group {team_group(name)} was deleted again, so nothing is left: retry `aigw teams add {name}`"

    def team(self, name: str) -> dict[str, Any]:
        usage = self.budgets.usage(budget_key("team", name))
        return {"name": name, "members": len(self.members(name)), **budget_view(usage, self.month())}

    def user_month(self, sub: str, monthly_usd: float) -> dict[str, Any]:
        """A user's own USD month: the limit is their tier's or override's, the spending their spend item's."""
        usage = self.budgets.usage(budget_key("user", sub), spend_limit=round(monthly_usd * MICRO))
        view = budget_view(usage, self.month(), default=BudgetLimits(monthly_usd=monthly_usd))
        del view["window"]  # a user's window is their meter's, in tokens
        return view

    def teams(self) -> list[dict[str, Any]]:
        return [self.team(name) for name in self._team_names()]

    def set_team_budget(self, name: str, **changes: Any) -> dict[str, Any]:
        self.require_team(name)
        key = budget_key("team", name)
        current = self.budgets.usage(key)
        self.budgets.set_limits(key, changed_limits(current.limits if current else BudgetLimits(), **changes))
        return self.team(name)

    def remove_team(self, name: str, *, force: bool = False) -> list[User]:
        """Delete the team's group and budget item; the members it had (with `force`, removed from it first)."""
        self.require_team(name)
        members = self.members(name)
        if members and not force:
            listed = ", ".join(m.email for m in members[:5]) + (", ..." if len(members) > 5 else "")
            raise AdminError(
                f"team {name!r} has {len(members)} member(s) ({listed}): move them with "
                f"`aigw users set-team EMAIL NAME|--none`, or pass --force to take them out of the team"
            )
        for member in members:
            self.cognito.admin_remove_user_from_group(
                UserPoolId=self.pool_id, Username=member.username, GroupName=team_group(name)
            )
        with contextlib.suppress(self.cognito.exceptions.ResourceNotFoundException):  # only the item was left
            self.cognito.delete_group(GroupName=team_group(name), UserPoolId=self.pool_id)
        self.budgets.remove(budget_key("team", name))
        return members

    # -- users

    def set_team(self, user: str, name: str | None) -> tuple[User, str | None]:
        """Put the user in team `name` (None: in no team), out of any other; (the user, their former team)."""
        if name is not None:
            self.require_team(name)
        found = resolve_user(self.cognito, self.target, user)
        for group in found.groups:
            if group.startswith(TEAM_GROUP_PREFIX) and group != (team_group(name) if name else None):
                self.cognito.admin_remove_user_from_group(
                    UserPoolId=self.pool_id, Username=found.username, GroupName=group
                )
        if name is not None and team_group(name) not in found.groups:
            self.cognito.admin_add_user_to_group(
                UserPoolId=self.pool_id, Username=found.username, GroupName=team_group(name)
            )
        return resolve_user(self.cognito, self.target, found.sub), team_of(list(found.groups))

    # -- the stack ceiling

    def stack(self) -> dict[str, Any]:
        """The ceiling's month; `enabled` says whether the gateway checks it (the stack's settings decide)."""
        setting = self.target.stack_monthly_usd
        usage = self.budgets.usage(STACK_KEY)
        default = BudgetLimits(monthly_usd=setting) if setting is not None else None
        view = budget_view(usage, self.month(), default)
        return {"enabled": setting is not None, "setting_usd": setting, **view}

    def set_stack_ceiling(self, monthly_usd: float) -> dict[str, Any]:
        if self.target.stack_monthly_usd is None:
            raise AdminError(
                f"the stack ceiling is off for {self.target.description or 'this target'}: the gateway checks it "
                "only when the stack's settings enable it (one more write per request). Enable it with "
                "`ai-gateway:stackMonthlyUsd: <USD>` in Pulumi.<stack>.yaml and `pulumi up` (pass --stack-file if "
                "the file is elsewhere); from then on `aigw budgets set` changes the live ceiling"
            )
        self.budgets.set_limits(STACK_KEY, check_limits(monthly_usd, None))
        return self.stack()
