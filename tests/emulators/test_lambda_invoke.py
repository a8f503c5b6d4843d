"""The Lambda emulator is a real Invoke peer: the unmodified boto3 ``lambda`` client talks to it over HTTP."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from aigw.emulators.lambda_invoke import DEFAULT_ACCOUNT_ID, LambdaEmulator

ACCOUNT = DEFAULT_ACCOUNT_ID
ARN = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:echo"


class Recorder:
    """Functions for the emulator that record what they were called with."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[Any, Any]] = []
        self.ran = threading.Event()
        self.gate = threading.Event()

    def echo(self, event: Any, context: Any) -> Any:
        with self.lock:
            self.calls.append((event, context))
        return {"event": event, "function_name": context.function_name, "arn": context.invoked_function_arn}

    def gated(self, event: Any, context: Any) -> None:
        assert self.gate.wait(5), "the test never opened the gate"
        with self.lock:
            self.calls.append((event, context))
        self.ran.set()

    @staticmethod
    def boom(event: Any, context: Any) -> Any:
        raise ValueError(f"bad input {event['n']}")

    @staticmethod
    def none(event: Any, context: Any) -> None:
        return None

    @staticmethod
    def unserializable(event: Any, context: Any) -> Any:
        return {"when": object()}


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def emu(rec: Recorder) -> Iterator[LambdaEmulator]:
    functions = {
        "echo": rec.echo,
        "gated": rec.gated,
        "boom": rec.boom,
        "none": rec.none,
        "unserializable": rec.unserializable,
    }
    with LambdaEmulator(functions, timeouts={"echo": 30}, workers=4) as emulator:
        yield emulator


def _client(endpoint_url: str | None = None) -> Any:
    """A lambda client without retries, so each error surfaces once."""
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5)
    kwargs: dict[str, Any] = {"region_name": "us-east-1", "config": config}
    if endpoint_url is not None:
        kwargs["endpoint_url"] = endpoint_url
    return boto3.client("lambda", **kwargs)


@pytest.fixture
def client(emu: LambdaEmulator) -> Any:
    return _client(emu.endpoint_url)


def _payload(resp: dict[str, Any]) -> Any:
    return json.loads(resp["Payload"].read())


# --------------------------------------------------------------------------------------------- RequestResponse


def test_request_response_returns_the_result_and_a_context(emu: LambdaEmulator, client: Any, rec: Recorder) -> None:
    resp = client.invoke(FunctionName="echo", Payload=json.dumps({"q": "hi", "n": [1, 2]}).encode())
    assert resp["StatusCode"] == 200
    assert "FunctionError" not in resp
    assert resp["ExecutedVersion"] == "$LATEST"
    assert _payload(resp) == {"event": {"q": "hi", "n": [1, 2]}, "function_name": "echo", "arn": ARN}

    ((event, context),) = rec.calls
    assert event == {"q": "hi", "n": [1, 2]}
    assert context.aws_request_id == resp["ResponseMetadata"]["RequestId"]
    assert len(context.aws_request_id) == 36
    assert context.memory_limit_in_mb == 128
    assert 29_000 < context.get_remaining_time_in_millis() <= 30_000  # the per-function timeout
    assert (emu.completed, emu.failed, emu.pending) == (1, 0, 0)


def test_default_timeout_and_empty_payload(emu: LambdaEmulator, client: Any, rec: Recorder) -> None:
    resp = client.invoke(FunctionName="gated", InvocationType="Event")  # no Payload at all
    assert resp["StatusCode"] == 202
    rec.gate.set()
    assert emu.wait_idle(5)
    ((event, context),) = rec.calls
    assert event == {}
    assert 299_000 < context.get_remaining_time_in_millis() <= 300_000


def test_none_result_is_null(client: Any) -> None:
    resp = client.invoke(FunctionName="none", Payload=b"{}")
    assert resp["StatusCode"] == 200
    assert resp["Payload"].read() == b"null"


def test_non_object_json_payload_is_passed_through(client: Any, rec: Recorder) -> None:
    assert _payload(client.invoke(FunctionName="echo", Payload=b'"just a string"'))["event"] == "just a string"


