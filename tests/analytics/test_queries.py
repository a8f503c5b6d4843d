"""The analytics queries over a synthetic month-boundary dataset (2026-01-31 .. 2026-02-09) with known answers.

The dataset (81 records), day i = 0..9 being 2026-01-31 + i days:

A. alice (pro) completed on HAIKU, i+1 times a day: 100 in / 50 out; the k-th of the 55 has ttft 10k, latency 20k ms.
B. bob (free) completed on NOVA once a day: 200 in / 100 out, ttft 100, latency 300.
C. bob (free) cached on NOVA on even days (5): 30 in / 40 out (left out of costs), ttft 5, latency 10.
D. refusals: day 0 carol (free) window x2 on LLAMA; day 3 dave (free) monthly on NOVA; day 5 carol (pro) monthly
   on LLAMA; day 9 alice (pro) window on HAIKU.
E. errors: days 1 and 7 bob (free) ``throttled`` on NOVA (0 tokens); day 4 erin (free) ``invalid_request`` with
   a blank model; day 8 carol (pro) ``model_error`` on LLAMA, 300 in / 20 out.
F. carol completed on LLAMA at 2026-01-31T23:59:59.999Z (free, 1000 / 500) and at 2026-02-01T00:00:00.000Z (pro,
   2000 / 1000): the month and day boundary. ttft 50, latency 60.

Tier limits: free 10 000, pro 100 000. Prices per 1k tokens: HAIKU 0.001 / 0.002, NOVA 0.0005 / 0.0015; LLAMA has
none. "This month" is February (``today=2026-02-09``).
"""

from __future__ import annotations

import re
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot

from analytics import (
    QueryNotFoundError,
    list_queries,
    load_query,
    query_header,
    render_query,
    run_query,
    write_parquet,
)
from runtime.observability import InvalidUsageRecordError

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
NOVA = "amazon.nova-lite-v1:0"
LLAMA = "meta.llama3-8b-instruct-v1:0"
TIER_LIMITS = {"free": 10_000, "pro": 100_000}
MODEL_PRICES = {HAIKU: (0.001, 0.002), NOVA: (0.0005, 0.0015)}
TODAY = date(2026, 2, 9)
FIRST_DAY = date(2026, 1, 31)
DAYS = [FIRST_DAY + timedelta(days=i) for i in range(10)]
TOTAL_RECORDS = 81
# approx_percentile (DuckDB: approx_quantile, a t-digest) may be off the exact nearest-rank value by up to this
# many milliseconds on the 55 evenly spaced HAIKU values (two ranks of ttft, one of latency).
PERCENTILE_TOLERANCE_MS = 20
TEAMS = {"alice": "platform", "carol": "research"}  # bob, dave and erin are in no team

EXPECTED_QUERIES = {
    "cache_hit_rate_by_day",
    "cost_by_model",
    "cost_by_team",
    "cost_by_user",
    "error_rate_by_code",
    "latency_by_model",
    "refusals_by_reason_and_tier",
    "tokens_by_model_per_day",
    "tokens_by_user_per_day",
    "top_users_vs_monthly_limit",
}


