"""The meter's DynamoDB adapter: moves `MeterState` snapshots in and out of one item per user.

Table design
------------
One item per user, partition key `pk` (S) = ``user#<user_id>``; no sort key, no indexes.

========  ====  ===========================================================================================
attribute type  meaning
========  ====  ===========================================================================================
pk        S     ``user#<user_id>``
v         N     version, incremented by every write (optimistic concurrency)
wb        M     window buckets: ``{"<bucket index>": tokens}`` (10-second buckets still in the window)
mo        M     months: ``{"YYYY-MM": tokens}`` (current and previous UTC month)
rs        M     open entries: ``{reservation_id: {ch, lu, ku, st, q}}`` live (and expired, unsettled) reservations;
                `q` = ``[requestId]`` when the client sent one. Bucket, month, reservation and input estimate are
                not stored: the reservation id carries them.
dn        M     settled entries, compacted: ``{reservation_id: [charged, requestId?]}``; remembered until
                `settled_keep_until` (derived from the id) so a second settle, or a retried requestId, is a
                duplicate and not a second charge
ov        M     per-user override ``{wt, mt, ws, mo, mu}`` (window/monthly tokens, window seconds, min output,
                monthly µUSD when set)
xc        N     expired leases, cumulative
os        N     tokens settled beyond their reservation, cumulative
ttl       N     epoch seconds after which DynamoDB may delete the item (the table's TTL attribute);
                absent while an override is stored, so overrides never expire
========  ====  ===========================================================================================

Round trips (uncontended): admit = GetItem + conditional PutItem (2); refuse = GetItem (1);
settle = one conditional UpdateItem (1) whose expression is derived from the reservation id. A failed
condition returns the current item (ReturnValuesOnConditionCheckFailure), so a retry costs one call, not two.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from runtime.errors import InvalidLimitsError, InvalidUserIdError, MeterContentionError
from runtime.metering import core
from runtime.metering.core import Decision, Entry, Limits, MeterState, Settlement, Usage
from runtime.tables import on_demand_table

TTL_ATTRIBUTE = "ttl"
R = TypeVar("R")
PARTITION_KEY = "pk"
MAX_USER_ID_LENGTH = 256


def table_spec(table_name: str) -> dict[str, Any]:
    """boto3 `create_table` kwargs for the metering table: the one definition tests, `aigw dev` and Pulumi use."""
    return on_demand_table(table_name, PARTITION_KEY)


def _user_key(user_id: object) -> dict[str, dict[str, str]]:
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > MAX_USER_ID_LENGTH:
        raise InvalidUserIdError(f"user id must be a non-empty string of at most {MAX_USER_ID_LENGTH} characters")
    return {PARTITION_KEY: {"S": f"user#{user_id}"}}


# --- item codec -----------------------------------------------------------------------------------------------


def _n(value: int | float) -> dict[str, str]:
    # repr() of a float round-trips exactly; DynamoDB numbers keep 38 significant digits.
    return {"N": str(value) if isinstance(value, int) else repr(value)}


def _num(attr: dict[str, str]) -> int | float:
    text = attr["N"]
    return float(text) if any(c in text for c in ".eE") else int(text)


def _limits_to_item(limits: Limits) -> dict[str, Any]:
    return {
        "M": {
            "wt": _n(limits.window_tokens),
            "mt": _n(limits.monthly_tokens),
            "ws": _n(limits.window_seconds),
            "mo": _n(limits.min_output_tokens),
            **({"mu": _n(round(limits.monthly_usd * 1_000_000))} if limits.monthly_usd is not None else {}),
        }
    }


def _limits_from_item(attr: dict[str, Any]) -> Limits:
    m = attr["M"]
    usd = int(_num(m["mu"])) / 1_000_000 if "mu" in m else None  # stored in µUSD: exact, like the budgets
    return Limits(int(_num(m["wt"])), int(_num(m["mt"])), int(_num(m["ws"])), int(_num(m["mo"])), usd)


def _entry_to_item(e: Entry) -> dict[str, Any]:
    """An open entry; what the reservation id already says (bucket, month, reserved, input) is not repeated."""
    return {
        "M": {
            "ch": _n(e.charged),
            "lu": _n(e.lease_until),
            "ku": _n(e.keep_until),
            "st": {"S": e.status},
            **({"q": {"L": [{"S": e.request_key}]}} if e.request_key is not None else {}),
        }
    }


def _settled_to_item(e: Entry) -> dict[str, Any]:
    """A settled entry as a tombstone: its charge and request key (the settle's fast path writes the same)."""
    return {"L": [_n(e.charged), *([{"S": e.request_key}] if e.request_key is not None else [])]}


def _entry_from_item(reservation_id: str, attr: dict[str, Any]) -> Entry:
    m, ref = attr["M"], core.parse_reservation_id(reservation_id)
    request_key = m["q"]["L"][0]["S"] if m.get("q", {}).get("L") else m["rq"]["S"] if "rq" in m else None
    return Entry(
        bucket=ref.bucket,
        month=ref.month,
        reserved=ref.reserved,
        charged=int(_num(m["ch"])),
        input_estimate=ref.input_estimate,
        lease_until=float(_num(m["lu"])),
        keep_until=float(_num(m["ku"])),
        status=m["st"]["S"],
        request_key=request_key,
    )


def _settled_from_item(reservation_id: str, attr: dict[str, Any], lease_seconds: float) -> Entry:
    values, ref = attr["L"], core.parse_reservation_id(reservation_id)
    keep_until = core.settled_keep_until(ref, lease_seconds)
    return Entry(
        bucket=ref.bucket,
        month=ref.month,
        reserved=ref.reserved,
        charged=int(_num(values[0])),
        input_estimate=ref.input_estimate,
        lease_until=keep_until,
        keep_until=keep_until,
        status="settled",
        request_key=values[1]["S"] if len(values) > 1 else None,
    )


def state_from_item(item: dict[str, Any] | None, lease_seconds: float = core.DEFAULT_LEASE_SECONDS) -> MeterState:
    if not item:
        return MeterState()
    entries = {k: _entry_from_item(k, v) for k, v in item.get("rs", {}).get("M", {}).items()}
    entries.update({k: _settled_from_item(k, v, lease_seconds) for k, v in item.get("dn", {}).get("M", {}).items()})
    return MeterState(
        buckets={int(k): int(_num(v)) for k, v in item.get("wb", {}).get("M", {}).items()},
        months={k: int(_num(v)) for k, v in item.get("mo", {}).get("M", {}).items()},
        entries=entries,
        override=_limits_from_item(item["ov"]) if "ov" in item else None,
        expired_total=int(_num(item["xc"])) if "xc" in item else 0,
        overshoot_total=int(_num(item["os"])) if "os" in item else 0,
        version=int(_num(item["v"])) if "v" in item else 0,
    )


def state_to_item(key: dict[str, Any], state: MeterState, now: float) -> dict[str, Any]:
    item: dict[str, Any] = {
        **key,
        "v": _n(state.version),
        "wb": {"M": {str(b): _n(v) for b, v in state.buckets.items()}},
        "mo": {"M": {m: _n(v) for m, v in state.months.items()}},
        "rs": {"M": {rid: _entry_to_item(e) for rid, e in state.entries.items() if e.status != "settled"}},
        "dn": {"M": {rid: _settled_to_item(e) for rid, e in state.entries.items() if e.status == "settled"}},
        "xc": _n(state.expired_total),
        "os": _n(state.overshoot_total),
    }
    if state.override is not None:
        item["ov"] = _limits_to_item(state.override)
    if (ttl := core.item_ttl(state, now)) is not None:
        item[TTL_ATTRIBUTE] = _n(ttl)
    return item


# --- the meter -------------------------------------------------------------------------------------------------


class Meter:
    """Token metering for users: admit (reserve) before a model call, settle with the reported usage after."""

    def __init__(
        self,
        table_name: str,
        client: Any = None,
        clock: Callable[[], float] = time.time,
        *,
        lease_seconds: float = core.DEFAULT_LEASE_SECONDS,
        max_attempts: int = 12,
        backoff_base_s: float = 0.005,
        backoff_cap_s: float = 0.2,
    ) -> None:
        if client is None:
            import boto3  # imported here so a handler that never meters does not pay for it

            client = boto3.client("dynamodb")
        self.table_name = table_name
        self.client = client
        self.clock = clock
        self.lease_seconds = float(lease_seconds)
        self.max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._random = random.Random()

    # -- reads

    def _read(self, key: dict[str, Any]) -> dict[str, Any] | None:
        return self.client.get_item(TableName=self.table_name, Key=key, ConsistentRead=True).get("Item")

    def usage(self, user_id: str, limits: Limits) -> Usage:
        """Current usage and what remains, under the user's override when one is stored."""
        _check_limits(limits)
        key = _user_key(user_id)
        return core.usage(state_from_item(self._read(key), self.lease_seconds), limits, self.clock())

    def get_override(self, user_id: str) -> Limits | None:
        return state_from_item(self._read(_user_key(user_id))).override

    def effective_limits(self, user_id: str, tier_limits: Limits) -> Limits:
        _check_limits(tier_limits)
        return core.effective_limits(state_from_item(self._read(_user_key(user_id))), tier_limits)

    # -- writes

    def admit(
        self, user_id: str, limits: Limits, input_tokens: int, max_output_tokens: int, request_key: str | None = None
    ) -> Decision:
        """Reserve `input_tokens` plus as much output as fits (at most `max_output_tokens`), or refuse.

        With `request_key`, a key this user's item still remembers is answered as a duplicate (`duplicate_of`),
        in the same read and no write: idempotency costs no extra round trip."""
        _check_limits(limits)
        key = _user_key(user_id)
        core.check_token_count("input_tokens", input_tokens)
        core.check_token_count("max_output_tokens", max_output_tokens, positive=True)

        def decide(state: MeterState, now: float) -> tuple[Decision, MeterState | None]:
            return core.admit(
                state,
                limits,
                input_tokens,
                max_output_tokens,
                now,
                lambda: secrets.token_hex(8),
                lease_seconds=self.lease_seconds,
                grace_seconds=self.lease_seconds,
                request_key=request_key,
            )

        # A conflict whose current item already holds our reservation means our write landed but its answer
        # was lost and the SDK's retry then failed the condition against our own write: retrying would
        # orphan the reservation.
        return self._decide_and_write(
            key, self._read(key), decide, lambda d, item: _holds(item, d.reservation_id), f"admit for {user_id!r}"
        )

    def release(self, user_id: str, reservation_id: str) -> Settlement:
        """Give back a reservation whose request will never be answered (settled at 0 tokens), forgetting its
        request key so a retry with the same requestId is admitted as new. One write, as `settle`."""
        return self.settle(user_id, reservation_id, 0, 0, _forget_request_key=True)

    def settle(
        self, user_id: str, reservation_id: str, input_tokens: int, output_tokens: int, *,
        _forget_request_key: bool = False,
    ) -> Settlement:
        """Replace a reservation with the actual usage. Idempotent; late and unknown ids still record usage."""
        key = _user_key(user_id)
        ref = core.parse_reservation_id(reservation_id)
        core.check_token_count("input_tokens", input_tokens)
        core.check_token_count("output_tokens", output_tokens)
        now = self.clock()
        change = core.live_settlement(ref, input_tokens, output_tokens)
        try:
            # Fast path: the reservation is live, so the whole change is known from its id.
            self.client.update_item(
                TableName=self.table_name,
                Key=key,
                # The open entry becomes a tombstone [charged, requestId?] in `dn` (the request key copied from
                # the entry in the same expression), so the item grows by a few bytes per settled request.
                UpdateExpression=(
                    "SET wb.#b = if_not_exists(wb.#b, :zero) + :delta, mo.#m = if_not_exists(mo.#m, :zero) + :delta,"
                    + (" dn.#r = :charged," if _forget_request_key
                       else " dn.#r = list_append(:charged, if_not_exists(rs.#r.q, :none)),")
                    + " os = if_not_exists(os, :zero) + :over, v = v + :one REMOVE rs.#r"
                ),
                ConditionExpression="rs.#r.st = :live AND rs.#r.lu > :now AND attribute_exists(dn)",
                ExpressionAttributeNames={"#b": str(ref.bucket), "#m": ref.month, "#r": reservation_id},
                ExpressionAttributeValues={
                    ":zero": _n(0),
                    ":one": _n(1),
                    ":delta": _n(change.delta),
                    ":charged": {"L": [_n(change.charged)]},
                    ":over": _n(change.overshoot),
                    ":live": {"S": "live"},
                    ":now": _n(now),
                    **({} if _forget_request_key else {":none": {"L": []}}),
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return Settlement("settled", change.charged, change.overshoot, change.input_overshoot)
        except self.client.exceptions.ConditionalCheckFailedException as err:
            item = err.response.get("Item") or self._read(key)
        # Slow path: already settled, lease expired, or unknown — decided by the core on the current item.
        return self._decide_and_write(
            key,
            item,
            lambda state, now: core.settle(
                state, reservation_id, input_tokens, output_tokens, now, lease_seconds=self.lease_seconds,
                forget_request_key=_forget_request_key,
            ),
            lambda _settlement, _item: False,
            f"settle for {user_id!r}",
        )

    def set_override(self, user_id: str, limits: Limits) -> None:
        """Store per-user limits that take precedence over the tier's. Overrides do not expire."""
        _check_limits(limits)
        self.client.update_item(
            TableName=self.table_name,
            Key=_user_key(user_id),
            UpdateExpression="SET ov = :ov, v = if_not_exists(v, :zero) + :one REMOVE #ttl",
            ExpressionAttributeNames={"#ttl": TTL_ATTRIBUTE},
            ExpressionAttributeValues={":ov": _limits_to_item(limits), ":zero": _n(0), ":one": _n(1)},
        )

    def clear_override(self, user_id: str) -> None:
        key = _user_key(user_id)
        ttl = core.item_ttl(MeterState(), self.clock())
        # No item means no override to clear.
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key=key,
                UpdateExpression="SET v = v + :one, #ttl = :ttl REMOVE ov",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames={"#ttl": TTL_ATTRIBUTE},
                ExpressionAttributeValues={":one": _n(1), ":ttl": _n(ttl or 0)},
            )

    # -- plumbing

    def _decide_and_write(
        self,
        key: dict[str, Any],
        item: dict[str, Any] | None,
        decide: Callable[[MeterState, float], tuple[R, MeterState | None]],
        landed: Callable[[R, dict[str, Any] | None], bool],
        what: str,
    ) -> R:
        """Optimistic concurrency: decide on the item as read, write only if unchanged, else decide again."""
        for attempt in range(self.max_attempts):
            state, now = state_from_item(item, self.lease_seconds), self.clock()
            result, new_state = decide(state, now)
            if new_state is None:
                return result
            written, item = self._put_if_unchanged(key, state, new_state, now)
            if written or landed(result, item):
                return result
            self._backoff(attempt)
        raise MeterContentionError(f"{what} conflicted {self.max_attempts} times")

    def _put_if_unchanged(
        self, key: dict[str, Any], read: MeterState, new_state: MeterState, now: float
    ) -> tuple[bool, dict[str, Any] | None]:
        """Write `new_state` only if nobody wrote since `read`; on conflict return the item as it now is."""
        written = replace(new_state, version=read.version + 1)
        condition: dict[str, Any]
        if read.version == 0:
            condition = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            condition = {"ConditionExpression": "v = :v", "ExpressionAttributeValues": {":v": _n(read.version)}}
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=state_to_item(key, written, now),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **condition,
            )
            return True, None
        except self.client.exceptions.ConditionalCheckFailedException as err:
            current = err.response.get("Item")
            return False, current if current is not None else self._read(key)

    def _backoff(self, attempt: int) -> None:
        # Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): spreads contending writers.
        time.sleep(self._random.uniform(0, min(self._backoff_cap_s, self._backoff_base_s * 2**attempt)))


def _holds(item: dict[str, Any] | None, reservation_id: str | None) -> bool:
    if not (item and reservation_id):
        return False
    return reservation_id in item.get("rs", {}).get("M", {}) or reservation_id in item.get("dn", {}).get("M", {})


def _check_limits(limits: object) -> None:
    if not isinstance(limits, Limits):
        raise InvalidLimitsError(f"limits must be a Limits, got {type(limits).__name__}")
