"""The request path end to end on real protocol peers: gatekeeper -> worker -> Bedrock emulator -> AppSync receiver.

DynamoDB is moto's server, Bedrock is the event-stream emulator, AppSync's /event is the SigV4-verifying
receiver. The only stand-in is the asynchronous Lambda invoke: jobs are collected and the test runs the worker.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aigw.emulators.appsync_receiver import AppSyncReceiver
from aigw.emulators.bedrock import BedrockEmulator, default_answer
from runtime import cache as cache_module
from runtime import handlers, observability, protocol, streams
from runtime.appsync_publish import EventPublisher
from runtime.bedrock import ModelClient
from runtime.cache import AnswerCache
from runtime.config import RuntimeConfig
from runtime.gatekeeper import Gatekeeper
from runtime.metering import Limits, Meter, table_spec
from runtime.worker import Worker
from tests.runtime.test_appsync_publish import RejectingReceiver, rejecting
from tests.support import Clock

SUB = "3f1c2a9e-0b7d-4d7e-9a51-2c8f6e1d4b00"
OTHER = "9a8b7c6d-1111-2222-3333-444455556666"
MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
BIG_MODEL = "anthropic.claude-sonnet-4-20250514-v1:0"
CREDS = Credentials("AKIDWORKER", "worker-secret")


class Gateway:
    """Everything a request touches, wired as in Lambda but with local peers."""

    def __init__(self, dynamodb: Any, receiver: AppSyncReceiver, bedrock: BedrockEmulator) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.dynamodb = dynamodb
        self.calls: Counter[str] = Counter()
        dynamodb.meta.events.register("before-call.dynamodb.*", lambda model, **_: self.calls.update([model.name]))
        specs = {"metering": table_spec, "cache": cache_module.table_spec, "streams": streams.table_spec}
        for name, spec in specs.items():
            dynamodb.create_table(**spec(f"{name}-{suffix}"))
        self.config = RuntimeConfig(
            metering_table=f"metering-{suffix}",
            cache_table=f"cache-{suffix}",
            streams_table=f"streams-{suffix}",
            appsync_http_endpoint=receiver.endpoint_url,
            worker_function_name="worker",
            default_tier="free",
            flush_interval_ms=50,
            max_messages=6,
            max_message_chars=2_000,
            max_total_chars=6_000,
            tiers=[
                {"name": "free", "precedence": 10, "windowTokens": 4_000, "monthlyTokens": 50_000,
                 "maxOutputTokens": 512, "models": [MODEL]},
                {"name": "pro", "precedence": 1, "windowTokens": 40_000, "monthlyTokens": 500_000,
                 "maxOutputTokens": 2_048, "models": [MODEL, BIG_MODEL]},
            ],
        )
        self.clock = Clock()
        self.meter = Meter(self.config.metering_table, client=dynamodb, clock=self.clock)
        self.cache = AnswerCache(self.config.cache_table, client=dynamodb, clock=self.clock)
        self.publisher = EventPublisher(receiver.endpoint_url, "us-east-1", credentials=CREDS)
        self.jobs: list[protocol.WorkerJob] = []
        self.journal = streams.Journal(f"streams-{suffix}", dynamodb, clock=self.clock)
        self.gatekeeper = Gatekeeper(
            self.config, self.meter, self.cache, self.jobs.append, self.publisher.publish, clock=self.clock,
            journal=self.journal,
        )
        bedrock_client = boto3.client(
            "bedrock-runtime", endpoint_url=bedrock.endpoint_url, region_name="us-east-1",
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )
        self.model = ModelClient(bedrock_client, sleep=lambda _: None)
        self.worker = Worker(
            self.config, self.meter, self.model, self.publisher.publish, clock=self.clock, journal=self.journal
        )
        self.receiver = receiver
        self.bedrock = bedrock

    def publish(self, payload: Any, *, sub: str = SUB, channel: str | None = None, groups: list[str] | None = None,
                event_id: str = "e1") -> list[dict[str, Any]]:
        identity = {"sub": sub, "username": "user", "groups": groups, "claims": {}}
        return self.gatekeeper.on_publish(identity, channel or f"/chat/{sub}", [{"id": event_id, "payload": payload}])

    def run_jobs(self) -> None:
        while self.jobs:
            self.worker.handle(self.jobs.pop(0))

    def events(self, channel_prefix: str = f"/responses/{SUB}") -> list[dict[str, Any]]:
        return [e for p in self.receiver.received if p["channel"].startswith(channel_prefix) for e in p["events"]]

    def publishes(self) -> list[dict[str, Any]]:
        return list(self.receiver.received)


def ask(text: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"text": text}]}], **extra}


def test_an_admitted_request_streams_start_deltas_end_and_settles(gateway: Gateway) -> None:
    [answer] = gateway.publish(ask(requestId="req-1", conversationId="conv-1"))
    assert answer == {"id": "e1", "payload": {"requestId": "req-1", "status": "accepted"}}
    [job] = gateway.jobs
    assert job.channel == f"/responses/{SUB}/conv-1" and job.granted_output_tokens == 512
    gateway.run_jobs()
    events = gateway.events()
    assert events[0]["type"] == "start" and events[-1]["type"] == "end"
    assert all(e["requestId"] == "req-1" and e["conversationId"] == "conv-1" for e in events)
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert text and text == default_answer(gateway.bedrock.requests[-1]["body"])
    end = events[-1]
    assert end["usage"]["output"] > 0 and end["cached"] is False
    usage = gateway.meter.usage(SUB, gateway.config.tier("free").limits)
    assert usage.reserved == 0 and usage.month_used == end["usage"]["input"] + end["usage"]["output"]
    assert end["remaining"] == {"window": 4_000 - usage.window_used, "month": 50_000 - usage.month_used}


def test_max_tokens_sent_to_bedrock_is_the_granted_output(gateway: Gateway) -> None:
    # Use up most of the window so the grant is smaller than what was asked.
    d = gateway.meter.admit(SUB, gateway.config.tier("free").limits, input_tokens=0, max_output_tokens=3_700)
    assert d.admitted
    gateway.publish(ask(maxTokens=500))
    [job] = gateway.jobs
    assert job.granted_output_tokens < 500
    gateway.run_jobs()
    assert gateway.bedrock.requests[-1]["body"]["inferenceConfig"]["maxTokens"] == job.granted_output_tokens
    end = gateway.events()[-1]
    assert end["usage"]["output"] <= job.granted_output_tokens


def test_deltas_are_coalesced_into_few_publishes_of_at_most_five_events(gateway: Gateway) -> None:
    gateway.bedrock.answer = lambda body: " ".join(f"word{i}" for i in range(400))
    gateway.publish(ask(maxTokens=500))
    gateway.run_jobs()
    publishes = gateway.publishes()
    deltas = sum(1 for p in publishes for e in p["events"] if e["type"] == "delta")
    assert all(1 <= len(p["events"]) <= 5 for p in publishes)
    assert len(publishes) <= 3  # 400 tokens, one connection: not one publish per token
    assert deltas < 400
    assert gateway.publisher.connections_opened == 1


def test_tier_comes_from_the_strongest_group_and_models_are_allow_listed(gateway: Gateway) -> None:
    [denied] = gateway.publish(ask(modelId=BIG_MODEL))
    assert denied["error"].startswith("model_not_allowed")
    assert denied["error"].endswith(f"the free tier; it offers {MODEL} (leave modelId out for {MODEL})")
    [accepted] = gateway.publish(ask(modelId=BIG_MODEL), groups=["free", "pro"])
    assert "payload" in accepted
    assert gateway.jobs[-1].tier == "pro" and gateway.jobs[-1].model_id == BIG_MODEL
    assert gateway.events()[-1]["code"] == "model_not_allowed"


def test_window_refusal_answers_with_error_and_publishes_retry_after(gateway: Gateway) -> None:
    limits = gateway.config.tier("free").limits
    gateway.meter.admit(SUB, limits, input_tokens=0, max_output_tokens=3_990)
    before = gateway.meter.usage(SUB, limits)
    gateway.calls.clear()
    [answer] = gateway.publish(ask(requestId="req-9"))
    assert answer["error"].startswith("rate_limited")
    assert gateway.calls["PutItem"] == 0 and gateway.jobs == []
    [error] = [e for e in gateway.events() if e["type"] == "error"]
    assert error["code"] == "rate_limited" and error["requestId"] == "req-9"
    assert 0 < error["retryAfterSeconds"] <= 610
    assert error["remaining"] == {"window": before.window_remaining, "month": before.month_remaining}


def test_monthly_refusal_is_quota_exhausted(gateway: Gateway) -> None:
    gateway.meter.set_override(SUB, Limits(window_tokens=50_000, monthly_tokens=1_000))
    gateway.meter.admit(SUB, gateway.config.tier("free").limits, input_tokens=0, max_output_tokens=990)
    [answer] = gateway.publish(ask())
    assert answer["error"].startswith("quota_exhausted")
    error = gateway.events()[-1]
    assert error["code"] == "quota_exhausted" and error["retryAfterSeconds"] > 600


@pytest.mark.parametrize(
    ("channel", "sub"),
    [
        (f"/chat/{OTHER}", SUB),  # someone else's channel
        ("/chat/*", SUB),  # wildcard
        (f"/responses/{SUB}", SUB),  # users may not publish answers
        ("/chat", SUB),  # no user segment
        (f"/chat/{SUB}", ""),  # no identity
    ],
)
def test_publishing_where_one_may_not_is_forbidden(gateway: Gateway, channel: str, sub: str) -> None:
    gateway.calls.clear()
    [answer] = gateway.publish(ask(), channel=channel, sub=sub)
    assert answer["error"].startswith("forbidden")
    assert gateway.jobs == [] and gateway.bedrock.requests == []
    assert set(gateway.calls) == set()  # neither the meter nor the cache was touched


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
            st.sampled_from(["messages", "role", "content", "text", "maxTokens", "modelId", "x", "requestId"]),
            inner, max_size=4),
        max_leaves=12,
    )
)
def test_arbitrary_payloads_never_escape_and_invalid_ones_meter_nothing(gateway: Gateway, payload: Any) -> None:
    gateway.calls.clear()
    gateway.jobs.clear()
    [answer] = gateway.publish(payload)
    assert set(answer) in ({"id", "payload"}, {"id", "error"})
    if "error" in answer:
        assert answer["error"].split(":")[0] in ("invalid_request", "model_not_allowed")
        assert gateway.calls["PutItem"] == 0 and gateway.calls["UpdateItem"] == 0 and gateway.jobs == []


def test_a_cached_answer_streams_as_deltas_marked_cached_and_costs_nothing(gateway: Gateway) -> None:
    answer = "Paris is the capital of France. " * 20
    gateway.cache.put("What is the capital of France?", MODEL, answer)
    gateway.publish(ask("what is the capital of france"))
    [job] = gateway.jobs
    assert job.cached_answer == answer and job.reservation_id is None
    gateway.run_jobs()
    events = gateway.events()
    assert events[0]["cached"] is True and events[-1]["cached"] is True
    assert "".join(e["text"] for e in events if e["type"] == "delta") == answer
    assert gateway.bedrock.requests == []
    assert gateway.meter.usage(SUB, gateway.config.tier("free").limits).month_used == 0


@pytest.mark.parametrize(
    ("fault", "kwargs", "code", "charges_something"),
    [
        ("throttle", {}, "model_throttled", False),
        ("validation", {"message": "secret upstream detail"}, "model_error", False),
        ("mid_stream", {"after_deltas": 3, "message": "secret upstream detail"}, "model_error", True),
    ],
)
def test_every_fault_settles_and_ends_with_a_typed_error(
    gateway: Gateway, fault: str, kwargs: dict, code: str, charges_something: bool
) -> None:
    for _ in range(5 if fault == "throttle" else 1):  # throttling past the retry budget
        gateway.bedrock.inject_fault(fault, **kwargs)
    gateway.publish(ask())
    gateway.run_jobs()
    events = gateway.events()
    error = events[-1]
    assert error["type"] == "error" and error["code"] == code
    assert "secret" not in json.dumps(events)
    usage = gateway.meter.usage(SUB, gateway.config.tier("free").limits)
    assert usage.reserved == 0  # settled, not left to the lease
    assert (usage.month_used > 0) == charges_something


def test_a_stream_without_usage_is_charged_a_conservative_count(gateway: Gateway) -> None:
    gateway.bedrock.inject_fault("no_metadata")
    gateway.publish(ask())
    [job] = gateway.jobs
    gateway.run_jobs()
    end = gateway.events()[-1]
    text = "".join(e["text"] for e in gateway.events() if e["type"] == "delta")
    assert end["type"] == "end"
    assert end["usage"] == {"input": job.input_estimate, "output": protocol.estimate_output_tokens(text)}
    assert gateway.meter.usage(SUB, gateway.config.tier("free").limits).reserved == 0


def test_usage_records_and_emf_metrics_are_emitted(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    gateway.publish(ask())
    gateway.run_jobs()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [usage] = [line["usage"] for line in lines if line.get("record_type") == "usage"]
    assert usage["outcome"] == "completed" and usage["model_id"] == MODEL and usage["user_id"] == SUB
    assert usage["ttft_ms"] is not None and usage["output_tokens"] > 0
    emf = [line for line in lines if "_aws" in line]
    names = {m["Name"] for blob in emf for d in blob["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert {"InputTokens", "OutputTokens", "TimeToFirstTokenMs", "ResponseLatencyMs"} <= names
    assert all(blob["model_id"] == MODEL for blob in emf)
    assert not any("capital of France" in json.dumps(line) for line in lines)  # prompts stay out of logs


def test_subscribe_handler_allows_own_channels_only() -> None:
    def subscribe(path: str, sub: str) -> Any:
        event = {
            "identity": {"sub": sub, "groups": None},
            "request": {"headers": {}, "domainName": None},
            "info": {"channel": {"path": path, "segments": path.strip("/").split("/")},
                     "channelNamespace": {"name": path.strip("/").split("/")[0]}, "operation": "SUBSCRIBE"},
            "events": None, "outErrors": [],
        }
        return handlers.subscribe_handler(event, None)

    assert subscribe(f"/responses/{SUB}", SUB) is None
    assert subscribe(f"/responses/{SUB}/*", SUB) is None
    for path in (f"/responses/{OTHER}", "/responses/*", f"/chat/{SUB}"):
        with pytest.raises(Exception) as raised:
            subscribe(path, SUB)
        assert type(raised.value).__name__ == "UnauthorizedException"


def test_expired_leases_found_at_admission_reach_the_metric(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    limits = gateway.config.tier("free").limits
    gateway.meter.admit(SUB, limits, input_tokens=10, max_output_tokens=100)  # a worker that crashed
    gateway.clock.t += gateway.config.lease_seconds
    gateway.publish(ask())
    gateway.run_jobs()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    expired = [blob["ExpiredReservations"] for blob in lines if "ExpiredReservations" in blob]
    assert expired == [[1.0]]  # one EMF blob; Powertools writes metric values as lists


def test_handlers_route_appsync_events_to_the_gatekeeper_and_worker(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "gatekeeper", lambda: gateway.gatekeeper)
    monkeypatch.setattr(handlers, "worker", lambda: gateway.worker)
    event = {
        "identity": {"sub": SUB, "username": "user", "groups": None, "claims": {}},
        "request": {"headers": {}, "domainName": None},
        "info": {"channel": {"path": f"/chat/{SUB}", "segments": ["chat", SUB]},
                 "channelNamespace": {"name": "chat"}, "operation": "PUBLISH"},
        "events": [{"id": "a", "payload": ask(requestId="req-a")}, {"id": "b", "payload": {"messages": "nope"}}],
        "outErrors": [],
    }
    response = handlers.gatekeeper_handler(event, None)
    assert response["events"][0] == {"id": "a", "payload": {"requestId": "req-a", "status": "accepted"}}
    assert response["events"][1]["id"] == "b" and response["events"][1]["error"].startswith("invalid_request")
    [job] = gateway.jobs
    handlers.worker_handler(json.loads(job.model_dump_json()), None)  # the asynchronous invoke's payload
    assert gateway.events()[-1]["type"] == "end"


def test_with_log_prompts_on_the_prompt_and_answer_are_logged(
    dynamodb: Any, receiver: AppSyncReceiver, bedrock: BedrockEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = Gateway(dynamodb, receiver, bedrock)
    gateway.worker.config = gateway.config.model_copy(update={"log_prompts": True})
    gateway.publish(ask("Tell me about Lyon"))
    gateway.run_jobs()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [prompt] = [line for line in lines if line.get("record_type") == "prompt"]
    text = "".join(e["text"] for e in gateway.events() if e["type"] == "delta")
    assert "Tell me about Lyon" in json.dumps(prompt) and text in json.dumps(prompt)


# -- events AppSync refuses (200 with failed[]): retried once, then logged, counted and answered


@pytest.fixture
def emf_clean() -> Any:
    observability.metrics.clear_metrics()
    yield
    observability.metrics.clear_metrics()


def refusing_gateway(
    dynamodb: Any, bedrock: BedrockEmulator, monkeypatch: pytest.MonkeyPatch, reject: Any
) -> tuple[Gateway, RejectingReceiver]:
    """A gateway whose AppSync refuses the events `reject` picks, publishing as in Lambda (`handlers.publish`)."""
    receiver = RejectingReceiver(reject, {CREDS.access_key: CREDS.secret_key}).start()
    gateway = Gateway(dynamodb, receiver, bedrock)
    monkeypatch.setattr(handlers, "publisher", lambda: gateway.publisher)
    monkeypatch.setattr(handlers, "config", lambda: gateway.config)
    gateway.worker.publish = handlers.publish
    return gateway, receiver


def emitted(out: str) -> tuple[list[dict[str, Any]], list[float]]:
    """The JSON lines of `out`, and every PublishFailures value its EMF blobs carry."""
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return lines, [value for line in lines if "_aws" in line for value in line.get("PublishFailures", [])]


def counting_settles(monkeypatch: pytest.MonkeyPatch, meter: Meter) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    real = meter.settle

    def settle(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(meter, "settle", settle)
    return calls


def answered_through_refusals(
    dynamodb: Any, bedrock: BedrockEmulator, monkeypatch: pytest.MonkeyPatch, reject: Any, request: dict[str, Any],
    *, journaled: bool = True,
) -> tuple[Gateway, RejectingReceiver, list[dict[str, Any]]]:
    """`request` published and answered through a `refusing_gateway`; also every `settle` the worker made."""
    gateway, receiver = refusing_gateway(dynamodb, bedrock, monkeypatch, reject)
    if not journaled:
        gateway.worker.journal = None
    settles = counting_settles(monkeypatch, gateway.meter)
    try:
        gateway.publish(request)
        gateway.run_jobs()
    finally:
        receiver.stop()
    return gateway, receiver, settles


def test_handlers_publish_retries_only_the_refused_events_once_then_logs_and_counts_them(
    dynamodb: Any, bedrock: BedrockEmulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    emf_clean: None,
) -> None:
    _, receiver = refusing_gateway(dynamodb, bedrock, monkeypatch, rejecting("delta", 2))
    channel = f"/responses/{SUB}/conv-1"
    events = [{"type": "start", "requestId": "req-7"}, {"type": "delta", "requestId": "req-7", "text": "secret text"},
              {"type": "end", "requestId": "req-7"}]
    try:
        result = handlers.publish(channel, events)
    finally:
        receiver.stop()
    assert receiver.bodies == [events, [events[1]]]  # one retry, of the refused event alone
    assert [entry["index"] for entry in result.failed] == [1]
    lines, failures = emitted(capsys.readouterr().out)
    assert failures == [1.0]
    [logged] = [line for line in lines if line.get("failed_codes")]
    assert logged["channel"] == channel and logged["request_id"] == "req-7" and logged["failed_codes"] == [500]
    assert "secret text" not in json.dumps(lines) and "simulated" not in json.dumps(lines)  # logPrompts is off


def test_a_refused_start_is_published_again_alone_and_the_answer_completes(
    dynamodb: Any, bedrock: BedrockEmulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    emf_clean: None,
) -> None:
    gateway, receiver, _ = answered_through_refusals(dynamodb, bedrock, monkeypatch, rejecting("start", 1), ask())
    first, retry = receiver.bodies[0], receiver.bodies[1]
    assert [e["type"] for e in first] == ["start", "delta"] and [e["type"] for e in retry] == ["start"]
    events = gateway.events()
    assert {e["type"] for e in events} == {"start", "delta", "end"} and events[-1]["type"] == "end"
    _, failures = emitted(capsys.readouterr().out)
    assert failures == []  # delivered on the retry: nothing to count


def test_an_end_refused_twice_is_followed_by_a_typed_error_and_settled_once_with_bedrocks_usage(
    dynamodb: Any, bedrock: BedrockEmulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    emf_clean: None,
) -> None:
    gateway, receiver, settles = answered_through_refusals(
        dynamodb, bedrock, monkeypatch, rejecting("end", 2), ask(requestId="req-end")
    )
    refused_ends = [e for body in receiver.bodies for e in body if e["type"] == "end"]
    assert len(refused_ends) == 2  # the first attempt and one retry, no more
    events = gateway.events()
    assert "end" not in {e["type"] for e in events}
    error = events[-1]
    assert error["type"] == "error" and error["code"] == "internal" and error["requestId"] == "req-end"
    assert error["remaining"] == refused_ends[0]["remaining"]
    # The user is charged what Bedrock reported it generated, settled exactly once.
    usage = refused_ends[0]["usage"]
    assert len(settles) == 1 and settles[0] == {"input_tokens": usage["input"], "output_tokens": usage["output"]}
    metered = gateway.meter.usage(SUB, gateway.config.tier("free").limits)
    assert metered.reserved == 0 and metered.month_used == usage["input"] + usage["output"]
    _, failures = emitted(capsys.readouterr().out)
    assert failures == [1.0]


def test_a_delta_refused_twice_and_not_journaled_ends_the_answer_with_an_error_not_an_end(
    dynamodb: Any, bedrock: BedrockEmulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    emf_clean: None,
) -> None:
    gateway, _, settles = answered_through_refusals(
        dynamodb, bedrock, monkeypatch, rejecting("delta", 2), ask(), journaled=False
    )
    events = gateway.events()
    # Part of the text is missing: the client must not keep it as a complete answer (nor send it back as history).
    assert events[-1]["type"] == "error" and events[-1]["code"] == "internal"
    assert "end" not in {e["type"] for e in events}
    assert len(settles) == 1 and settles[0]["output_tokens"] > 0  # the generation happened: it is charged
    assert gateway.meter.usage(SUB, gateway.config.tier("free").limits).reserved == 0
    _, failures = emitted(capsys.readouterr().out)
    assert failures == [1.0]


# -- a hand-over to the worker that fails after admission


def test_a_failed_worker_invoke_releases_the_reservation_and_the_record_names_it(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def invoke(job: protocol.WorkerJob) -> None:
        raise ConnectionError("Lambda Invoke: connection reset")

    monkeypatch.setattr(gateway.gatekeeper, "invoke_worker", invoke)
    limits = gateway.config.tier("free").limits
    for attempt in range(8):  # the client retries, as told; 8 × 512 granted would exceed the 4,000 window
        [answer] = gateway.publish(ask(requestId=f"req-{attempt}"))
        assert answer["error"].startswith("internal: ")
        usage = gateway.meter.usage(SUB, limits)
        assert usage.reserved == 0 and usage.window_used == 0 and usage.month_used == 0
    error = gateway.events()[-1]
    assert error["type"] == "error" and error["code"] == "internal"
    assert error["remaining"] == {"window": 4_000, "month": 50_000}  # what is really left, after the release
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    records = [line["usage"] for line in lines if line.get("record_type") == "usage"]
    assert len(records) == 8 and all(r["outcome"] == "error" and r["error_code"] == "internal" for r in records)
    assert all(r["reserved_tokens"] > 0 and r["model_id"] == MODEL for r in records)
    # After all that, a request with a working hand-over is admitted at once.
    monkeypatch.undo()
    [answer] = gateway.publish(ask(requestId="req-ok"))
    assert answer["payload"]["status"] == "accepted"


def test_a_release_that_fails_too_still_answers_and_leaves_the_lease_to_release(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.gatekeeper, "invoke_worker", lambda job: (_ for _ in ()).throw(OSError("gone")))
    monkeypatch.setattr(gateway.meter, "settle", lambda *a, **k: (_ for _ in ()).throw(OSError("dynamodb gone")))
    [answer] = gateway.publish(ask(requestId="req-x"))
    assert answer["error"].startswith("internal: ")
    error = gateway.events()[-1]
    assert error["code"] == "internal" and "remaining" not in error  # unknown, so not claimed
    assert gateway.meter.usage(SUB, gateway.config.tier("free").limits).reserved > 0  # until the lease expires


# -- requestId as the idempotency key


def test_a_retried_request_id_is_accepted_again_without_a_second_model_call_or_charge(gateway: Gateway) -> None:
    request = ask(requestId="req-twice", conversationId="conv-1")
    [first] = gateway.publish(request)

    def metering_item() -> Any:
        return gateway.dynamodb.scan(TableName=gateway.config.metering_table)["Items"]

    before = metering_item()
    gateway.calls.clear()
    [again] = gateway.publish(request)  # e.g. the client's retry after its publish timed out
    assert first == again == {"id": "e1", "payload": {"requestId": "req-twice", "status": "accepted"}}
    assert len(gateway.jobs) == 1  # one worker invoke
    assert metering_item() == before and gateway.calls["PutItem"] == 0  # the duplicate wrote nothing
    gateway.run_jobs()
    end = gateway.events()[-1]
    assert end["type"] == "end" and len(gateway.bedrock.requests) == 1
    usage = gateway.meter.usage(SUB, gateway.config.tier("free").limits)
    assert usage.month_used == end["usage"]["input"] + end["usage"]["output"]  # charged once
    # Answered and settled, it is still remembered: a late retry is not a new request either.
    [late] = gateway.publish(request)
    assert late["payload"]["status"] == "accepted" and gateway.jobs == []
    assert gateway.meter.usage(SUB, gateway.config.tier("free").limits).month_used == usage.month_used
    # A new requestId is a new request.
    [fresh] = gateway.publish(ask(requestId="req-new", conversationId="conv-1"))
    assert fresh["payload"]["status"] == "accepted" and len(gateway.jobs) == 1


def test_the_same_request_id_from_another_user_is_theirs(gateway: Gateway) -> None:
    gateway.publish(ask(requestId="req-shared"))
    gateway.publish(ask(requestId="req-shared"), sub=OTHER, channel=f"/chat/{OTHER}")
    assert [job.user_id for job in gateway.jobs] == [SUB, OTHER]


def test_a_retry_with_the_same_request_id_after_a_failed_invoke_is_a_new_request(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client was told "internal: please retry": retrying the same publish must work, not be a duplicate.
    monkeypatch.setattr(gateway.gatekeeper, "invoke_worker", lambda job: (_ for _ in ()).throw(OSError("gone")))
    [failed] = gateway.publish(ask(requestId="req-retry"))
    assert failed["error"].startswith("internal: ")
    monkeypatch.undo()
    [retried] = gateway.publish(ask(requestId="req-retry"))
    assert retried["payload"]["status"] == "accepted" and [job.request_id for job in gateway.jobs] == ["req-retry"]
    gateway.run_jobs()
    assert gateway.events()[-1]["type"] == "end"


def test_a_duplicate_of_an_answered_request_replays_its_answer_from_the_journal(gateway: Gateway) -> None:
    request = ask(requestId="req-done", conversationId="conv-1")
    gateway.publish(request)
    gateway.run_jobs()
    first = gateway.events()
    [again] = gateway.publish(request)
    assert again["payload"]["status"] == "accepted" and gateway.jobs == []
    replayed = gateway.events()[len(first):]
    assert replayed[0] == first[0] and replayed[-1] == first[-1]  # start .. end, the same seqs
    assert "".join(e["text"] for e in replayed if e["type"] == "delta") == "".join(
        e["text"] for e in first if e["type"] == "delta")
    assert len(gateway.bedrock.requests) == 1  # replayed, not asked again


def test_a_duplicate_of_an_answered_request_whose_journal_is_gone_is_told_so(gateway: Gateway) -> None:
    request = ask(requestId="req-done", conversationId="conv-1")
    gateway.publish(request)
    gateway.run_jobs()
    gateway.dynamodb.delete_item(TableName=gateway.config.streams_table,
                                 Key={"pk": {"S": f"stream#{SUB}#req-done"}})
    [again] = gateway.publish(request)
    assert again["payload"]["status"] == "accepted" and gateway.jobs == []
    told = gateway.events()[-1]
    assert told["type"] == "error" and told["code"] == "invalid_request" and told["requestId"] == "req-done"
    assert "new requestId" in told["message"] and told["conversationId"] == "conv-1"
    assert told["remaining"]["window"] < 4_000  # the real budget, after the one charge


def test_a_duplicate_of_a_request_in_flight_publishes_nothing(gateway: Gateway) -> None:
    request = ask(requestId="req-flying")
    gateway.publish(request)
    before = len(gateway.events())
    [again] = gateway.publish(request)
    assert again["payload"]["status"] == "accepted" and len(gateway.events()) == before and len(gateway.jobs) == 1