def _records() -> list[dict]:
    records: list[dict] = []
    seq = 0

    def add(day: date, user: str, tier: str, model: str, outcome: str, *, at: str | None = None, **fields) -> None:
        nonlocal seq
        seq += 1
        ts = at or f"{day.isoformat()}T12:{seq // 60 % 60:02d}:{seq % 60:02d}.000Z"
        records.append(
            {
                "ts": ts,
                "request_id": f"req-{seq}",
                "user_id": user,
                "tier": tier,
                "model_id": model,
                "outcome": outcome,
                "stack": "test",
                "team": TEAMS.get(user),
                **fields,
            }
        )

    k = 0
    for i, day in enumerate(DAYS):
        for _ in range(i + 1):
            k += 1
            add(
                day,
                "alice",
                "pro",
                HAIKU,
                "completed",
                input_tokens=100,
                output_tokens=50,
                ttft_ms=10 * k,
                latency_ms=20 * k,
                stop_reason="end_turn",
            )
        add(day, "bob", "free", NOVA, "completed", input_tokens=200, output_tokens=100, ttft_ms=100, latency_ms=300)
        if i % 2 == 0:
            add(
                day,
                "bob",
                "free",
                NOVA,
                "cached",
                input_tokens=30,
                output_tokens=40,
                cache_hit=True,
                ttft_ms=5,
                latency_ms=10,
            )
    add(DAYS[0], "carol", "free", LLAMA, "refused", refusal_reason="window")
    add(DAYS[0], "carol", "free", LLAMA, "refused", refusal_reason="window")
    add(DAYS[3], "dave", "free", NOVA, "refused", refusal_reason="monthly")
    add(DAYS[5], "carol", "pro", LLAMA, "refused", refusal_reason="monthly")
    add(DAYS[9], "alice", "pro", HAIKU, "refused", refusal_reason="window", at="2026-02-09T23:00:00.000Z")
    add(DAYS[1], "bob", "free", NOVA, "error", error_code="throttled")
    add(DAYS[7], "bob", "free", NOVA, "error", error_code="throttled")
    add(DAYS[4], "erin", "free", "", "error", error_code="invalid_request")
    add(DAYS[8], "carol", "pro", LLAMA, "error", error_code="model_error", input_tokens=300, output_tokens=20)
    add(
        DAYS[0],
        "carol",
        "free",
        LLAMA,
        "completed",
        at="2026-01-31T23:59:59.999Z",
        input_tokens=1000,
        output_tokens=500,
        ttft_ms=50,
        latency_ms=60,
    )
    add(
        DAYS[1],
        "carol",
        "pro",
        LLAMA,
        "completed",
        at="2026-02-01T00:00:00.000Z",
        input_tokens=2000,
        output_tokens=1000,
        ttft_ms=50,
        latency_ms=60,
    )
    assert len(records) == TOTAL_RECORDS
    return records


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sink")
    records = _records()
    # Two calls: a day may hold several part files, all read.
    write_parquet(records[:40], root)
    write_parquet(records[40:], root)
    return root


def _run(name: str, data_dir: Path, **kwargs):
    kwargs.setdefault("tier_limits", TIER_LIMITS)
    kwargs.setdefault("model_prices", MODEL_PRICES)
    kwargs.setdefault("today", TODAY)
    return run_query(name, data_dir, **kwargs)


def _d(day: int) -> date:
    return DAYS[day]


# ------------------------------------------------------------------------------------------------ files and SQL


def test_the_queries_are_listed() -> None:
    assert set(list_queries()) == EXPECTED_QUERIES


@pytest.mark.parametrize("name", sorted(EXPECTED_QUERIES))
def test_each_query_has_its_header(name: str) -> None:
    lines = load_query(name).splitlines()
    assert lines[0] == f"-- name: {name}"
    assert re.fullmatch(r"-- description: \S.*", lines[1])
    assert query_header(name)["name"] == name


@pytest.mark.parametrize("name", sorted(EXPECTED_QUERIES))
def test_each_query_transpiles_from_trino_to_duckdb(name: str) -> None:
    sql = load_query(name)
    (duck,) = sqlglot.transpile(sql, read="trino", write="duckdb", unsupported_level=sqlglot.ErrorLevel.RAISE)
    assert "usage_records" in duck
    render_query(name, tier_limits=TIER_LIMITS, model_prices=MODEL_PRICES, dialect="duckdb")


def test_an_unknown_query_raises() -> None:
    with pytest.raises(QueryNotFoundError):
        load_query("nope")


def test_render_substitutes_the_relations_for_athena() -> None:
    sql = render_query("top_users_vs_monthly_limit", tier_limits={"gold": 123_456})
    assert "'gold', 123456" in sql and "'free', 100000" not in sql
    sql = render_query("cost_by_user", model_prices=[("m.x", 0.5, 1.5)])
    assert "'m.x', 0.5, 1.5" in sql
    kept = render_query("cost_by_model")  # None keeps the file's example rows
    assert "0.00025" in kept


def test_render_fixes_today() -> None:
    sql = render_query("top_users_vs_monthly_limit", today=TODAY, dialect="duckdb")
    assert not list(sqlglot.parse_one(sql, read="duckdb").find_all(sqlglot.exp.CurrentDate))
    assert "'2026-02-09'" in sql