def test_function_error_is_unhandled_with_the_runtime_error_body(emu: LambdaEmulator, client: Any) -> None:
    resp = client.invoke(FunctionName="boom", Payload=b'{"n": 7}')
    assert resp["StatusCode"] == 200
    assert resp["FunctionError"] == "Unhandled"
    body = _payload(resp)
    assert body["errorMessage"] == "bad input 7"
    assert body["errorType"] == "ValueError"
    assert body["requestId"] == resp["ResponseMetadata"]["RequestId"]
    assert any("boom" in frame for frame in body["stackTrace"])
    assert (emu.completed, emu.failed) == (0, 1)


def test_unserializable_result_is_a_marshal_error(emu: LambdaEmulator, client: Any) -> None:
    resp = client.invoke(FunctionName="unserializable", Payload=b"{}")
    assert resp["FunctionError"] == "Unhandled"
    body = _payload(resp)
    assert body["errorType"] == "Runtime.MarshalError"
    assert body["errorMessage"].startswith("Unable to marshal response")
    assert emu.failed == 1


# --------------------------------------------------------------------------------------------- Event


def test_event_answers_202_at_once_and_runs_in_the_background(emu: LambdaEmulator, client: Any, rec: Recorder) -> None:
    started = time.monotonic()
    resp = client.invoke(FunctionName="gated", InvocationType="Event", Payload=b'{"job": 1}')
    assert resp["StatusCode"] == 202
    assert resp["Payload"].read() == b""
    assert time.monotonic() - started < 1
    assert not rec.ran.is_set()  # still waiting on the gate: the answer did not wait for the function
    assert emu.pending == 1
    assert not emu.wait_idle(0.05)

    rec.gate.set()
    assert rec.ran.wait(5)
    assert emu.wait_idle(5)
    assert rec.calls[0][0] == {"job": 1}
    assert (emu.completed, emu.failed, emu.pending) == (1, 0, 0)


def test_background_exception_is_logged_counted_and_the_server_keeps_serving(
    emu: LambdaEmulator, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="aigw.emulators.lambda_invoke"):
        resp = client.invoke(FunctionName="boom", InvocationType="Event", Payload=b'{"n": 3}')
        assert resp["StatusCode"] == 202
        assert emu.wait_idle(5)
    assert (emu.completed, emu.failed) == (0, 1)
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "boom" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)

    assert _payload(client.invoke(FunctionName="echo", Payload=b'{"after": true}'))["event"] == {"after": True}
    assert (emu.completed, emu.failed) == (1, 1)


def test_hundred_event_invocations_complete_on_a_bounded_pool(rec: Recorder) -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    seen: list[int] = []

    def work(event: Any, context: Any) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1
            seen.append(event["i"])

    with LambdaEmulator({"work": work}, workers=4) as emu:
        client = _client(emu.endpoint_url)
        for i in range(100):
            assert (
                client.invoke(FunctionName="work", InvocationType="Event", Payload=b'{"i": %d}' % i)["StatusCode"]
                == 202
            )
        assert emu.wait_idle(5)
        assert (emu.completed, emu.failed, emu.pending) == (100, 0, 0)
    assert sorted(seen) == list(range(100))
    assert 1 <= peak <= 4


def test_dry_run_is_204_and_runs_nothing(emu: LambdaEmulator, client: Any, rec: Recorder) -> None:
    resp = client.invoke(FunctionName="echo", InvocationType="DryRun", Payload=b"{}")
    assert resp["StatusCode"] == 204
    assert rec.calls == []
    assert (emu.completed, emu.failed) == (0, 0)


