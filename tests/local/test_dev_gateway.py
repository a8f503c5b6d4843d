"""`aigw dev` in-process: the real handlers behind the local AppSync Events server, over real sockets."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aigw.client import Endpoints, EventsClient, sign_in
from aigw.dev import DevGateway, Ports, running
from components.settings import StackSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateway() -> Iterator[DevGateway]:
    settings = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
    with running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0.0, keepalive_s=5) as gw:
        yield gw


def endpoints(gw: DevGateway) -> Endpoints:
    info = gw.info
    c = info["cognito"]
    return Endpoints(info["http"], info["realtime"], info["region"], c["endpoint"], c["user_pool_id"], c["client_id"])


def demo_answer_kinds(gw: DevGateway, text: str, conversation_id: str, ends: Endpoints | None = None) -> list[str]:
    """The demo user signs in and asks `text`: the answer's event types in order."""
    ends = ends or endpoints(gw)
    demo = gw.info["demo_user"]
    token = sign_in(ends, demo["username"], demo["password"])["IdToken"]

    async def one_answer() -> list[str]:
        async with EventsClient(ends, token) as client:
            messages = [{"role": "user", "content": [{"text": text}]}]
            return [e["type"] async for e in client.ask(messages, conversation_id=conversation_id)]

    return asyncio.run(one_answer())


def test_a_signed_in_user_gets_a_streamed_answer(gateway: DevGateway) -> None:
    demo = gateway.info["demo_user"]
    token = sign_in(endpoints(gateway), demo["username"], demo["password"])["IdToken"]

    async def conversation() -> list[dict[str, Any]]:
        async with EventsClient(endpoints(gateway), token) as client:
            messages = [{"role": "user", "content": [{"text": "Hello, gateway"}]}]
            return [e async for e in client.ask(messages, conversation_id="conv-1")]

    events = asyncio.run(conversation())
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "delta" in kinds
    assert set(kinds[1:-1]) == {"delta"}
    end = events[-1]
    assert end["usage"]["output"] > 0 and end["remaining"]["window"] < 20_000


def test_each_function_runs_in_its_own_processes_as_the_stack_sizes_it(gateway: DevGateway) -> None:
    assert demo_answer_kinds(gateway, "Which process answers?", "conv-processes")[-1] == "end"
    sizes = gateway.settings.functions
    pools = gateway.lambdas
    assert sorted(pools) == ["gatekeeper", "subscribe", "worker"]
    assert all(pool.environments >= 1 for pool in pools.values())  # each served its part of the answer
    assert (pools["gatekeeper"].timeout_s, pools["worker"].timeout_s) == (
        sizes.gatekeeper.timeout_s,
        sizes.worker.timeout_s,
    )
    assert pools["worker"].function_name == gateway.info["worker_function"]


def test_threads_mode_runs_the_same_handlers_in_this_process() -> None:
    settings = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
    saved = dict(os.environ)
    try:
        with running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0.0, stack="threads", handlers_in="threads") as gw:
            assert gw.lambdas == {}
            kinds = demo_answer_kinds(gw, "In threads?", "conv-threads")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert kinds[0] == "start" and kinds[-1] == "end"


def test_stop_leaves_no_handler_process_behind() -> None:
    settings = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
    saved = dict(os.environ)
    others = {child.pid for child in multiprocessing.active_children()}  # other gateways' (the module's)
    try:
        with running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0.0, stack="stopping") as gw:
            gw.warm()
            pools = list(gw.lambdas.values())
            pids = {child.pid for child in multiprocessing.active_children()} - others
            assert len(pids) == sum(pool.concurrency for pool in pools)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert not pids & {child.pid for child in multiprocessing.active_children()}
    assert all(pool.environments == 0 for pool in pools)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone and reaped: not even a zombie is left


def test_info_names_everything_dev_json_promises(gateway: DevGateway, tmp_path: Path) -> None:
    path = gateway.write_info(tmp_path)
    text = path.read_text()
    for key in ('"http"', '"realtime"', '"region"', '"cognito"', '"demo_user"', '"tables"'):
        assert key in text


def test_the_python_client_trusts_a_tls_gateway_through_dev_json(tmp_path: Path) -> None:
    settings = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
    with running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0.0, tls=True, tls_dir=tmp_path, stack="tlstest") as gw:
        ends = Endpoints.from_dev_json(gw.write_info(tmp_path))
        assert ends.realtime.startswith("wss://localhost:") and ends.ca_file
        kinds = demo_answer_kinds(gw, "Over TLS?", "tls-1", ends)
    assert kinds[0] == "start" and kinds[-1] == "end"