def test_files_sit_in_zero_padded_hive_partitions(data_dir: Path) -> None:
    folders = sorted({p.parent.relative_to(data_dir).as_posix() for p in data_dir.rglob("*.parquet")})
    assert folders == [f"usage/year={d:%Y}/month={d:%m}/day={d:%d}" for d in DAYS]
    assert (data_dir / "usage/year=2026/month=02/day=05").is_dir()
    assert (data_dir / "usage/year=2026/month=01/day=31").is_dir()
    names = [p.name for p in data_dir.rglob("*.parquet")]
    assert all(re.fullmatch(r"part-[0-9a-f-]{36}\.parquet", n) for n in names)


def test_files_are_snappy_parquet_with_the_usage_schema(data_dir: Path) -> None:
    path = next((data_dir / "usage/year=2026/month=02/day=05").glob("*.parquet"))
    meta = pq.ParquetFile(path).metadata
    assert meta.row_group(0).column(0).compression == "SNAPPY"
    schema = pq.read_schema(path)
    assert schema.field("ts").type == pa.timestamp("ms")
    assert schema.field("ttft_ms").type == pa.int32()
    assert schema.field("input_tokens").type == pa.int64()
    assert schema.field("cache_hit").type == pa.bool_()
    assert not schema.field("user_id").nullable and schema.field("error_code").nullable
    assert "year" not in schema.names  # partition values live in the path only, as Firehose writes them


def test_an_invalid_record_writes_nothing(tmp_path: Path) -> None:
    good = _records()[0]
    with pytest.raises(InvalidUsageRecordError):
        write_parquet([good, {**good, "outcome": "refused"}], tmp_path)  # refused without a reason
    with pytest.raises(InvalidUsageRecordError):
        write_parquet([{**good, "bogus": 1}], tmp_path)
    assert not list(tmp_path.rglob("*.parquet"))


def test_an_empty_sink_gives_no_rows(tmp_path: Path) -> None:
    for name in sorted(EXPECTED_QUERIES):
        columns, rows = _run(name, tmp_path)
        assert columns and rows == []


# ------------------------------------------------------------------------------------------------------ answers

DAILY_BY_USER = {
    # (day, user): (requests, input, output, total)
    (0, "alice"): (1, 100, 50, 150),
    (0, "bob"): (2, 230, 140, 370),
    (0, "carol"): (3, 1000, 500, 1500),
    (1, "alice"): (2, 200, 100, 300),
    (1, "bob"): (2, 200, 100, 300),
    (1, "carol"): (1, 2000, 1000, 3000),
    (2, "alice"): (3, 300, 150, 450),
    (2, "bob"): (2, 230, 140, 370),
    (3, "alice"): (4, 400, 200, 600),
    (3, "bob"): (1, 200, 100, 300),
    (3, "dave"): (1, 0, 0, 0),
    (4, "alice"): (5, 500, 250, 750),
    (4, "bob"): (2, 230, 140, 370),
    (4, "erin"): (1, 0, 0, 0),
    (5, "alice"): (6, 600, 300, 900),
    (5, "bob"): (1, 200, 100, 300),
    (5, "carol"): (1, 0, 0, 0),
    (6, "alice"): (7, 700, 350, 1050),
    (6, "bob"): (2, 230, 140, 370),
    (7, "alice"): (8, 800, 400, 1200),
    (7, "bob"): (2, 200, 100, 300),
    (8, "alice"): (9, 900, 450, 1350),
    (8, "bob"): (2, 230, 140, 370),
    (8, "carol"): (1, 300, 20, 320),
    (9, "alice"): (11, 1000, 500, 1500),
    (9, "bob"): (1, 200, 100, 300),
}

DAILY_BY_MODEL = {
    (0, NOVA): (2, 230, 140, 370),
    (0, HAIKU): (1, 100, 50, 150),
    (0, LLAMA): (3, 1000, 500, 1500),
    (1, NOVA): (2, 200, 100, 300),
    (1, HAIKU): (2, 200, 100, 300),
    (1, LLAMA): (1, 2000, 1000, 3000),
    (2, NOVA): (2, 230, 140, 370),
    (2, HAIKU): (3, 300, 150, 450),
    (3, NOVA): (2, 200, 100, 300),
    (3, HAIKU): (4, 400, 200, 600),
    (4, ""): (1, 0, 0, 0),
    (4, NOVA): (2, 230, 140, 370),
    (4, HAIKU): (5, 500, 250, 750),
    (5, NOVA): (1, 200, 100, 300),
    (5, HAIKU): (6, 600, 300, 900),
    (5, LLAMA): (1, 0, 0, 0),
    (6, NOVA): (2, 230, 140, 370),
    (6, HAIKU): (7, 700, 350, 1050),
    (7, NOVA): (2, 200, 100, 300),
    (7, HAIKU): (8, 800, 400, 1200),
    (8, NOVA): (2, 230, 140, 370),
    (8, HAIKU): (9, 900, 450, 1350),
    (8, LLAMA): (1, 300, 20, 320),
    (9, NOVA): (1, 200, 100, 300),
    (9, HAIKU): (11, 1000, 500, 1500),
}


