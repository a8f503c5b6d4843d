"""Team and stack budgets: monthly limits in USD and tokens, reserved atomically beside the user's meter.

Design (why not a transaction or an optimistic read-modify-write): a team item is hot — every member's request
touches it — and both `TransactWriteItems` and version-checked puts turn concurrent writers into conflicts and
retries. A budget counter here is one conditional `UpdateItem` that *decrements what remains*
(``SET ru = ru - :cost`` with ``ru >= :cost``): DynamoDB serialises updates of one item without conflicts, so 64
members reserving at once are 64 writes that each succeed or are refused, never retried, and the condition makes
over-admission impossible. The user's meter is asked first, then the team and the stack together; a level that
refuses (or fails) has what the others reserved given back. Settling adds back the difference between the
reservation and the truth.

A budget item (in the metering table): ``pk`` = ``team#<name>`` or ``stack``; ``mk`` the UTC month its counters
are for; ``lu``/``lt`` the monthly limits (µUSD / tokens; absent: no limit); ``ru``/``rt`` what remains this
month; ``su``/``sk`` what was spent (reservations included until settled). The first reservation of a new month
rolls the counters over (one conditional update on the old month). No item: no budget at that level.

Money is counted in micro-dollars (integers): a token's price in µUSD is its price per 1M tokens in USD.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.exceptions import ClientError

from runtime.metering.core import month_key, next_month_start
from runtime.tables import condition_failed

Scope = Literal["user", "team", "stack"]
MICRO = 1_000_000
UNLIMITED = 10**15  # what "remains" under a limit that is not set
# A level without a limit in one unit still counts down from UNLIMITED as it spends; anything above this is "no
# limit" (half of UNLIMITED: $500M or 5e14 tokens a month, beyond any real budget and any real month's spend).
_NO_LIMIT_ABOVE = UNLIMITED // 2
STACK_KEY = "stack"
TEAM_GROUP_PREFIX = "team:"  # a Cognito group `team:<name>` makes its members the team's


# --- the pure part --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens (the catalog's unit), which is also µUSD per token."""

    input: float
    output: float

    def cost(self, input_tokens: int, output_tokens: int) -> int:
        """The cost in µUSD, rounded up (a budget never under-counts)."""
        return math.ceil(input_tokens * self.input + output_tokens * self.output - 1e-9)

    def output_within(self, micro_usd: int, input_tokens: int) -> int:
        """The most output tokens that fit in `micro_usd` after the input's cost."""
        if self.cost(input_tokens, 0) > micro_usd:
            return 0
        if self.output == 0:
            return UNLIMITED
        # The float estimate can be one off either way (the cost rounds up once, over input and output
        # together); step to the exact largest n with cost(input, n) <= micro_usd.
        n = max(0, math.floor((micro_usd - input_tokens * self.input) / self.output))
        while n > 0 and self.cost(input_tokens, n) > micro_usd:
            n -= 1
        while self.cost(input_tokens, n + 1) <= micro_usd:
            n += 1
        return n


def team_of(groups: object) -> str | None:
    """The user's team: the `team:<name>` group (a user belongs to at most one; with several, the first by name)."""
    if not isinstance(groups, list):
        return None
    prefix = TEAM_GROUP_PREFIX
    teams = sorted(g[len(prefix) :] for g in groups if isinstance(g, str) and g.startswith(prefix))
    return next((t for t in teams if t), None)


def budget_key(scope: Scope, name: str | None = None) -> str:
    return STACK_KEY if scope == "stack" else f"team#{name}"


def scope_of(key: str) -> tuple[Scope, str | None]:
    """The level a budget key names: ("stack", None) or ("team", name)."""
    return ("stack", None) if key == STACK_KEY else ("team", key.removeprefix("team#"))


def budgets_view(remaining: Mapping[str, Remaining]) -> dict[str, Any]:
    """What clients see of the levels' months, by key: {"team": {"name", "usd", "tokens"}, "stack": {…}}."""
    view: dict[str, Any] = {}
    for key, left in remaining.items():
        scope, name = scope_of(key)
        view[scope] = {"name": name, **left.as_event()} if name is not None else left.as_event()
    return view


