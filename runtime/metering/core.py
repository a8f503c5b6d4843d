"""The metering decisions as pure functions: (state snapshot, request, now) -> (decision, new state).

No I/O and no clock: the DynamoDB adapter reads a snapshot, calls these, and writes the result back with a
conditional write. Everything the meter promises is decided here and property-tested in isolation.

Model
-----
* Time is cut into buckets of `WINDOW_RESOLUTION_S` (10 s). A request admitted at `t` is charged to bucket
  `floor(t / 10)` and counts against the rolling window until `(bucket + N + 1) * 10`, with
  `N = window_seconds / 10`. That is at least `window_seconds` after `t` and at most 10 s more, so the
  tokens of requests admitted in *any* `window_seconds`-long interval never exceed `window_tokens`
  (conservative by at most one bucket, never lenient).
* A request counts against the UTC calendar month it was admitted in, whenever it is settled.
* An admission reserves `input_estimate + granted_output`; settling replaces that charge, in the same bucket
  and month, with the actual usage. A live reservation whose lease ran out is expired: its charge is
  released and it is counted, so a crashed worker cannot hold budget forever.
* A settled entry is kept as a tombstone until its lease would have ended, so a duplicate settle is
  recognised; an expired one for `grace` seconds more, so a worker that outlived its lease still records
  what it used. A settle for an id admitted longer ago than its lease that the meter no longer holds is
  `stale` and records nothing: it may be a duplicate, and counting twice is worse than once late. The item
  thus holds one entry per admission of the last lease period (15 min by default), not per day.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from runtime.errors import (
    InvalidLimitsError,
    InvalidReservationIdError,
    InvalidTokenCountError,
)

WINDOW_RESOLUTION_S = 10
MAX_WINDOW_SECONDS = 86_400
DEFAULT_LEASE_SECONDS = 900.0
# At most this many admissions are remembered per user (about 230 bytes each in the item), keeping the
# user's DynamoDB item far below its 400 KB limit whatever the request rate.
MAX_ENTRIES = 1000

Status = Literal["live", "settled", "expired"]
RefusalReason = Literal["window", "monthly"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Limits:
    """Token limits of one tier or one user override, and optionally a monthly limit in USD.

    The meter counts tokens only; `monthly_usd` rides along so that the gatekeeper finds the user's effective USD
    month (the override's, else the tier's) in the same read, and reserves it at the user's budget item."""

    window_tokens: int
    monthly_tokens: int
    window_seconds: int = 600
    min_output_tokens: int = 64
    monthly_usd: float | None = None

    def __post_init__(self) -> None:
        for name in ("window_tokens", "monthly_tokens", "window_seconds", "min_output_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise InvalidLimitsError(f"{name} must be a positive integer, got {value!r}")
        usd = self.monthly_usd
        if usd is not None and (isinstance(usd, bool) or not isinstance(usd, int | float) or not 0 < usd < 1e8):
            raise InvalidLimitsError(f"monthly_usd must be a positive amount below 100,000,000, got {usd!r}")
        if self.window_seconds % WINDOW_RESOLUTION_S or self.window_seconds > MAX_WINDOW_SECONDS:
            raise InvalidLimitsError(
                f"window_seconds must be a multiple of {WINDOW_RESOLUTION_S} up to {MAX_WINDOW_SECONDS}, "
                f"got {self.window_seconds}"
            )

    @property
    def window_buckets(self) -> int:
        return self.window_seconds // WINDOW_RESOLUTION_S


@dataclass(frozen=True, slots=True)
class Entry:
    """One admission as the meter remembers it.

    `charged` is what currently counts: the reservation while live, the actual usage once settled, 0 once
    expired (until a late settle records the truth).
    """

    bucket: int
    month: str
    reserved: int
    charged: int
    input_estimate: int
    lease_until: float
    keep_until: float
    status: Status
    request_key: str | None = None  # the client's requestId: a second admit with it is a duplicate


@dataclass(frozen=True, slots=True)
class MeterState:
    """Everything the meter knows about one user: a snapshot of the user's DynamoDB item."""

    buckets: Mapping[int, int] = field(default_factory=dict)
    months: Mapping[str, int] = field(default_factory=dict)
    entries: Mapping[str, Entry] = field(default_factory=dict)
    override: Limits | None = None
    expired_total: int = 0
    overshoot_total: int = 0
    version: int = 0  # 0: no item stored yet


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to `admit`. Remaining budgets are after this decision (after the reservation if admitted)."""

    admitted: bool
    reservation_id: str | None
    granted_output_tokens: int
    reserved_tokens: int
    reason: RefusalReason | None
    retry_after_s: float | None
    window_remaining: int
    month_remaining: int
    limits: Limits
    expired_reservations: int = 0  # leases found expired while deciding (for the ExpiredReservations metric)
    # Set when the request key was already admitted: nothing reserved, and this is the earlier reservation;
    # `duplicate_answered` when that one is settled (answered), not still in flight.
    duplicate_of: str | None = None
    duplicate_answered: bool = False


@dataclass(frozen=True, slots=True)
class Settlement:
    """The answer to `settle`.

    status: `settled` (normal), `duplicate` (already settled: nothing changed), `expired` (lease had run out:
    usage recorded anyway), `unknown` (never seen: usage recorded and remembered), `stale` (admitted longer
    ago than its lease and no longer held: nothing recorded, so a duplicate can never count twice).
    """

    status: Literal["settled", "duplicate", "expired", "unknown", "stale"]
    charged_tokens: int
    overshoot_tokens: int  # actual usage beyond the reservation (e.g. input larger than estimated)
    input_overshoot_tokens: int  # actual input beyond the admission's input estimate
    expired_reservations: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    window_used: int
    month_used: int
    window_remaining: int
    month_remaining: int
    reserved: int
    limits: Limits


# --- time ------------------------------------------------------------------------------------------------


def bucket_of(t: float) -> int:
    return math.floor(t / WINDOW_RESOLUTION_S)


def bucket_exit(bucket: int, limits: Limits) -> int:
    """The first instant at which a bucket no longer counts against the window."""
    return window_exit(bucket, limits.window_buckets)


def window_exit(bucket: int, window_buckets: int) -> int:
    """The first instant at which what was charged to `bucket` leaves a window of `window_buckets` (the meter's
    and the team budgets' windows both)."""
    return (bucket + window_buckets + 1) * WINDOW_RESOLUTION_S


def month_key(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m")


def next_month_start(t: float) -> float:
    d = datetime.fromtimestamp(t, UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def previous_month_key(t: float) -> str:
    d = datetime.fromtimestamp(t, UTC)
    year, month = (d.year - 1, 12) if d.month == 1 else (d.year, d.month - 1)
    return f"{year:04d}-{month:02d}"


# --- reservation ids ---------------------------------------------------------------------------------------

# The id carries what a settle needs to build its single conditional update without reading first:
# the admission bucket and month, the reserved amount and the input estimate.
_RID = re.compile(
    r"^r1\.(?P<bucket>\d{1,15})\.(?P<month>\d{4}-\d{2})\.(?P<reserved>\d{1,12})\.(?P<input>\d{1,12})"
    r"\.(?P<nonce>[0-9a-f]{8,32})$"
)


@dataclass(frozen=True, slots=True)
class ReservationRef:
    bucket: int
    month: str
    reserved: int
    input_estimate: int


def format_reservation_id(ref: ReservationRef, nonce: str) -> str:
    return f"r1.{ref.bucket}.{ref.month}.{ref.reserved}.{ref.input_estimate}.{nonce}"


def parse_reservation_id(reservation_id: object) -> ReservationRef:
    if not isinstance(reservation_id, str) or not (m := _RID.match(reservation_id)):
        raise InvalidReservationIdError(f"not a reservation id issued by this meter: {reservation_id!r}")
    return ReservationRef(int(m["bucket"]), m["month"], int(m["reserved"]), int(m["input"]))


# --- validation ----------------------------------------------------------------------------------------------


def check_token_count(name: str, value: object, *, positive: bool = False) -> int:
    if not _is_int(value) or value < (1 if positive else 0):  # type: ignore[operator]
        kind = "a positive" if positive else "a non-negative"
        raise InvalidTokenCountError(f"{name} must be {kind} integer, got {value!r}")
    return value  # type: ignore[return-value]


# --- views -------------------------------------------------------------------------------------------------


def effective_limits(state: MeterState, tier_limits: Limits) -> Limits:
    """A per-user override, when stored, takes precedence over the tier's limits; an override without a USD month
    keeps the tier's (setting a user's tokens does not lift the tier's spending cap)."""
    return overridden(state.override, tier_limits)


def overridden(override: Limits | None, tier_limits: Limits) -> Limits:
    """The limits under an override (None: the tier's); a USD month the override lacks is the tier's."""
    if override is None:
        return tier_limits
    return override if override.monthly_usd is not None else replace(override, monthly_usd=tier_limits.monthly_usd)


def window_used(state: MeterState, limits: Limits, now: float) -> int:
    return max(0, sum(v for b, v in state.buckets.items() if now < bucket_exit(b, limits)))


def month_used(state: MeterState, now: float) -> int:
    return max(0, state.months.get(month_key(now), 0))


def expire_leases(state: MeterState, now: float) -> tuple[MeterState, int]:
    """Release the charge of every live entry whose lease has run out."""
    expired = [rid for rid, e in state.entries.items() if e.status == "live" and now >= e.lease_until]
    if not expired:
        return state, 0
    buckets, months, entries = dict(state.buckets), dict(state.months), dict(state.entries)
    for rid in expired:
        e = entries[rid]
        buckets[e.bucket] = buckets.get(e.bucket, 0) - e.charged
        months[e.month] = months.get(e.month, 0) - e.charged
        entries[rid] = replace(e, charged=0, status="expired")
    new = replace(
        state, buckets=buckets, months=months, entries=entries, expired_total=state.expired_total + len(expired)
    )
    return new, len(expired)


def usage(state: MeterState, tier_limits: Limits, now: float) -> Usage:
    limits = effective_limits(state, tier_limits)
    state, _ = expire_leases(state, now)
    w, m = window_used(state, limits, now), month_used(state, now)
    reserved = sum(e.charged for e in state.entries.values() if e.status == "live")
    return Usage(
        window_used=w,
        month_used=m,
        window_remaining=max(0, limits.window_tokens - w),
        month_remaining=max(0, limits.monthly_tokens - m),
        reserved=reserved,
        limits=limits,
    )


# --- admit ---------------------------------------------------------------------------------------------------


def admit(
    state: MeterState,
    tier_limits: Limits,
    input_tokens: int,
    max_output_tokens: int,
    now: float,
    new_nonce: Callable[[], str],
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    grace_seconds: float = DEFAULT_LEASE_SECONDS,
    request_key: str | None = None,
) -> tuple[Decision, MeterState | None]:
    """Reserve `input + granted_output` if at least the minimum output fits; otherwise refuse (no new state).

    `request_key` (the client's requestId) makes admission idempotent for as long as the entry is remembered
    (its lease, and once settled until its bucket's end plus a lease): a key already held answers a decision
    with `duplicate_of` set, reserves nothing and writes nothing.
    """
    check_token_count("input_tokens", input_tokens)
    check_token_count("max_output_tokens", max_output_tokens, positive=True)
    limits = effective_limits(state, tier_limits)
    state, n_expired = expire_leases(state, now)
    window_left = limits.window_tokens - window_used(state, limits, now)
    month_left = limits.monthly_tokens - month_used(state, now)
    granted = min(max_output_tokens, window_left - input_tokens, month_left - input_tokens)

    held = held_entries(state, now)

    def not_admitted(
        reason: RefusalReason | None, retry: float | None, duplicate_of: str | None = None, answered: bool = False
    ) -> tuple[Decision, None]:
        decision = Decision(
            admitted=False,
            reservation_id=None,
            granted_output_tokens=0,
            reserved_tokens=0,
            reason=reason,
            retry_after_s=retry,
            window_remaining=max(0, window_left),
            month_remaining=max(0, month_left),
            limits=limits,
            expired_reservations=n_expired,
            duplicate_of=duplicate_of,
            duplicate_answered=answered,
        )
        return decision, None

    if request_key is not None:
        # Only a request in flight or answered is a duplicate: one whose lease expired was never answered.
        earlier = next((rid for rid, e in held.items() if e.request_key == request_key and e.status != "expired"),
                       None)  # fmt: skip
        if earlier is not None:
            return not_admitted(None, None, duplicate_of=earlier, answered=held[earlier].status == "settled")
    if granted < _min_output(limits, max_output_tokens):
        return not_admitted(*_refusal(state, limits, input_tokens, max_output_tokens, now))
    if len(held) >= MAX_ENTRIES:
        # Too many admissions still remembered: the item would outgrow DynamoDB's 400 KB. Retry when the
        # oldest is forgotten (tiny requests from one user, many per second, are the only way here).
        return not_admitted("window", _delay_until(now, min(_forgotten_at(e) for e in held.values())))

    reserved = input_tokens + granted
    bucket, month = bucket_of(now), month_key(now)
    rid = format_reservation_id(ReservationRef(bucket, month, reserved, input_tokens), new_nonce())
    lease_until = now + lease_seconds
    entries = dict(state.entries)
    entries[rid] = Entry(
        bucket=bucket,
        month=month,
        reserved=reserved,
        charged=reserved,
        input_estimate=input_tokens,
        lease_until=lease_until,
        keep_until=lease_until + grace_seconds,
        status="live",
        request_key=request_key,
    )
    buckets, months = dict(state.buckets), dict(state.months)
    buckets[bucket] = buckets.get(bucket, 0) + reserved
    months[month] = months.get(month, 0) + reserved
    new_state = prune(replace(state, buckets=buckets, months=months, entries=entries), limits, now)
    decision = Decision(
        admitted=True,
        reservation_id=rid,
        granted_output_tokens=granted,
        reserved_tokens=reserved,
        reason=None,
        retry_after_s=None,
        window_remaining=max(0, window_left - reserved),
        month_remaining=max(0, month_left - reserved),
        limits=limits,
        expired_reservations=n_expired,
    )
    return decision, new_state


def held_entries(state: MeterState, now: float) -> dict[str, Entry]:
    """The entries the user's item still carries at `now` (what a write would store after pruning)."""
    return {r: e for r, e in state.entries.items() if e.status == "live" or now < e.keep_until}


def _forgotten_at(entry: Entry) -> float:
    return entry.lease_until if entry.status == "live" else entry.keep_until


def _min_output(limits: Limits, max_output_tokens: int) -> int:
    # A caller asking for fewer tokens than the tier minimum is served if what it asked for fits.
    return min(limits.min_output_tokens, max_output_tokens)


def _refusal(
    state: MeterState, limits: Limits, input_tokens: int, max_output_tokens: int, now: float
) -> tuple[RefusalReason, float | None]:
    """Which limit refuses, and exactly how long until the same request would be admitted.

    Usage only changes at known instants (a bucket leaving the window, a lease running out, a new month), so
    the earliest fit is the first of those instants at which both limits leave room. None: never fits.
    """
    need = input_tokens + _min_output(limits, max_output_tokens)
    if need > limits.monthly_tokens:
        return "monthly", None
    if need > limits.window_tokens:
        return "window", None

    def window_fits(s: MeterState, t: float) -> bool:
        return window_used(s, limits, t) + need <= limits.window_tokens

    def month_fits(s: MeterState, t: float) -> bool:
        return month_used(s, t) + need <= limits.monthly_tokens

    reason: RefusalReason = "window" if month_fits(state, now) else "monthly"
    instants: set[float] = {next_month_start(now)}
    instants.update(exit_t for b in state.buckets if (exit_t := bucket_exit(b, limits)) > now)
    instants.update(e.lease_until for e in state.entries.values() if e.status == "live" and e.lease_until > now)
    for t in sorted(instants):
        at_t, _ = expire_leases(state, t)
        if window_fits(at_t, t) and month_fits(at_t, t):
            return reason, _delay_until(now, t)
    # Unreachable: once the month rolls over and every bucket has left the window, `need` fits.
    raise AssertionError("no instant found at which the request fits")


def _delay_until(now: float, t: float) -> float:
    """The smallest float delay d with now + d >= t (so retrying after exactly d is never too early)."""
    d = t - now
    while now + d < t:
        d = math.nextafter(d, math.inf)
    return d


# --- settle ---------------------------------------------------------------------------------------------------


def settled_keep_until(ref: ReservationRef, lease_seconds: float) -> float:
    """Until when a settled entry is remembered: the end of its lease, counted from the end of its bucket."""
    return (ref.bucket + 1) * WINDOW_RESOLUTION_S + lease_seconds


@dataclass(frozen=True, slots=True)
class LiveSettlement:
    """The change settling a live reservation makes: shared by the core and the adapter's one-call update."""

    delta: int  # added to the admission bucket and month
    charged: int
    overshoot: int
    input_overshoot: int


def live_settlement(ref: ReservationRef, input_tokens: int, output_tokens: int) -> LiveSettlement:
    actual = input_tokens + output_tokens
    return LiveSettlement(
        delta=actual - ref.reserved,
        charged=actual,
        overshoot=max(0, actual - ref.reserved),
        input_overshoot=max(0, input_tokens - ref.input_estimate),
    )


def settle(
    state: MeterState,
    reservation_id: str,
    input_tokens: int,
    output_tokens: int,
    now: float,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    forget_request_key: bool = False,
) -> tuple[Settlement, MeterState | None]:
    """Replace a reservation's charge with the actual usage. Returns no new state when nothing changes.

    `forget_request_key`: the request was never answered (a release), so its key may be admitted again."""
    ref = parse_reservation_id(reservation_id)
    check_token_count("input_tokens", input_tokens)
    check_token_count("output_tokens", output_tokens)
    state, n_expired = expire_leases(state, now)
    entry = state.entries.get(reservation_id)
    if entry is not None and entry.status != "live" and now >= entry.keep_until:
        entry = None  # a tombstone past its time is as good as pruned, whether or not a write pruned it yet
    if entry is None and now >= ref.bucket * WINDOW_RESOLUTION_S + lease_seconds:
        # Older than any settled tombstone: it may have been settled already, so recording could count it twice.
        return Settlement("stale", 0, 0, 0), None
    if entry is not None and entry.status == "settled":
        # Nothing to write: leases found expired here are written (and counted) by the next admission.
        return Settlement("duplicate", entry.charged, 0, 0), None

    if entry is None:  # never seen (or long forgotten): record the truth, remember the id
        status: Literal["settled", "expired", "unknown"] = "unknown"
        entry = Entry(
            bucket=ref.bucket,
            month=ref.month,
            reserved=ref.reserved,
            charged=0,
            input_estimate=ref.input_estimate,
            lease_until=now,
            keep_until=now,
            status="expired",
        )
    else:
        status = "settled" if entry.status == "live" else "expired"

    change = live_settlement(ref, input_tokens, output_tokens)
    if status != "settled":
        # Its reservation no longer held budget when this usage arrived: all of it is beyond the limit's reach.
        change = replace(change, overshoot=change.charged)
    delta = change.charged - entry.charged
    buckets, months, entries = dict(state.buckets), dict(state.months), dict(state.entries)
    buckets[entry.bucket] = buckets.get(entry.bucket, 0) + delta
    months[entry.month] = months.get(entry.month, 0) + delta
    entries[reservation_id] = replace(
        entry,
        charged=change.charged,
        status="settled",
        keep_until=settled_keep_until(ref, lease_seconds),
        request_key=None if forget_request_key else entry.request_key,
    )
    new_state = replace(
        state,
        buckets=buckets,
        months=months,
        entries=entries,
        overshoot_total=state.overshoot_total + change.overshoot,
    )
    return Settlement(status, change.charged, change.overshoot, change.input_overshoot, n_expired), new_state


# --- housekeeping ---------------------------------------------------------------------------------------------


def prune(state: MeterState, limits: Limits, now: float) -> MeterState:
    """Drop what can no longer matter: buckets out of the window, months before the previous one, old tombstones."""
    keep_months = {month_key(now), previous_month_key(now)}
    return replace(
        state,
        buckets={b: v for b, v in state.buckets.items() if now < bucket_exit(b, limits) and v != 0},
        months={m: v for m, v in state.months.items() if m in keep_months or m > month_key(now)},
        entries=held_entries(state, now),
    )


def item_ttl(state: MeterState, now: float) -> int | None:
    """When DynamoDB may delete the user's item: well after its current month, never while an override exists."""
    if state.override is not None:
        return None
    return int(next_month_start(now)) + 35 * 86_400
