"""The Meter's public API against moto's DynamoDB server over HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.errors import (
    InvalidLimitsError,
    InvalidReservationIdError,
    InvalidTokenCountError,
    InvalidUserIdError,
)
from runtime.metering import TTL_ATTRIBUTE, Limits, Meter, table_spec
from tests.support import MID_MONTH as T0
from tests.support import CallCounter, Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def meter(dynamodb: Any, meter_table: str, clock: Clock) -> Meter:
    return Meter(meter_table, client=dynamodb, clock=clock)


def test_table_spec_is_what_create_table_takes_and_names_the_key(dynamodb: Any) -> None:
    spec = table_spec("spec-check")
    assert spec["BillingMode"] == "PAY_PER_REQUEST"
    dynamodb.create_table(**spec)
    described = dynamodb.describe_table(TableName="spec-check")["Table"]
    assert described["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]


def test_the_documented_example_works(meter: Meter) -> None:
    limits = Limits(window_tokens=20_000, monthly_tokens=1_000_000)
    d = meter.admit("user-1", limits, input_tokens=1200, max_output_tokens=2048)
    assert d.admitted and d.reservation_id and d.granted_output_tokens == 2048 and d.reason is None
    assert d.window_remaining == 20_000 - 3248 and d.month_remaining == 1_000_000 - 3248
    s = meter.settle("user-1", d.reservation_id, input_tokens=1180, output_tokens=640)
    assert s.status == "settled" and s.charged_tokens == 1820 and s.overshoot_tokens == 0
    u = meter.usage("user-1", limits)
    assert (u.window_used, u.month_used, u.reserved) == (1820, 1820, 0)
    assert (u.window_remaining, u.month_remaining) == (20_000 - 1820, 1_000_000 - 1820)


def test_round_trips_admit_two_refuse_one_settle_one(calls: CallCounter, meter: Meter) -> None:
    counter = calls
    counter.take()  # table set-up is not the meter's
    limits = Limits(window_tokens=1_000, monthly_tokens=100_000)
    d = meter.admit("rt", limits, input_tokens=100, max_output_tokens=900)
    assert counter.take() == {"GetItem": 1, "PutItem": 1}
    refused = meter.admit("rt", limits, input_tokens=100, max_output_tokens=900)
    assert not refused.admitted and counter.take() == {"GetItem": 1}
    meter.settle("rt", d.reservation_id, input_tokens=100, output_tokens=10)
    assert counter.take() == {"UpdateItem": 1}


def test_refusal_says_which_limit_when_to_retry_and_what_remains(meter: Meter, clock: Clock) -> None:
    limits = Limits(window_tokens=1_000, monthly_tokens=100_000)
    d = meter.admit("r", limits, input_tokens=100, max_output_tokens=900)
    meter.settle("r", d.reservation_id, input_tokens=100, output_tokens=900)
    clock.t += 5
    refused = meter.admit("r", limits, input_tokens=100, max_output_tokens=900)
    assert not refused.admitted and refused.reason == "window"
    assert refused.window_remaining == 0 and refused.month_remaining == 99_000
    clock.t += refused.retry_after_s - 0.01
    assert not meter.admit("r", limits, input_tokens=100, max_output_tokens=900).admitted
    clock.t += 0.01
    assert meter.admit("r", limits, input_tokens=100, max_output_tokens=900).admitted


def test_settle_is_idempotent_and_overshoot_is_reported(meter: Meter) -> None:
    limits = Limits(window_tokens=10_000, monthly_tokens=100_000)
    d = meter.admit("o", limits, input_tokens=100, max_output_tokens=200)
    first = meter.settle("o", d.reservation_id, input_tokens=180, output_tokens=200)
    assert first.overshoot_tokens == 80 and first.input_overshoot_tokens == 80
    again = meter.settle("o", d.reservation_id, input_tokens=180, output_tokens=200)
    assert again.status == "duplicate"
    assert meter.usage("o", limits).month_used == 380  # the truth, once


def test_crashed_worker_lease_expires_and_a_late_settle_still_records(meter: Meter, clock: Clock) -> None:
    limits = Limits(window_tokens=1_000, monthly_tokens=100_000)
    d = meter.admit("c", limits, input_tokens=100, max_output_tokens=900)
    clock.t += 900
    u = meter.usage("c", limits)
    assert u.reserved == 0 and u.month_used == 0
    after = meter.admit("c", limits, input_tokens=10, max_output_tokens=50)
    assert after.admitted and after.expired_reservations == 1
    late = meter.settle("c", d.reservation_id, input_tokens=100, output_tokens=300)
    assert late.status == "expired" and late.overshoot_tokens == 400
    assert meter.usage("c", limits).month_used == 400 + 60


def test_unknown_but_well_formed_reservation_records_usage_once(meter: Meter) -> None:
    limits = Limits(window_tokens=1_000, monthly_tokens=100_000)
    rid = meter.admit("a", limits, input_tokens=1, max_output_tokens=10).reservation_id
    first = meter.settle("b", rid, input_tokens=5, output_tokens=5)  # another user's id: unknown to b
    second = meter.settle("b", rid, input_tokens=5, output_tokens=5)
    assert (first.status, second.status) == ("unknown", "duplicate")
    assert meter.usage("b", limits).month_used == 10


def test_override_takes_precedence_and_clearing_restores_the_tier(meter: Meter) -> None:
    tier = Limits(window_tokens=1_000, monthly_tokens=10_000)
    vip = Limits(window_tokens=50_000, monthly_tokens=500_000)
    assert meter.effective_limits("v", tier) == tier
    meter.set_override("v", vip)
    assert meter.effective_limits("v", tier) == vip
    assert meter.admit("v", tier, input_tokens=10_000, max_output_tokens=4_000).granted_output_tokens == 4_000
    meter.clear_override("v")
    assert meter.effective_limits("v", tier) == tier
    assert not meter.admit("v", tier, input_tokens=100, max_output_tokens=100).admitted


def test_items_carry_the_ttl_attribute_except_while_an_override_exists(dynamodb: Any, meter: Meter) -> None:
    limits = Limits(window_tokens=1_000, monthly_tokens=10_000)
    meter.admit("t", limits, input_tokens=1, max_output_tokens=10)
    key = {"pk": {"S": "user#t"}}
    item = dynamodb.get_item(TableName=meter.table_name, Key=key)["Item"]
    assert int(item[TTL_ATTRIBUTE]["N"]) > T0 + 30 * 86_400
    meter.set_override("t", limits)
    assert TTL_ATTRIBUTE not in dynamodb.get_item(TableName=meter.table_name, Key=key)["Item"]


@pytest.mark.parametrize(
    "call",
    [
        lambda m, L: m.admit("", L, input_tokens=1, max_output_tokens=1),
        lambda m, L: m.admit("x" * 257, L, input_tokens=1, max_output_tokens=1),
        lambda m, L: m.admit(None, L, input_tokens=1, max_output_tokens=1),
        lambda m, L: m.admit("u", L, input_tokens=-1, max_output_tokens=1),
        lambda m, L: m.admit("u", L, input_tokens=1.5, max_output_tokens=1),
        lambda m, L: m.admit("u", L, input_tokens=1, max_output_tokens=0),
        lambda m, L: m.admit("u", {"window_tokens": 1}, input_tokens=1, max_output_tokens=1),
        lambda m, L: m.settle("u", "not-a-reservation", input_tokens=1, output_tokens=1),
        lambda m, L: m.settle("u", "r1.1.2026-11.5.5.deadbeef", input_tokens=-3, output_tokens=1),
        lambda m, L: m.set_override("u", None),
    ],
)
def test_bad_input_raises_a_typed_value_error_before_any_write(calls: CallCounter, meter: Meter, call: Any) -> None:
    counter = calls
    with pytest.raises(ValueError) as raised:
        call(meter, Limits(1_000, 10_000))
    assert isinstance(
        raised.value, InvalidUserIdError | InvalidTokenCountError | InvalidReservationIdError | InvalidLimitsError
    )
    assert not any(op in counter.calls for op in ("PutItem", "UpdateItem"))


def test_a_single_user_can_use_at_least_95_percent_of_the_window(meter: Meter, clock: Clock) -> None:
    limits = Limits(window_tokens=50_000, monthly_tokens=10_000_000)
    used = 0
    while (d := meter.admit("w", limits, input_tokens=300, max_output_tokens=1_000)).admitted:
        meter.settle("w", d.reservation_id, input_tokens=300, output_tokens=d.granted_output_tokens)
        used += 300 + d.granted_output_tokens
        clock.t += 1
    assert used >= 0.95 * limits.window_tokens


def test_a_single_user_can_use_at_least_95_percent_of_the_month(meter: Meter, clock: Clock) -> None:
    limits = Limits(window_tokens=20_000, monthly_tokens=200_000)
    used = 0
    while True:
        d = meter.admit("m", limits, input_tokens=500, max_output_tokens=2_000)
        if d.admitted:
            meter.settle("m", d.reservation_id, input_tokens=500, output_tokens=d.granted_output_tokens)
            used += 500 + d.granted_output_tokens
            clock.t += 2
        elif d.reason == "window":
            clock.t += d.retry_after_s  # wait exactly as told
        else:
            break
    assert d.reason == "monthly"
    assert used >= 0.95 * limits.monthly_tokens


def test_a_settled_admission_is_kept_as_a_small_tombstone_that_still_makes_its_retry_a_duplicate(
    dynamodb: Any, meter_table: str, meter: Meter, calls: CallCounter
) -> None:
    limits = Limits(window_tokens=100_000, monthly_tokens=1_000_000)
    d = meter.admit("t", limits, input_tokens=800, max_output_tokens=512, request_key="req-7")
    released = meter.admit("t", limits, input_tokens=800, max_output_tokens=512, request_key="req-8")
    calls.take()
    meter.settle("t", d.reservation_id, input_tokens=790, output_tokens=300)
    meter.release("t", released.reservation_id)
    assert calls.take() == {"UpdateItem": 2}  # both on the one-call fast path
    item = dynamodb.get_item(TableName=meter_table, Key={"pk": {"S": "user#t"}})["Item"]
    # Nothing the reservation id already says is stored again; a release forgets the request key.
    assert item["rs"]["M"] == {}
    assert item["dn"]["M"] == {
        d.reservation_id: {"L": [{"N": "1090"}, {"S": "req-7"}]},
        released.reservation_id: {"L": [{"N": "0"}]},
    }
    again = meter.admit("t", limits, input_tokens=800, max_output_tokens=512, request_key="req-7")
    assert again.duplicate_of == d.reservation_id
    assert meter.settle("t", d.reservation_id, input_tokens=790, output_tokens=300).status == "duplicate"
    retried = meter.admit("t", limits, input_tokens=800, max_output_tokens=512, request_key="req-8")
    assert retried.admitted and retried.duplicate_of is None
    assert meter.usage("t", limits).month_used == 1090 + retried.reserved_tokens


def test_items_written_before_tombstones_existed_are_still_read_and_settled(
    dynamodb: Any, meter_table: str, meter: Meter, clock: Clock
) -> None:
    """The earlier layout kept every entry as a full map in `rs`: a deployed table's items keep working."""
    limits = Limits(window_tokens=100_000, monthly_tokens=1_000_000)
    d = meter.admit("old", limits, input_tokens=100, max_output_tokens=100, request_key="old-req")
    item = dynamodb.get_item(TableName=meter_table, Key={"pk": {"S": "user#old"}})["Item"]
    entry = item["rs"]["M"][d.reservation_id]["M"]
    entry.pop("q")
    old_fields = {"b": "1", "mk": "2026-11", "rv": "200", "ie": "100"}
    entry.update({k: {"S": v} if k == "mk" else {"N": v} for k, v in old_fields.items()}, rq={"S": "old-req"})
    del item["dn"]
    dynamodb.put_item(TableName=meter_table, Item=item)
    assert meter.admit("old", limits, input_tokens=1, max_output_tokens=64, request_key="old-req").duplicate_of
    assert meter.settle("old", d.reservation_id, input_tokens=100, output_tokens=50).status == "settled"
    assert meter.usage("old", limits).month_used == 150