@dataclass(frozen=True, slots=True)
class Remaining:
    """What remains of one level's month (µUSD and tokens; `UNLIMITED` where no limit is set).

    `limit_micro_usd`: the level's live USD limit, when the answer carried it (a settle's does; None: not known
    or no limit). The stack's share-used metric divides by it, since `aigw budgets set` may have moved the ceiling
    from the settings' starting value. Not part of equality: two answers with the same remainders are the same."""

    micro_usd: int
    tokens: int
    limit_micro_usd: int | None = field(default=None, compare=False)

    def as_event(self) -> dict[str, Any]:
        return {
            "usd": None if self.micro_usd > _NO_LIMIT_ABOVE else round(max(0, self.micro_usd) / MICRO, 6),
            "tokens": None if self.tokens > _NO_LIMIT_ABOVE else max(0, self.tokens),
        }


@dataclass(frozen=True, slots=True)
class Hold:
    """One level's reservation, as the worker settles it (also the WorkerJob's record of it)."""

    key: str
    month: str
    micro_usd: int
    tokens: int

    def fields(self) -> dict[str, Any]:
        return {"key": self.key, "month": self.month, "micro_usd": self.micro_usd, "tokens": self.tokens}


def granted_within(price: Price | None, remaining: Remaining, input_tokens: int, granted: int) -> int:
    """The output grant capped so input + output fit what remains (in tokens and, when priced, in µUSD)."""
    by_tokens = remaining.tokens - input_tokens
    by_money = price.output_within(remaining.micro_usd, input_tokens) if price is not None else UNLIMITED
    return max(0, min(granted, by_tokens, by_money))


def retry_after_month(now: float) -> float:
    return next_month_start(now) - now


# --- the adapter ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    monthly_usd: float | None = None
    monthly_tokens: int | None = None

    @property
    def micro_usd(self) -> int:
        return UNLIMITED if self.monthly_usd is None else round(self.monthly_usd * MICRO)

    @property
    def tokens(self) -> int:
        return UNLIMITED if self.monthly_tokens is None else self.monthly_tokens


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    key: str
    month: str
    limits: BudgetLimits
    spent_micro_usd: int
    spent_tokens: int
    remaining: Remaining


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _int(item: Mapping[str, Any], name: str, default: int) -> int:
    return int(item[name]["N"]) if name in item else default


def _budget_item(key: str, limits: BudgetLimits, month: str, spent_c: int, spent_t: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "pk": {"S": key},
        "mk": {"S": month},
        "ru": _n(limits.micro_usd - spent_c),
        "rt": _n(limits.tokens - spent_t),
        "su": _n(spent_c),
        "sk": _n(spent_t),
    }
    if limits.monthly_usd is not None:
        item["lu"] = _n(limits.micro_usd)
    if limits.monthly_tokens is not None:
        item["lt"] = _n(limits.tokens)
    return item


