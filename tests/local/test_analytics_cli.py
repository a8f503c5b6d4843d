"""The local analytics path: `UsageSink` (the local Firehose) and `aigw analytics` over what it writes."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from aigw.cli import app
from aigw.usage_sink import LineTee, UsageSink
from analytics.local import list_queries
from components.models import price_of
from runtime.observability import UsageRecord

ROOT = Path(__file__).resolve().parents[2]
STACK_FILE = ROOT / "Pulumi.dev.yaml"
NOVA = "amazon.nova-lite-v1:0"
HAIKU = "us.anthropic.claude-haiku-5-5"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def usage_line(ts: str, model_id: str, input_tokens: int, output_tokens: int, *, outcome: str = "completed",
               user_id: str = "user-1") -> str:
    record = UsageRecord(
        ts=ts, request_id=str(uuid.uuid4()), user_id=user_id, tier="pro", model_id=model_id, outcome=outcome,
        input_tokens=input_tokens, output_tokens=output_tokens, cache_hit=outcome == "cached", stack="local-test",
    )
    return json.dumps({"level": "INFO", "message": "usage", "record_type": "usage", "usage": record.as_dict()},
                      separators=(",", ":"))


# Known requests: nova 1000+500 and 2000+1000 on Feb 5 (plus a cached answer), haiku 100+50 on Feb 6.
KNOWN = [
    usage_line("2026-02-05T10:00:00.000Z", NOVA, 1000, 500),
    usage_line("2026-02-05T11:30:00.000Z", NOVA, 2000, 1000, user_id="user-2"),
    usage_line("2026-02-05T12:00:00.000Z", NOVA, 10, 20, outcome="cached"),
    usage_line("2026-02-06T09:00:00.000Z", HAIKU, 100, 50),
]
NOISE = [
    '{"level":"INFO","message":"published","request_id":"r1"}',  # another log line
    '{"_aws":{"Timestamp":1,"CloudWatchMetrics":[]},"InputTokens":3}',  # an EMF blob
    "plain text, not JSON",
    '{"record_type":"usage","usage":{"outcome":"completed"',  # truncated
    '{"record_type":"usage","usage":{"request_id":"x","outcome":"nonsense"}}',  # breaks the contract
    '{"record_type":"usage","usage":"not a dict"}',
    "[1, 2, 3]",
    "",
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    sink = UsageSink(tmp_path / "analytics", flush_every_s=60).start()
    for line in NOISE[:3] + KNOWN + NOISE[3:]:
        sink.offer(line)
    sink.close()
    assert sink.records_written == len(KNOWN)
    return tmp_path / "analytics"


def aigw(*args: str) -> Any:
    result = CliRunner().invoke(app, ["analytics", *args], env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


# -- UsageSink


def test_sink_keeps_only_usage_lines_and_counts_the_bad_ones(tmp_path: Path) -> None:
    sink = UsageSink(tmp_path, flush_every_s=60)
    for line in NOISE:
        sink.offer(line)  # never raises
    sink.offer(None)  # type: ignore[arg-type]
    assert sink.pending == 0
    assert sink.bad_lines == 5  # plain text, truncated, contract broken, usage not a dict, None
    assert sink.ignored_lines == 3  # the log line, the EMF blob, a JSON list
    sink.offer(KNOWN[0])
    assert sink.pending == 1
    sink.close()
    assert sink.pending == 0 and sink.records_written == 1


def test_sink_writes_parquet_at_zero_padded_partitions_on_close(data_dir: Path) -> None:
    files = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*.parquet"))
    assert [f.rsplit("/", 1)[0] for f in files] == [
        "usage/year=2026/month=02/day=05",
        "usage/year=2026/month=02/day=06",
    ]
    assert all(f.rsplit("/", 1)[1].startswith("part-") for f in files)
    day5 = pq.read_table(next((data_dir / "usage/year=2026/month=02/day=05").glob("*.parquet")))
    assert day5.num_rows == 3 and sorted(day5.column("input_tokens").to_pylist()) == [10, 1000, 2000]


def test_sink_flushes_in_the_background_and_when_the_buffer_is_full(tmp_path: Path) -> None:
    timed = UsageSink(tmp_path / "timed", flush_every_s=0.05).start()
    timed.offer(KNOWN[0])
    for _ in range(100):
        if timed.records_written:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert timed.records_written == 1, "flushed by the thread, before close"
    timed.close()

    full = UsageSink(tmp_path / "full", flush_every_s=60, max_buffer=2).start()
    full.offer(KNOWN[0])
    full.offer(KNOWN[1])
    for _ in range(100):
        if full.records_written:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert full.records_written == 2
    full.close()


def test_line_tee_writes_through_and_offers_each_complete_line(tmp_path: Path) -> None:
    target, seen = io.StringIO(), []
    tee = LineTee(target, seen.append)
    tee.write('{"a":')
    tee.write("1}\nsecond")
    assert seen == ['{"a":1}']
    tee.write(" line\n")
    assert seen == ['{"a":1}', "second line"]
    assert target.getvalue() == '{"a":1}\nsecond line\n'
    LineTee(io.StringIO(), lambda line: 1 / 0).write("boom\n")  # a failing callback never breaks the writer


# -- aigw analytics


def test_list_prints_every_query_with_its_description() -> None:
    result = aigw("--list")
    assert result.exit_code == 0
    for name in list_queries():
        assert name in result.stdout
    assert "What each model cost in dollars" in result.stdout
    # Descriptions are for the reader of a report; how the placeholders are filled is a note in the SQL.
    for internal in ("placeholder", "CTE", "render_query", "run_query", "model_prices", "tier_limits"):
        assert internal not in result.stdout, internal


def test_unknown_query_exits_2_with_the_list(data_dir: Path) -> None:
    result = aigw("no_such_query", "--data", str(data_dir), "--stack-file", str(STACK_FILE))
    assert result.exit_code == 2
    assert "no_such_query" in result.stderr and "tokens_by_model_per_day" in result.stderr


def test_tokens_query_over_the_sinks_data_as_json(data_dir: Path) -> None:
    result = aigw("tokens_by_model_per_day", "--data", str(data_dir), "--stack-file", str(STACK_FILE),
                  "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"usage_date": "2026-02-05", "model_id": NOVA, "requests": 3, "input_tokens": 3010, "output_tokens": 1520,
         "total_tokens": 4530},
        {"usage_date": "2026-02-06", "model_id": HAIKU, "requests": 1, "input_tokens": 100, "output_tokens": 50,
         "total_tokens": 150},
    ]
    since = aigw("tokens_by_model_per_day", "--data", str(data_dir), "--stack-file", str(STACK_FILE),
                 "--format", "json", "--since", "2026-02-06")
    assert [r["model_id"] for r in json.loads(since.stdout)] == [HAIKU]


def test_cost_query_uses_the_stack_files_model_prices(data_dir: Path) -> None:
    result = aigw("cost_by_model", "--data", str(data_dir), "--stack-file", str(STACK_FILE), "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {r["model_id"]: r for r in json.loads(result.stdout)}
    # The model catalog's us-east-1 prices (USD per 1M; the query rounds to 6 places); cached answers are left out.
    nova, haiku = (price_of(model, "us-east-1") for model in (NOVA, HAIKU))
    assert nova is not None and haiku is not None
    assert rows[NOVA]["requests"] == 2
    assert rows[NOVA]["estimated_cost_usd"] == pytest.approx((3000 * nova.input + 1500 * nova.output) / 1e6, abs=1e-6)
    assert rows[HAIKU]["estimated_cost_usd"] == pytest.approx((100 * haiku.input + 50 * haiku.output) / 1e6, abs=1e-6)


def test_table_and_csv_formats(data_dir: Path) -> None:
    table = aigw("tokens_by_model_per_day", "--data", str(data_dir), "--stack-file", str(STACK_FILE))
    assert table.exit_code == 0 and "4,530" in table.stdout and NOVA in table.stdout
    csv_out = aigw("tokens_by_model_per_day", "--data", str(data_dir), "--stack-file", str(STACK_FILE),
                   "--format", "csv")
    assert csv_out.stdout.splitlines()[0] == "usage_date,model_id,requests,input_tokens,output_tokens,total_tokens"
    assert csv_out.stdout.splitlines()[1] == f"2026-02-05,{NOVA},3,3010,1520,4530"


@pytest.mark.parametrize("query", ["tokens_by_model_per_day", "cost_by_model"])  # a line chart, a bar chart
def test_plot_writes_a_png(data_dir: Path, tmp_path: Path, query: str) -> None:
    out = tmp_path / f"{query}.png"
    result = aigw(query, "--data", str(data_dir), "--stack-file", str(STACK_FILE), "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_of_an_empty_result_still_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "empty.png"
    result = aigw("cost_by_user", "--data", str(tmp_path / "nothing"), "--stack-file", str(STACK_FILE),
                  "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG_SIGNATURE


# -- end to end: a chat request through an in-process gateway, its usage line teed to the sink


def test_a_chat_request_reaches_the_tokens_query(tmp_path: Path) -> None:
    from aigw.client import Endpoints, EventsClient, sign_in
    from aigw.dev import Ports, running
    from components.settings import StackSettings

    settings = StackSettings.from_stack_file(STACK_FILE)
    analytics_dir = tmp_path / "analytics"
    stack = f"an{uuid.uuid4().hex[:8]}"
    with running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0.0, stack=stack, analytics_dir=analytics_dir) as gw:
        assert gw.usage_sink is not None
        saved, sys.stdout = sys.stdout, LineTee(sys.stdout, gw.usage_sink.offer)
        try:
            info, c = gw.info, gw.info["cognito"]
            ends = Endpoints(info["http"], info["realtime"], info["region"], c["endpoint"], c["user_pool_id"],
                             c["client_id"])
            demo = info["demo_user"]
            token = sign_in(ends, demo["username"], demo["password"])["IdToken"]

            async def ask() -> list[dict[str, Any]]:
                async with EventsClient(ends, token) as client:
                    messages = [{"role": "user", "content": [{"text": "Hello, analytics"}]}]
                    return [e async for e in client.ask(messages, conversation_id="conv-analytics")]

            events = asyncio.run(ask())
            # The worker logs the usage record after the end event; give it a moment to reach the sink.
            for _ in range(100):
                if gw.usage_sink.pending or gw.usage_sink.records_written:
                    break
                asyncio.run(asyncio.sleep(0.02))
        finally:
            sys.stdout = saved
    end = events[-1]
    assert end["type"] == "end"
    result = aigw("tokens_by_model_per_day", "--data", str(analytics_dir), "--stack-file", str(STACK_FILE),
                  "--format", "json")
    rows = json.loads(result.stdout)
    assert len(rows) == 1 and rows[0]["requests"] == 1
    assert rows[0]["output_tokens"] == end["usage"]["output"]
    assert rows[0]["input_tokens"] == end["usage"]["input"]


# -- how results are shown


def test_money_is_dollars_and_cents_and_no_number_is_scientific(data_dir: Path) -> None:
    table = aigw("cost_by_model", "--data", str(data_dir), "--stack-file", str(STACK_FILE))
    assert table.exit_code == 0, table.output
    assert "$" in table.stdout and "e-0" not in table.stdout and "e+0" not in table.stdout


def test_a_bare_plot_name_goes_under_aigw_plots_not_the_working_directory(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = aigw("cost_by_model", "--data", str(data_dir), "--stack-file", str(STACK_FILE), "--plot", "cost.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / ".aigw" / "plots" / "cost.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not (tmp_path / "cost.png").exists()


def test_users_show_by_email_when_the_local_pool_knows_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aigw import cli
    from aigw.dev import Ports, running
    from analytics.local import write_parquet
    from components.settings import StackSettings

    settings = StackSettings.from_stack_file(STACK_FILE)
    with running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0.0, stack=f"em{uuid.uuid4().hex[:6]}") as gw:
        demo, pool = gw.info["demo_user"], gw.info["cognito"]
        cognito = boto3.client("cognito-idp", region_name=gw.info["region"], endpoint_url=pool["endpoint"])
        attributes = cognito.admin_get_user(UserPoolId=pool["user_pool_id"], Username=demo["username"])
        sub = next(a["Value"] for a in attributes["UserAttributes"] if a["Name"] == "sub")
        monkeypatch.setattr(cli, "DEFAULT_DEV_JSON", gw.write_info(tmp_path / "state"))
        record = json.loads(usage_line("2026-02-05T10:00:00.000Z", NOVA, 10, 20, user_id=sub))["usage"]
        stranger = json.loads(usage_line("2026-02-05T10:00:01.000Z", NOVA, 1, 2, user_id="gone-user"))["usage"]
        write_parquet([record, stranger], tmp_path / "data")
        result = aigw("cost_by_user", "--data", str(tmp_path / "data"), "--stack-file", str(STACK_FILE),
                      "--format", "json")
    assert result.exit_code == 0, result.output
    users = {r["user_id"]: r["user"] for r in json.loads(result.stdout)}
    assert users == {sub: demo["username"], "gone-user": None}


def test_without_a_reachable_pool_users_stay_ids_and_stderr_says_why(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aigw import cli

    monkeypatch.setattr(cli, "DEFAULT_DEV_JSON", tmp_path / "no-dev.json")
    result = aigw("cost_by_user", "--data", str(data_dir), "--stack-file", str(STACK_FILE), "--format", "json")
    assert result.exit_code == 0, result.output
    assert {r["user"] for r in json.loads(result.stdout)} == {None}
    assert "users shown by id" in result.stderr
