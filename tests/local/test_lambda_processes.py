"""Local Lambda execution environments (`aigw.lambda_processes`): handlers in worker processes, killed at their
timeout, one invocation per process, each with its own Powertools state; and the two servers that run them.

The handlers are `tests.local.process_handlers.behave`. The pools are module-scoped: a cold start is a fresh
interpreter, paid once per process, not per test.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import boto3
import pytest
from botocore.config import Config

from aigw.emulators.lambda_invoke import LambdaEmulator
from aigw.events_server import (
    COGNITO,
    AuthError,
    EventsServer,
    Identity,
    LocalAuthenticator,
    NamespaceConfig,
    ServerThread,
)
from aigw.lambda_processes import FunctionError, FunctionTimeout, LambdaProcessPool

HANDLER = "tests.local.process_handlers:behave"
SLEEPY_TIMEOUT_S = 0.5
SLEEP_S = 1.0  # the handler's sleep: twice its timeout
MARK = "AIGW_POOL_TEST_MARK"


@pytest.fixture(scope="module")
def pool() -> Iterator[LambdaProcessPool]:
    """Four environments with a generous timeout; the environment it snapshots names MARK (the parent's does not)."""
    pool = LambdaProcessPool(HANDLER, function_name="general", timeout_s=30, memory_limit_in_mb=256, concurrency=4)
    with mock.patch.dict(os.environ, {MARK: "as the pool started"}):
        pool.start()
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def sleepy() -> Iterator[LambdaProcessPool]:
    """One environment whose timeout is half the sleep of ``sleep_then_write``."""
    with LambdaProcessPool(HANDLER, function_name="sleepy", timeout_s=SLEEPY_TIMEOUT_S, concurrency=1) as pool:
        yield pool


def sleep_then_write(folder: Path) -> dict[str, Any]:
    return {
        "do": "sleep_then_write",
        "sleep_s": SLEEP_S,
        "path": str(folder / "effect"),
        "started": str(folder / "pid"),
    }


def assert_no_effect_after_the_sleep(folder: Path) -> int:
    """Wait past the moment the handler would have written, check it never did; returns the killed process's pid."""
    time.sleep(SLEEP_S + 0.5)
    assert not (folder / "effect").exists(), "the timed-out handler acted after its timeout"
    pid = int((folder / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    return pid


# --------------------------------------------------------------------------------------------- the pool


def test_the_handler_gets_a_lambda_context(pool: LambdaProcessPool) -> None:
    result = pool.invoke({"do": "echo", "n": [1, 2]}, request_id="req-1")
    assert result["event"] == {"do": "echo", "n": [1, 2]}  # across as JSON, back as JSON
    assert result["pid"] != os.getpid()
    assert result["request_id"] == "req-1"
    assert result["function_name"] == "general" and result["function_version"] == "$LATEST"
    assert result["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:general"
    assert result["memory_limit_in_mb"] == 256 and result["log_group_name"] == "/aws/lambda/general"
    assert 0 < result["remaining_ms"] <= 30_000


def test_a_warm_environment_is_reused(pool: LambdaProcessPool) -> None:
    first = pool.invoke({"do": "echo"})["pid"]
    cold_starts = pool.cold_starts
    assert [pool.invoke({"do": "echo"})["pid"] for _ in range(3)] == [first] * 3
    assert pool.cold_starts == cold_starts


def test_children_see_the_environment_as_it_was_when_the_pool_started(pool: LambdaProcessPool) -> None:
    assert MARK not in os.environ
    assert pool.invoke({"do": "environment", "name": MARK}) == "as the pool started"


def test_a_timed_out_invocation_is_killed_and_has_no_effect_after_the_timeout(
    sleepy: LambdaProcessPool, tmp_path: Path
) -> None:
    timeouts, cold_starts = sleepy.timeouts, sleepy.cold_starts
    with pytest.raises(FunctionTimeout) as timed_out:
        sleepy.invoke(sleep_then_write(tmp_path), request_id="req-slow")
    assert timed_out.value.error_type == "Sandbox.Timedout"
    assert str(timed_out.value) == "RequestId: req-slow Error: Task timed out after 0.50 seconds"
    assert sleepy.timeouts == timeouts + 1 and sleepy.environments == 0
    killed = assert_no_effect_after_the_sleep(tmp_path)

    # The process was replaced: the next invocation runs in a new one, and works.
    quick = {**sleep_then_write(tmp_path), "sleep_s": 0}
    assert sleepy.invoke(quick)["pid"] != killed
    assert (tmp_path / "effect").read_text() == "written after the sleep"
    assert sleepy.cold_starts == cold_starts + 2


def test_concurrent_invocations_run_in_parallel_each_with_its_own_correlation_id(
    pool: LambdaProcessPool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool.warm()
    ids = [f"corr-{i}-{uuid.uuid4().hex[:6]}" for i in range(pool.concurrency)]
    command = {"do": "correlated", "barrier": str(tmp_path), "parties": len(ids), "wait_s": 20}
    # Every invocation waits until all have bound their id: they only get past it by running at the same time.
    with ThreadPoolExecutor(len(ids)) as threads:
        results = list(threads.map(lambda cid: pool.invoke({**command, "correlation_id": cid}), ids))
    assert [r["correlation_id"] for r in results] == ids  # nobody read anybody else's
    assert len({r["pid"] for r in results}) == len(ids)
    # Their log lines reached this process's stdout, each with its own invocation's id.
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "past the barrier" in line]
    assert sorted(line["correlation_id"] for line in lines) == sorted(ids)


def test_callers_beyond_the_concurrency_wait_their_turn(sleepy: LambdaProcessPool) -> None:
    with ThreadPoolExecutor(3) as threads:
        results = list(threads.map(lambda _: sleepy.invoke({"do": "echo"}), range(3)))
    assert len({r["pid"] for r in results}) == 1 and sleepy.environments == 1  # one process, one at a time


def test_a_crash_is_a_typed_error_and_the_environment_keeps_serving(pool: LambdaProcessPool) -> None:
    before = pool.invoke({"do": "echo"})["pid"]
    with pytest.raises(FunctionError) as crashed:
        pool.invoke({"do": "crash", "n": 7})
    error = crashed.value
    assert (error.error_type, str(error)) == ("ValueError", "bad input 7")
    assert error.error_types == ("ValueError", "Exception", "BaseException")
    assert any("process_handlers.py" in frame and "behave" in frame for frame in error.stack_trace)
    assert pool.invoke({"do": "echo"})["pid"] == before  # the same warm environment


def test_base_class_names_cross_the_process_boundary(pool: LambdaProcessPool) -> None:
    with pytest.raises(FunctionError) as refused:
        pool.invoke({"do": "refuse"})
    assert refused.value.error_type == "NotYourChannel"
    assert "UnauthorizedException" in refused.value.error_types


def test_a_process_that_dies_is_an_exit_error_and_is_replaced(pool: LambdaProcessPool) -> None:
    with pytest.raises(FunctionError) as exited:
        pool.invoke({"do": "exit", "status": 3})
    assert exited.value.error_type == "Runtime.ExitError"
    assert "exit status 3" in str(exited.value)
    assert pool.invoke({"do": "echo"})["event"] == {"do": "echo"}


def test_a_result_that_is_not_json_is_a_marshal_error(pool: LambdaProcessPool) -> None:
    with pytest.raises(FunctionError) as refused:
        pool.invoke({"do": "unserializable"})
    assert refused.value.error_type == "Runtime.MarshalError"
    assert str(refused.value).startswith("Unable to marshal response:")


def test_an_event_that_is_not_json_fails_in_the_caller(pool: LambdaProcessPool) -> None:
    with pytest.raises(TypeError):
        pool.invoke({"do": "echo", "when": object()})


def test_a_handler_that_cannot_be_loaded_is_an_init_error_every_time() -> None:
    for handler, error_type in (
        ("tests.local.no_such_module:handler", "Runtime.ImportModuleError"),
        ("tests.local.process_handlers:no_such_function", "Runtime.HandlerNotFound"),
    ):
        with LambdaProcessPool(handler, concurrency=1) as broken:
            for _ in range(2):
                with pytest.raises(FunctionError) as failed:
                    broken.invoke({})
                assert failed.value.error_type == error_type
            assert broken.environments == 0
    with pytest.raises(ValueError, match="must be"):
        LambdaProcessPool("no_colon")


def test_stop_kills_every_environment_and_refuses_invocations() -> None:
    with LambdaProcessPool(HANDLER, concurrency=1) as short_lived:
        pid = short_lived.invoke({"do": "echo"})["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="not running"):
        short_lived.invoke({"do": "echo"})


def test_stop_fails_the_invocation_in_flight_and_the_callers_waiting(tmp_path: Path) -> None:
    with LambdaProcessPool(HANDLER, concurrency=1, timeout_s=30) as stopping:
        stopping.warm()
        with ThreadPoolExecutor(2) as threads:
            running = threads.submit(stopping.invoke, {**sleep_then_write(tmp_path), "sleep_s": 20})
            while not (tmp_path / "pid").exists():
                time.sleep(0.01)
            waiting = threads.submit(stopping.invoke, {"do": "echo"})
            time.sleep(0.2)  # queued behind the busy environment
            started = time.monotonic()
            stopping.stop()
            with pytest.raises(FunctionError) as killed:
                running.result(timeout=5)
            with pytest.raises(RuntimeError, match="stopped"):
                waiting.result(timeout=5)
        assert time.monotonic() - started < 5  # nobody waited for the 20 s sleep or the 30 s timeout
    assert killed.value.error_type == "Runtime.ExitError"
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)
    assert not (tmp_path / "effect").exists()


# --------------------------------------------------------------------------------------------- the Lambda emulator


def _lambda_client(endpoint_url: str) -> Any:
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10)
    return boto3.client("lambda", region_name="us-east-1", endpoint_url=endpoint_url, config=config)


def test_the_lambda_emulator_runs_pools_and_reports_their_errors_as_lambda_does(
    pool: LambdaProcessPool, sleepy: LambdaProcessPool, tmp_path: Path
) -> None:
    with LambdaEmulator({"general": pool, "sleepy": sleepy}) as emulator:
        client = _lambda_client(emulator.endpoint_url)
        answer = client.invoke(FunctionName="general", Payload=json.dumps({"do": "echo"}).encode())
        result = json.loads(answer["Payload"].read())
        assert result["request_id"] == answer["ResponseMetadata"]["RequestId"]  # the emulator's request id
        assert result["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:general"

        crashed = client.invoke(FunctionName="general", Payload=json.dumps({"do": "crash", "n": 1}).encode())
        body = json.loads(crashed["Payload"].read())
        assert crashed["FunctionError"] == "Unhandled"
        assert (body["errorType"], body["errorMessage"]) == ("ValueError", "bad input 1")
        assert any("behave" in frame for frame in body["stackTrace"])  # the handler's traceback, not ours

        timed_out = client.invoke(FunctionName="sleepy", Payload=json.dumps(sleep_then_write(tmp_path)).encode())
        body = json.loads(timed_out["Payload"].read())
        assert timed_out["FunctionError"] == "Unhandled" and body["errorType"] == "Sandbox.Timedout"
        assert body["errorMessage"].endswith("Task timed out after 0.50 seconds")
        assert_no_effect_after_the_sleep(tmp_path)
    with pytest.raises(ValueError, match="own timeout_s"):
        LambdaEmulator({"general": pool}, timeouts={"general": 10})


def test_an_asynchronous_invocation_past_its_timeout_fails_and_has_no_effect(
    sleepy: LambdaProcessPool, tmp_path: Path
) -> None:
    with LambdaEmulator({"sleepy": sleepy}) as emulator:
        client = _lambda_client(emulator.endpoint_url)
        accepted = client.invoke(
            FunctionName="sleepy", InvocationType="Event", Payload=json.dumps(sleep_then_write(tmp_path)).encode()
        )
        assert accepted["StatusCode"] == 202
        assert emulator.wait_idle(10)
        assert (emulator.completed, emulator.failed) == (0, 1)
        assert_no_effect_after_the_sleep(tmp_path)


# --------------------------------------------------------------------------------------------- the events server


def _identity(token: str) -> Identity:
    if token != "alice-token":
        raise AuthError("invalid JWT")
    return Identity(kind="cognito", sub="alice", username="alice", groups=[], claims={"sub": "alice"})


async def _publish(server: EventsServer, channel: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"channel": channel, "events": [json.dumps(payload)]})
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.http_url, data=body, headers={"Authorization": "alice-token"}) as response,
    ):
        return response.status, await response.json()


def test_events_server_handlers_in_processes_keep_the_error_mapping(
    pool: LambdaProcessPool, sleepy: LambdaProcessPool, tmp_path: Path
) -> None:
    namespaces = [
        NamespaceConfig("chat", publish_auth={COGNITO}, subscribe_auth={COGNITO}, on_publish=pool),
        NamespaceConfig("slow", publish_auth={COGNITO}, subscribe_auth={COGNITO}, on_publish=sleepy),
    ]
    server = EventsServer(LocalAuthenticator({}, cognito=_identity), namespaces, handler_timeout_s=60)
    with ServerThread(server):

        async def scenario() -> list[tuple[int, dict[str, Any]]]:
            return [
                await _publish(server, "/chat/alice", {"do": "publish_echo"}),
                await _publish(server, "/chat/alice", {"do": "crash", "n": 2}),
                await _publish(server, "/chat/alice", {"do": "refuse"}),
                # Timed out by the pool's 0.5 s, not the server's 60 s: the function's own timeout.
                await _publish(server, "/slow/alice", sleep_then_write(tmp_path)),
            ]

        ok, crashed, refused, timed_out = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert ok[0] == 200 and [s["index"] for s in ok[1]["successful"]] == [0] and ok[1]["failed"] == []
    assert crashed == (
        500,
        {"errors": [{"errorType": "InternalFailureException", "message": "the onPublish handler failed"}]},
    )
    assert refused == (
        403,
        {"errors": [{"errorType": "UnauthorizedException", "message": "that channel is not yours"}]},
    )
    assert timed_out == (
        500,
        {"errors": [{"errorType": "InternalFailureException", "message": "the onPublish handler timed out"}]},
    )
    assert_no_effect_after_the_sleep(tmp_path)