class Budgets:
    """Thin DynamoDB adapter over the budget items; the gatekeeper reserves, the worker settles, admins set."""

    def __init__(self, table_name: str, client: Any, clock: Callable[[], float] = time.time) -> None:
        self.table_name = table_name
        self.client = client
        self.clock = clock

    # -- the request path

    def reserve(
        self, key: str, micro_usd: int, tokens: int, default: BudgetLimits | None = None
    ) -> Hold | Remaining | None:
        """Take `micro_usd` and `tokens` from the level's month: the Hold, or what remains when they do not fit,
        or None when the level has no budget (no item, and no `default` to start one with, as the stack's
        ceiling from its settings). One UpdateItem; a month's first, or a level's very first, costs one more."""
        month = month_key(self.clock())
        for _ in range(3):
            old = self._conditional_update(
                key,
                UpdateExpression="SET ru = ru - :c, rt = rt - :t ADD su :c, sk :t",
                ConditionExpression="mk = :m AND ru >= :c AND rt >= :t",
                ExpressionAttributeValues={":c": _n(micro_usd), ":t": _n(tokens), ":m": {"S": month}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            if old is None:
                return Hold(key, month, micro_usd, tokens)
            if not old:
                if default is None:
                    return None
                self._start(key, default, month)
            elif old["mk"]["S"] == month:
                return Remaining(_int(old, "ru", UNLIMITED), _int(old, "rt", UNLIMITED))
            else:
                self._roll_over(key, old, month)  # or someone else did: either way, reserve on the new month
        return Remaining(0, 0)  # unreachable in practice: a month rolls over once

    def _conditional_update(self, key: str, **request: Any) -> dict[str, Any] | None:
        """One conditional UpdateItem: None when it was applied, else the item as it was ({} when absent)."""
        try:
            self.client.update_item(TableName=self.table_name, Key={"pk": {"S": key}}, **request)
        except ClientError as err:
            if not condition_failed(err):
                raise
            return dict(err.response.get("Item") or {})  # type: ignore[call-overload]
        return None

    def _start(self, key: str, limits: BudgetLimits, month: str) -> None:
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=_budget_item(key, limits, month, 0, 0),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as err:
            if not condition_failed(err):
                raise  # else another request started it first

    def _roll_over(self, key: str, old: Mapping[str, Any], month: str) -> None:
        self._conditional_update(
            key,
            UpdateExpression="SET mk = :m, ru = :lu, rt = :lt, su = :zero, sk = :zero",
            ConditionExpression="mk = :old",
            ExpressionAttributeValues={
                ":m": {"S": month},
                ":old": old["mk"],
                ":lu": _n(_int(old, "lu", UNLIMITED)),
                ":lt": _n(_int(old, "lt", UNLIMITED)),
                ":zero": _n(0),
            },
        )

    def settle(self, hold: Hold, micro_usd: int, tokens: int) -> Remaining | None:
        """Replace a hold with the truth (0, 0 to release it) and say what remains of the level's month.
        A hold of a month that has ended changes nothing (None)."""
        try:
            updated = self.client.update_item(
                TableName=self.table_name,
                Key={"pk": {"S": hold.key}},
                UpdateExpression="ADD ru :back_c, rt :back_t, su :c, sk :t",
                ConditionExpression="mk = :m",
                ExpressionAttributeValues={
                    ":back_c": _n(hold.micro_usd - micro_usd),
                    ":back_t": _n(hold.tokens - tokens),
                    ":c": _n(micro_usd - hold.micro_usd),
                    ":t": _n(tokens - hold.tokens),
                    ":m": {"S": hold.month},
                },
                ReturnValues="ALL_NEW",  # what remains, and the live limit, in the same round trip
            )
        except ClientError as err:
            if not condition_failed(err):
                raise
            return None
        values = updated.get("Attributes", {})
        limit = _int(values, "lu", 0) if "lu" in values else None
        return Remaining(_int(values, "ru", UNLIMITED), _int(values, "rt", UNLIMITED), limit_micro_usd=limit)

    # -- administration

    def set_limits(self, key: str, limits: BudgetLimits) -> None:
        """Set a level's monthly limits; what remains this month moves by the change (spending is kept)."""
        month = month_key(self.clock())
        current = self.usage(key)
        spent_c = current.spent_micro_usd if current and current.month == month else 0
        spent_t = current.spent_tokens if current and current.month == month else 0
        item = _budget_item(key, limits, month, spent_c, spent_t)
        # Admin writes are rare; a reservation landing between the read and this put is lost from `su` only if
        # it raced this very call — acceptable for an operator action, and never over-admitting (ru is recomputed).
        self.client.put_item(TableName=self.table_name, Item=item)

    def remove(self, key: str) -> None:
        self.client.delete_item(TableName=self.table_name, Key={"pk": {"S": key}})

    def usage(self, key: str) -> BudgetUsage | None:
        item = self.client.get_item(TableName=self.table_name, Key={"pk": {"S": key}}, ConsistentRead=True).get("Item")
        if not item:
            return None
        limits = BudgetLimits(
            monthly_usd=_int(item, "lu", 0) / MICRO if "lu" in item else None,
            monthly_tokens=_int(item, "lt", 0) if "lt" in item else None,
        )
        current = item["mk"]["S"] == month_key(self.clock())
        spent_c, spent_t = (_int(item, "su", 0), _int(item, "sk", 0)) if current else (0, 0)
        return BudgetUsage(
            key=key,
            month=item["mk"]["S"] if current else month_key(self.clock()),
            limits=limits,
            spent_micro_usd=spent_c,
            spent_tokens=spent_t,
            remaining=Remaining(limits.micro_usd - spent_c, limits.tokens - spent_t),
        )

    def teams(self) -> list[str]:
        """Every team with a budget (a scan: an admin listing, never on the request path)."""
        names, start = [], None
        while True:
            page = self.client.scan(
                TableName=self.table_name,
                FilterExpression="begins_with(pk, :p)",
                ExpressionAttributeValues={":p": {"S": "team#"}},
                ProjectionExpression="pk",
                **({"ExclusiveStartKey": start} if start else {}),
            )
            names += [i["pk"]["S"].split("#", 1)[1] for i in page.get("Items", [])]
            if not (start := page.get("LastEvaluatedKey")):
                return sorted(names)