# --------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("function_name", "qualifier", "invoked_arn"),
    [
        ("echo", None, ARN),
        ("echo:prod", None, f"{ARN}:prod"),
        ("echo", "7", f"{ARN}:7"),
        (f"{ACCOUNT}:function:echo", None, ARN),
        (f"{ACCOUNT}:function:echo:$LATEST", None, f"{ARN}:$LATEST"),
        (ARN, None, ARN),
        (f"{ARN}:live", None, f"{ARN}:live"),
        (
            "arn:aws:lambda:eu-west-1:111122223333:function:echo:3",
            None,
            "arn:aws:lambda:eu-west-1:111122223333:function:echo:3",
        ),
    ],
)
def test_names_partial_and_full_arns_and_qualifiers_resolve(
    client: Any, rec: Recorder, function_name: str, qualifier: str | None, invoked_arn: str
) -> None:
    kwargs = {"Qualifier": qualifier} if qualifier else {}
    resp = client.invoke(FunctionName=function_name, Payload=b"{}", **kwargs)
    assert resp["StatusCode"] == 200
    assert _payload(resp)["arn"] == invoked_arn
    ((_, context),) = rec.calls
    assert context.function_name == "echo"
    assert resp["ExecutedVersion"] == (invoked_arn.rsplit(":", 1)[1] if invoked_arn[-1].isdigit() else "$LATEST")


def test_arn_region_follows_the_client(emu: LambdaEmulator) -> None:
    client = boto3.client("lambda", endpoint_url=emu.endpoint_url, region_name="eu-central-1")
    resp = client.invoke(FunctionName="echo", Payload=b"{}")
    assert _payload(resp)["arn"] == f"arn:aws:lambda:eu-central-1:{ACCOUNT}:function:echo"


@pytest.mark.parametrize("function_name", ["missing", f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:missing:1"])
def test_unknown_function_is_resource_not_found(emu: LambdaEmulator, client: Any, function_name: str) -> None:
    with pytest.raises(ClientError) as info:
        client.invoke(FunctionName=function_name, InvocationType="Event", Payload=b"{}")
    err = info.value.response
    assert err["Error"]["Code"] == "ResourceNotFoundException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "Function not found: arn:aws:lambda:us-east-1" in err["Error"]["Message"]
    assert emu.pending == 0


def test_malformed_name_and_conflicting_qualifier_are_rejected(client: Any) -> None:
    with pytest.raises(ClientError) as info:
        client.invoke(FunctionName="a:b:c:d", Payload=b"{}")
    assert info.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as info:
        client.invoke(FunctionName="echo:1", Qualifier="2", Payload=b"{}")
    assert info.value.response["Error"]["Code"] == "InvalidParameterValueException"


# --------------------------------------------------------------------------------------------- payloads and env


@pytest.mark.parametrize("invocation_type", ["RequestResponse", "Event"])
def test_non_json_payload_is_invalid_request_content(
    emu: LambdaEmulator, client: Any, rec: Recorder, invocation_type: str
) -> None:
    with pytest.raises(ClientError) as info:
        client.invoke(FunctionName="echo", InvocationType=invocation_type, Payload=b"not json {")
    assert info.value.response["Error"]["Code"] == "InvalidRequestContentException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert rec.calls == []
    assert (emu.completed, emu.failed, emu.pending) == (0, 0, 0)


def test_aws_endpoint_url_lambda_reaches_the_emulator(
    emu: LambdaEmulator, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", emu.endpoint_url)
    client = boto3.client("lambda", region_name="us-east-1")  # as runtime/handlers.py builds it
    assert client.meta.endpoint_url == emu.endpoint_url
    resp = client.invoke(FunctionName="gated", InvocationType="Event", Payload=json.dumps({"via": "env"}).encode())
    assert resp["StatusCode"] == 202
    rec.gate.set()
    assert rec.ran.wait(5)
    assert emu.wait_idle(5)
    assert rec.calls[0][0] == {"via": "env"}


def test_restart_serves_on_the_same_port(rec: Recorder) -> None:
    emu = LambdaEmulator({"echo": rec.echo})
    with emu:
        url = emu.endpoint_url
    with emu:
        assert emu.endpoint_url == url
        resp = _client(url).invoke(FunctionName="echo", InvocationType="Event", Payload=b"{}")
        assert resp["StatusCode"] == 202
        assert emu.wait_idle(5)
    assert emu.completed == 1


def test_bad_registrations_fail_up_front() -> None:
    with pytest.raises(ValueError):
        LambdaEmulator({"bad:name": lambda e, c: None})
    with pytest.raises(ValueError):
        LambdaEmulator({"f": lambda e, c: None}, timeouts={"g": 1})
    with pytest.raises(ValueError):
        LambdaEmulator({"f": lambda e, c: None}, workers=0)