def _expected_daily(table: dict) -> list[tuple]:
    return [(_d(day), key, *values) for (day, key), values in sorted(table.items())]


def test_tokens_by_user_per_day(data_dir: Path) -> None:
    columns, rows = _run("tokens_by_user_per_day", data_dir)
    assert columns == ["usage_date", "user_id", "requests", "input_tokens", "output_tokens", "total_tokens"]
    assert rows == _expected_daily(DAILY_BY_USER)


def test_tokens_by_model_per_day(data_dir: Path) -> None:
    columns, rows = _run("tokens_by_model_per_day", data_dir)
    assert columns == ["usage_date", "model_id", "requests", "input_tokens", "output_tokens", "total_tokens"]
    assert rows == _expected_daily(DAILY_BY_MODEL)


def test_since_filters_on_ts_across_the_day_boundary(data_dir: Path) -> None:
    _, rows = _run("tokens_by_user_per_day", data_dir, since="2026-02-01T00:00:00.000Z")
    assert rows == _expected_daily({k: v for k, v in DAILY_BY_USER.items() if k[0] >= 1})
    _, rows = _run("tokens_by_user_per_day", data_dir, since=datetime(2026, 1, 31, 23, 59, 59, 999000))
    assert [r for r in rows if r[0] == _d(0)] == [(_d(0), "carol", 1, 1000, 500, 1500)]


def test_latency_by_model(data_dir: Path) -> None:
    columns, rows = _run("latency_by_model", data_dir)
    assert columns == [
        "model_id",
        "requests",
        "ttft_p50_ms",
        "ttft_p95_ms",
        "ttft_p99_ms",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
    ]
    by_model = {r[0]: r[1:] for r in rows}
    assert set(by_model) == {NOVA, HAIKU, LLAMA}  # cached, refused and failed requests are left out
    assert by_model[NOVA] == (10, 100, 100, 100, 300, 300, 300)
    assert by_model[LLAMA] == (2, 50, 50, 50, 60, 60, 60)
    # HAIKU: 55 requests, ttft 10..550 and latency 20..1100 in even steps; exact nearest-rank p50/p95/p99 are
    # ranks 28, 53 and 55.
    requests, *percentiles = by_model[HAIKU]
    assert requests == 55
    expected = (280, 530, 550, 560, 1060, 1100)
    for got, want in zip(percentiles, expected, strict=True):
        assert got == pytest.approx(want, abs=PERCENTILE_TOLERANCE_MS), (percentiles, expected)


def test_cache_hit_rate_by_day(data_dir: Path) -> None:
    columns, rows = _run("cache_hit_rate_by_day", data_dir)
    assert columns == ["usage_date", "answered", "cache_hits", "hit_rate"]
    expected = [(4, 1), (4, 0), (5, 1), (5, 0), (7, 1), (7, 0), (9, 1), (9, 0), (11, 1), (11, 0)]
    assert [r[:3] for r in rows] == [(_d(i), a, h) for i, (a, h) in enumerate(expected)]
    assert [r[3] for r in rows] == pytest.approx([h / a for a, h in expected], abs=1e-12)


def test_refusals_by_reason_and_tier(data_dir: Path) -> None:
    columns, rows = _run("refusals_by_reason_and_tier", data_dir)
    assert columns == ["refusal_reason", "tier", "refusals", "users"]
    assert rows == [
        ("monthly", "free", 1, 1),
        ("monthly", "pro", 1, 1),
        ("window", "free", 2, 1),
        ("window", "pro", 1, 1),
    ]


