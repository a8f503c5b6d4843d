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

A level may also have a rolling window in tokens (``lw``) and/or µUSD (``lwu``), with the user meter's semantics:
time is cut into 10 s buckets and what is charged to bucket ``j`` counts until ``(j + N + 1) * 10`` (``N`` = 60 for
the 10-minute window), so the window is never lenient and conservative by at most one bucket. The item keeps
``b<j>``/``c<j>`` (tokens/µUSD charged to bucket ``j``, for the live buckets only), ``wc`` (the current bucket) and
``wr``/``wru`` (each window limit, UNLIMITED when only the other is set, minus every kept bucket). A reservation is
still one conditional UpdateItem (``wc = now's bucket AND wr >= :t AND wru >= :c``); the first one in a new bucket
first *advances* the item (one conditional update: expired buckets are credited back and removed, on the condition
that none of them changed), so an item holds at most N + 1 buckets of two numbers each (~2 KB).

Money is counted in micro-dollars (integers): a token's price in µUSD is its price per 1M tokens in USD.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.exceptions import ClientError

from runtime.errors import MeterContentionError
from runtime.metering.core import WINDOW_RESOLUTION_S, bucket_of, month_key, next_month_start, window_exit
from runtime.tables import condition_failed

Scope = Literal["user", "team", "stack"]
MICRO = 1_000_000
UNLIMITED = 10**15  # what "remains" under a limit that is not set
# A level without a limit in one unit still counts down from UNLIMITED as it spends; anything above this is "no
# limit" (half of UNLIMITED: $500M or 5e14 tokens a month, beyond any real budget and any real month's spend).
_NO_LIMIT_ABOVE = UNLIMITED // 2
STACK_KEY = "stack"
USER_SPEND_PREFIX = "spend#"
TEAM_GROUP_PREFIX = "team:"  # a Cognito group `team:<name>` makes its members the team's
WINDOW_SECONDS = 600  # a budget's rolling window: the same 10 minutes as the tiers'
WINDOW_BUCKETS = WINDOW_SECONDS // WINDOW_RESOLUTION_S
_BUCKET = re.compile(r"([bc])([0-9]+)")  # b: tokens, c: µUSD; buckets count from 1970, never negative
Spend = tuple[int, int]  # (tokens, µUSD)


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
    """``stack``, ``team#<name>`` or ``spend#<sub>`` (a user's USD month: their tokens are the meter's item,
    ``user#<sub>``, which this must not be)."""
    if scope == "stack":
        return STACK_KEY
    return f"team#{name}" if scope == "team" else f"{USER_SPEND_PREFIX}{name}"


def scope_of(key: str) -> tuple[Scope, str | None]:
    """The level a budget key names: ("stack", None), ("team", name) or ("user", sub)."""
    if key == STACK_KEY:
        return "stack", None
    if key.startswith(USER_SPEND_PREFIX):
        return "user", key.removeprefix(USER_SPEND_PREFIX)
    return "team", key.removeprefix("team#")


def budgets_view(remaining: Mapping[str, Remaining]) -> dict[str, Any]:
    """What clients see of the levels' months, by key: {"team": {"name", "usd", "tokens"}, "stack": {…},
    "user": {"usd", "tokens"}} (the user's own USD month; its tokens are the meter's, so null here)."""
    view: dict[str, Any] = {}
    for key, left in remaining.items():
        scope, name = scope_of(key)
        view[scope] = {"name": name, **left.as_event()} if scope == "team" else left.as_event()
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
    window_tokens: int = UNLIMITED  # what remains of the rolling window (UNLIMITED: no window in tokens)
    window_micro_usd: int = UNLIMITED  # and in µUSD
    # The window's live buckets (bucket, (tokens, µUSD)), for how long a refused request waits; () without one.
    window_buckets: tuple[tuple[int, Spend], ...] = field(default=(), compare=False)

    def as_event(self) -> dict[str, Any]:
        event = {
            "usd": None if self.micro_usd > _NO_LIMIT_ABOVE else round(max(0, self.micro_usd) / MICRO, 6),
            "tokens": None if self.tokens > _NO_LIMIT_ABOVE else max(0, self.tokens),
        }
        if self.window_tokens <= _NO_LIMIT_ABOVE:
            event["window"] = max(0, self.window_tokens)
        if self.window_micro_usd <= _NO_LIMIT_ABOVE:
            event["windowUsd"] = round(max(0, self.window_micro_usd) / MICRO, 6)
        return event


@dataclass(frozen=True, slots=True)
class Hold:
    """One level's reservation, as the worker settles it (also the WorkerJob's record of it)."""

    key: str
    month: str
    micro_usd: int
    tokens: int
    bucket: int | None = None  # the window bucket the tokens were charged to (None: the level has no window)
    limit: int | None = None  # µUSD: the caller's limit it was reserved under (a user's month), else the item's

    def fields(self) -> dict[str, Any]:
        return {"key": self.key, "month": self.month, "micro_usd": self.micro_usd, "tokens": self.tokens,
                "bucket": self.bucket, "limit": self.limit}


def granted_within(price: Price | None, remaining: Remaining, input_tokens: int, granted: int) -> int:
    """The output grant capped so input + output fit what remains (in the month's and the window's tokens and,
    when priced, in µUSD)."""
    by_tokens = min(remaining.tokens, remaining.window_tokens) - input_tokens
    money = min(remaining.micro_usd, remaining.window_micro_usd)
    by_money = price.output_within(money, input_tokens) if price is not None else UNLIMITED
    return max(0, min(granted, by_tokens, by_money))


def retry_after_month(now: float) -> float:
    return next_month_start(now) - now


def bucket_exit(bucket: int) -> int:
    """The first instant at which what was charged to `bucket` no longer counts against a budget's window."""
    return window_exit(bucket, WINDOW_BUCKETS)


def is_live(bucket: int, current: int) -> bool:
    return bucket >= current - WINDOW_BUCKETS


def _plus(a: Spend, b: Spend) -> Spend:
    return a[0] + b[0], a[1] + b[1]


def _covers(left: Spend, need: Spend) -> bool:
    return left[0] >= need[0] and left[1] >= need[1]


def window_left(kept_remaining: Spend, buckets: Mapping[int, Spend], now: float) -> Spend:
    """What remains of the window at `now` (tokens, µUSD): the item's ``wr``/``wru`` (limits minus every kept
    bucket) plus what the buckets that have left the window since the item was last advanced held."""
    current = bucket_of(now)
    left = kept_remaining
    for b, spent in buckets.items():
        if not is_live(b, current):
            left = _plus(left, spent)
    return left


def window_fits_in(buckets: Mapping[int, Spend], window_remaining: Spend, need: Spend, now: float) -> float | None:
    """Seconds until `need` (tokens, µUSD) fits the window as its live buckets leave it (0: it fits now; None:
    never, as when `need` is above a limit itself)."""
    current = bucket_of(now)
    left = window_left(window_remaining, buckets, now)
    if _covers(left, need):
        return 0.0
    for bucket, spent in sorted((b, n) for b, n in buckets.items() if is_live(b, current)):
        left = _plus(left, spent)
        if _covers(left, need):
            return max(0.0, bucket_exit(bucket) - now)
    return None


def refusing_limit(price: Price | None, remaining: Remaining, input_tokens: int, need_output: int) -> str:
    """Which of a level's limits a request of `input_tokens` + `need_output` does not fit: "month" when the month
    cannot take it (a refusal until next month, whatever the window) or the level has no window (the month it did
    not fit a moment ago, as another request took the rest in between), else "window"."""
    if remaining.window_tokens > _NO_LIMIT_ABOVE and remaining.window_micro_usd > _NO_LIMIT_ABOVE:
        return "month"
    by_tokens = remaining.tokens - input_tokens
    by_money = price.output_within(remaining.micro_usd, input_tokens) if price is not None else UNLIMITED
    return "month" if min(by_tokens, by_money) < need_output else "window"


# --- the adapter ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    monthly_usd: float | None = None
    monthly_tokens: int | None = None
    window_tokens: int | None = None  # tokens per rolling `WINDOW_SECONDS`
    window_usd: float | None = None  # USD per rolling `WINDOW_SECONDS`

    @property
    def windowed(self) -> bool:
        return self.window_tokens is not None or self.window_usd is not None

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
    window_spent_tokens: int = 0  # in the rolling window (0 without one)
    window_spent_micro_usd: int = 0


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _int(item: Mapping[str, Any], name: str, default: int) -> int:
    return int(item[name]["N"]) if name in item else default


def _buckets(item: Mapping[str, Any]) -> dict[int, Spend]:
    """The window buckets an item keeps: bucket -> (tokens, µUSD)."""
    tokens: dict[int, int] = {}
    money: dict[int, int] = {}
    for name, value in item.items():
        if m := _BUCKET.fullmatch(name):
            (tokens if m.group(1) == "b" else money)[int(m.group(2))] = int(value["N"])
    return {b: (tokens.get(b, 0), money.get(b, 0)) for b in tokens.keys() | money.keys()}


def _remaining(item: Mapping[str, Any], now: float, spend_limit: int | None = None) -> Remaining:
    """What remains of a level, from its item as read or returned (the window as of `now`); under a caller's
    `spend_limit` (µUSD), that limit less what the item says was spent."""
    limit = spend_limit if spend_limit is not None else (_int(item, "lu", 0) if "lu" in item else None)
    micro_usd = _int(item, "ru", UNLIMITED) if spend_limit is None else spend_limit - _int(item, "su", 0)
    if "wc" not in item:
        return Remaining(micro_usd, _int(item, "rt", UNLIMITED), limit_micro_usd=limit)
    buckets = _buckets(item)
    current = bucket_of(now)
    window_t, window_c = window_left((_int(item, "wr", 0), _int(item, "wru", 0)), buckets, now)
    return Remaining(
        micro_usd,
        _int(item, "rt", UNLIMITED),
        limit_micro_usd=limit,
        window_tokens=window_t if "lw" in item else UNLIMITED,
        window_micro_usd=window_c if "lwu" in item else UNLIMITED,
        window_buckets=tuple(sorted((b, n) for b, n in buckets.items() if is_live(b, current))),
    )


def _budget_item(
    key: str, limits: BudgetLimits, month: str, spent_c: int, spent_t: int, buckets: Mapping[int, Spend], now: float
) -> dict[str, Any]:
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
    if limits.windowed:
        current = bucket_of(now)
        live = {b: spent for b, spent in buckets.items() if is_live(b, current)}
        window_t = UNLIMITED if limits.window_tokens is None else limits.window_tokens
        window_c = UNLIMITED if limits.window_usd is None else round(limits.window_usd * MICRO)
        item |= {"wc": _n(max([current, *live])),
                 "wr": _n(window_t - sum(t for t, _ in live.values())),
                 "wru": _n(window_c - sum(c for _, c in live.values()))}
        if limits.window_tokens is not None:
            item["lw"] = _n(window_t)
        if limits.window_usd is not None:
            item["lwu"] = _n(window_c)
        for b, (t, c) in live.items():
            item |= {f"b{b}": _n(t), f"c{b}": _n(c)}
    return item


def _unchanged(item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A condition that holds while the item is exactly as read (absent, when it was)."""
    if not item:
        return "attribute_not_exists(pk)", {}
    names = sorted(n for n in item if n != "pk")
    values = {f":v{i}": item[n] for i, n in enumerate(names)}
    return " AND ".join(f"{n} = :v{i}" for i, n in enumerate(names)), values


class Budgets:
    """Thin DynamoDB adapter over the budget items; the gatekeeper reserves, the worker settles, admins set."""

    def __init__(self, table_name: str, client: Any, clock: Callable[[], float] = time.time) -> None:
        self.table_name = table_name
        self.client = client
        self.clock = clock
        # The levels last seen with a window: their reservations take the window too. A guess kept per process
        # (a Lambda container), corrected by the first refusal that shows otherwise, so a level without a window
        # never pays for one and a windowed one costs one more round trip only in a new container.
        self._windowed: set[str] = set()

    # -- the request path

    def reserve(
        self, key: str, micro_usd: int, tokens: int, default: BudgetLimits | None = None,
        spend_limit: int | None = None,
    ) -> Hold | Remaining | None:
        """Take `micro_usd` and `tokens` from the level's month (and window, when it has one): the Hold, or what
        remains when they do not fit, or None when the level has no budget (no item, and no `default` to start one
        with, as the stack's ceiling from its settings). One UpdateItem; a month's first, a window bucket's first
        or a level's very first costs one more. `MeterContentionError` when the level kept changing under it.

        `spend_limit` (µUSD): the limit is the caller's, not the item's — a user's USD month lives in their tier or
        override, so it follows them without a write; the item then only counts what was spent (``su``)."""
        now = self.clock()
        month, bucket = month_key(now), bucket_of(now)
        for _ in range(6):
            windowed = key in self._windowed
            update = "SET ru = ru - :c, rt = rt - :t"
            condition = "mk = :m AND ru >= :c AND rt >= :t"
            values: dict[str, Any] = {":c": _n(micro_usd), ":t": _n(tokens), ":m": {"S": month}}
            if spend_limit is not None:
                condition = "mk = :m AND su <= :most AND rt >= :t"  # spent + cost within the caller's limit
                values[":most"] = _n(spend_limit - micro_usd)
            if windowed:
                update += f", wr = wr - :t, wru = wru - :c ADD su :c, sk :t, b{bucket} :t, c{bucket} :c"
                condition += " AND wc = :k AND wr >= :t AND wru >= :c"
                values[":k"] = _n(bucket)
            else:
                update += " ADD su :c, sk :t"
                condition += " AND attribute_not_exists(wc)"
            old = self._conditional_update(
                key, UpdateExpression=update, ConditionExpression=condition, ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            if old is None:
                return Hold(key, month, micro_usd, tokens, bucket if windowed else None, spend_limit)
            if not old:
                if default is None:
                    return None
                self._start(key, default, month)
            elif ("wc" in old) != windowed:
                (self._windowed.add if "wc" in old else self._windowed.discard)(key)
            elif old["mk"]["S"] != month:
                self._roll_over(key, old, month)  # or someone else did: either way, reserve on the new month
            elif windowed and (current := _int(old, "wc", bucket)) != bucket:
                if current > bucket:
                    bucket = current  # another clock is ahead: charge its bucket (it leaves the window later)
                else:
                    self._advance(key, old, bucket)  # or someone else did
            else:
                return _remaining(old, now, spend_limit)
        raise MeterContentionError(f"budget {key} kept changing; retry shortly")

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
                Item=_budget_item(key, limits, month, 0, 0, {}, self.clock()),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as err:
            if not condition_failed(err):
                raise  # else another request started it first

    def _roll_over(self, key: str, old: Mapping[str, Any], month: str) -> None:
        """A new month: its counters start from the limits (the window, which does not care for months, stays)."""
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

    def _advance(self, key: str, old: Mapping[str, Any], bucket: int) -> None:
        """Move the window's current bucket to `bucket`: the buckets that left the window are credited back to
        ``wr`` and removed, on the condition that the current bucket and each of them are as read (a settle that
        changed one in between makes this try again, so no token is credited twice or lost)."""
        expired = {b: spent for b, spent in _buckets(old).items() if not is_live(b, bucket)}
        values: dict[str, Any] = {":k": _n(bucket), ":old": old["wc"],
                                  ":freed": _n(sum(t for t, _ in expired.values())),
                                  ":freed_c": _n(sum(c for _, c in expired.values()))}
        condition = ["wc = :old"]
        names = [f"{kind}{b}" for b in expired for kind in "bc" if f"{kind}{b}" in old]
        for name in names:
            condition.append(f"{name} = :{name}")
            values[f":{name}"] = old[name]
        remove = f" REMOVE {', '.join(names)}" if names else ""
        self._conditional_update(
            key, UpdateExpression=f"SET wc = :k, wr = wr + :freed, wru = wru + :freed_c{remove}",
            ConditionExpression=" AND ".join(condition), ExpressionAttributeValues=values,
        )

    def settle(self, hold: Hold, micro_usd: int, tokens: int) -> Remaining | None:
        """Replace a hold with the truth (0, 0 to release it) and say what remains of the level's month.

        The month's part changes nothing once that month has ended, the window's part nothing once its bucket has
        left the window (or the window was removed); None when the month's part did not apply."""
        back = {":back_t": _n(hold.tokens - tokens), ":t": _n(tokens - hold.tokens),
                ":back_c": _n(hold.micro_usd - micro_usd), ":c": _n(micro_usd - hold.micro_usd)}
        month_part = ("ru :back_c, rt :back_t, su :c, sk :t", "mk = :m", {**back, ":m": {"S": hold.month}})
        attempts = [month_part]
        if hold.bucket is not None:
            j = hold.bucket
            window_part = (f"wr :back_t, wru :back_c, b{j} :t, c{j} :c", f"attribute_exists(b{j})", back)
            both = (f"{month_part[0]}, {window_part[0]}", f"{month_part[1]} AND {window_part[1]}", month_part[2])
            attempts = [both, month_part, window_part]
        for update, condition, values in attempts:
            try:
                updated = self.client.update_item(
                    TableName=self.table_name,
                    Key={"pk": {"S": hold.key}},
                    UpdateExpression=f"ADD {update}",
                    ConditionExpression=condition,
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",  # what remains, and the live limit, in the same round trip
                )
            except ClientError as err:
                if not condition_failed(err):
                    raise
                continue
            # Settled at the window alone: its month is over, so nothing remains of it to say.
            return None if values is back else _remaining(updated.get("Attributes", {}), self.clock(), hold.limit)
        return None

    # -- administration

    def set_limits(self, key: str, limits: BudgetLimits) -> None:
        """Set a level's limits; what remains this month (and of the window) moves by the change: spending and the
        window's live buckets are kept. Written on the condition that the item is as read, so a reservation in
        between is never lost (it is read again)."""
        for _ in range(6):
            now = self.clock()
            month = month_key(now)
            old = self.client.get_item(
                TableName=self.table_name, Key={"pk": {"S": key}}, ConsistentRead=True).get("Item") or {}
            current = old.get("mk", {}).get("S") == month
            spent_c, spent_t = (_int(old, "su", 0), _int(old, "sk", 0)) if current else (0, 0)
            item = _budget_item(key, limits, month, spent_c, spent_t, _buckets(old), now)
            condition, values = _unchanged(old)
            try:
                self.client.put_item(TableName=self.table_name, Item=item, ConditionExpression=condition,
                                     **({"ExpressionAttributeValues": values} if values else {}))
            except ClientError as err:
                if not condition_failed(err):
                    raise
                continue
            self._windowed.discard(key)
            return
        raise MeterContentionError(f"budget {key} kept changing; try again")

    def remove(self, key: str) -> None:
        self.client.delete_item(TableName=self.table_name, Key={"pk": {"S": key}})

    def usage(self, key: str, spend_limit: int | None = None) -> BudgetUsage | None:
        """A level's month and window as read (None: no item); under a caller's `spend_limit` (µUSD, a user's USD
        month), that is its USD limit rather than the item's, as `reserve` takes it."""
        item = self.client.get_item(TableName=self.table_name, Key={"pk": {"S": key}}, ConsistentRead=True).get("Item")
        if not item:
            return None
        now = self.clock()
        item_usd = _int(item, "lu", 0) if "lu" in item else None
        usd_limit = spend_limit if spend_limit is not None else item_usd
        limits = BudgetLimits(
            monthly_usd=usd_limit / MICRO if usd_limit is not None else None,
            monthly_tokens=_int(item, "lt", 0) if "lt" in item else None,
            window_tokens=_int(item, "lw", 0) if "lw" in item else None,
            window_usd=_int(item, "lwu", 0) / MICRO if "lwu" in item else None,
        )
        current = item["mk"]["S"] == month_key(now)
        spent_c, spent_t = (_int(item, "su", 0), _int(item, "sk", 0)) if current else (0, 0)
        window = _remaining(item, now)
        return BudgetUsage(
            key=key,
            month=item["mk"]["S"] if current else month_key(now),
            limits=limits,
            spent_micro_usd=spent_c,
            spent_tokens=spent_t,
            remaining=Remaining(limits.micro_usd - spent_c, limits.tokens - spent_t,
                                window_tokens=window.window_tokens, window_micro_usd=window.window_micro_usd,
                                window_buckets=window.window_buckets),
            window_spent_tokens=sum(t for _, (t, _) in window.window_buckets),
            window_spent_micro_usd=sum(c for _, (_, c) in window.window_buckets),
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