def test_top_users_vs_monthly_limit(data_dir: Path) -> None:
    columns, rows = _run("top_users_vs_monthly_limit", data_dir)
    assert columns == [
        "user_id",
        "tier",
        "requests",
        "used_tokens",
        "monthly_tokens",
        "remaining_tokens",
        "pct_of_limit",
    ]
    # February only: carol's 2026-01-31T23:59:59.999Z answer (free tier, 1500 tokens) is last month's.
    assert [r[:6] for r in rows] == [
        ("alice", "pro", 55, 8100, 100_000, 91_900),
        ("carol", "pro", 3, 3320, 100_000, 96_680),
        ("bob", "free", 15, 2980, 10_000, 7020),
        ("dave", "free", 1, 0, 10_000, 10_000),
        ("erin", "free", 1, 0, 10_000, 10_000),
    ]
    assert [float(r[6]) for r in rows] == pytest.approx([8.1, 3.32, 29.8, 0.0, 0.0])


def test_top_users_in_january_and_an_unknown_tier(data_dir: Path) -> None:
    _, rows = _run("top_users_vs_monthly_limit", data_dir, today=date(2026, 1, 31), tier_limits={"pro": 100_000})
    assert [r[:6] for r in rows] == [
        ("carol", "free", 3, 1500, None, None),
        ("bob", "free", 2, 370, None, None),
        ("alice", "pro", 1, 150, 100_000, 99_850),
    ]
    _, rows = _run("top_users_vs_monthly_limit", data_dir, tier_limits={})
    assert {r[4] for r in rows} == {None}


def test_cost_by_model(data_dir: Path) -> None:
    columns, rows = _run("cost_by_model", data_dir)
    assert columns == ["model_id", "requests", "input_tokens", "output_tokens", "estimated_cost_usd"]
    assert [r[:4] for r in rows] == [
        (HAIKU, 56, 5500, 2750),  # 5.5 * 0.001 + 2.75 * 0.002
        (NOVA, 13, 2000, 1000),  # cached answers left out; 2 * 0.0005 + 1 * 0.0015
        ("", 1, 0, 0),
        (LLAMA, 6, 3300, 1520),  # unpriced
    ]
    assert [r[4] for r in rows[:2]] == pytest.approx([0.011, 0.0025], abs=1e-9)
    assert rows[2][4] is None and rows[3][4] is None


def test_cost_by_user(data_dir: Path) -> None:
    columns, rows = _run("cost_by_user", data_dir)
    assert columns == ["user_id", "input_tokens", "output_tokens", "estimated_cost_usd", "unpriced_tokens"]
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        ("alice", 5500, 2750, 0),
        ("bob", 2000, 1000, 0),
        ("carol", 3300, 1520, 4820),
        ("dave", 0, 0, 0),
        ("erin", 0, 0, 0),
    ]
    assert [r[3] for r in rows] == pytest.approx([0.011, 0.0025, 0, 0, 0], abs=1e-9)


def test_cost_by_team(data_dir: Path) -> None:
    columns, rows = _run("cost_by_team", data_dir)
    assert columns == ["team", "users", "input_tokens", "output_tokens", "estimated_cost_usd", "unpriced_tokens"]
    assert [(r[0], r[2], r[3], r[5]) for r in rows] == [
        ("platform", 5500, 2750, 0),
        ("(no team)", 2000, 1000, 0),
        ("research", 3300, 1520, 4820),
    ]
    assert [r[4] for r in rows] == pytest.approx([0.011, 0.0025, 0], abs=1e-9)
    assert [r[1] for r in rows] == [1, 3, 1]  # bob, dave, erin asked without a team (refusals and errors count)


def test_error_rate_by_code(data_dir: Path) -> None:
    columns, rows = _run("error_rate_by_code", data_dir)
    assert columns == ["error_code", "errors", "requests", "error_rate"]
    assert [r[:3] for r in rows] == [
        ("throttled", 2, TOTAL_RECORDS),
        ("invalid_request", 1, TOTAL_RECORDS),
        ("model_error", 1, TOTAL_RECORDS),
    ]
    assert [r[3] for r in rows] == pytest.approx([2 / 81, 1 / 81, 1 / 81], abs=1e-12)
    # Since 2026-02-05: 51 records (40 alice, 5 + 2 bob, 2 refusals, 2 errors).
    _, rows = _run("error_rate_by_code", data_dir, since=date(2026, 2, 5))
    assert rows == [("model_error", 1, 51, pytest.approx(1 / 51)), ("throttled", 1, 51, pytest.approx(1 / 51))]


def test_every_query_runs_quickly(data_dir: Path) -> None:
    started = time.monotonic()
    for name in list_queries():
        _run(name, data_dir)
    assert time.monotonic() - started < 5
