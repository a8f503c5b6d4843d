"""`aigw dev` keeps what it holds between runs: users and passwords, the pool id (tokens stay valid), overrides,
teams, the cache and metering; `--fresh` forgets it; a snapshot it cannot read is set aside, never half-loaded.
Also the instance files (`dev-<port>.json`, `dev.json` naming a running one) and taken ports reported at once."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import string
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from aigw import local_state
from aigw.client import EventsClient, sign_in
from aigw.dev import DEMO_FILE, DevGateway, PortInUseError, Ports, running
from aigw.local_cognito import SHELL_SAFE_SYMBOLS, add_user, set_tier
from components.settings import StackSettings
from runtime.cache import AnswerCache
from runtime.metering import Limits, Meter
from tests.local.test_dev_gateway import endpoints

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
PASSWORD = "Correct-Horse-9-Battery"


def _claims(token: str) -> str:
    """A JWT's payload (the gateway verifies it; here we only read what the pool put in it)."""
    payload = token.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()


def tables(gw: DevGateway) -> tuple[Meter, AnswerCache]:
    info = gw.info
    dynamodb = boto3.client("dynamodb", region_name=info["region"], endpoint_url=info["cognito"]["endpoint"])
    return (Meter(info["tables"]["metering"], client=dynamodb),
            AnswerCache(info["tables"]["cache"], client=dynamodb, namespace=SETTINGS.cache_namespace))


def ask(gw: DevGateway, token: str, text: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with EventsClient(endpoints(gw), token) as client:
            return [e async for e in client.ask([{"role": "user", "content": [{"text": text}]}], conversation_id="c1")]

    return asyncio.run(go())


def start(state: Path, **kwargs: Any) -> Any:
    return running(SETTINGS, ports=Ports(0, 0, 0, 0), stack="keep", state_dir=state, analytics_dir=None,
                   snapshot_every_s=3600, **kwargs)


def test_a_restart_keeps_users_tokens_limits_cache_and_usage_and_fresh_forgets_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with start(state) as first:
        assert not first.restored
        assert first.pool is not None
        idp = boto3.client("cognito-idp", region_name=first.info["region"],
                           endpoint_url=first.info["cognito"]["endpoint"])
        sub = add_user(idp, first.pool, "ada@example.com", PASSWORD, tier="free")
        tokens = sign_in(endpoints(first), "ada@example.com", PASSWORD)
        meter, cache = tables(first)
        meter.set_override(sub, Limits(window_tokens=7_000, monthly_tokens=90_000))
        cache.put("What is ai-gateway?", "amazon.nova-lite-v1:0", "A gateway.", None)
        spent = ask(first, tokens["IdToken"], "Hello before the restart")[-1]
        pool_id, client_id = first.info["cognito"]["user_pool_id"], first.info["cognito"]["client_id"]
        demo = first.info["demo_user"]
        set_tier(idp, first.pool, demo["username"], "pro")  # an operator's change to the demo user

    with start(state) as second:
        assert second.restored and second.state_note is None
        assert (second.info["cognito"]["user_pool_id"], second.info["cognito"]["client_id"]) == (pool_id, client_id)
        assert second.info["demo_user"] == demo  # the same demo password
        # The token issued before the restart is still accepted, and the usage before it still counts.
        end = ask(second, tokens["IdToken"], "Hello after the restart")[-1]
        assert end["type"] == "end"
        used_before = spent["usage"]["input"] + spent["usage"]["output"]
        used_now = end["usage"]["input"] + end["usage"]["output"]
        assert end["remaining"]["window"] == 7_000 - used_before - used_now  # the override, and both answers
        meter, cache = tables(second)
        assert cache.get("What is ai-gateway?", "amazon.nova-lite-v1:0") is not None
        assert sign_in(endpoints(second), "ada@example.com", PASSWORD)["IdToken"]  # the password too
        demo_tokens = sign_in(endpoints(second), demo["username"], demo["password"])
        assert json.loads(_claims(demo_tokens["IdToken"]))["cognito:groups"] == ["pro"]  # not put back in free

    with start(state, fresh=True) as clean:
        assert not clean.restored
        assert clean.info["cognito"]["user_pool_id"] != pool_id
        assert clean.info["demo_user"]["password"] != demo["password"]
        meter, cache = tables(clean)
        assert cache.get("What is ai-gateway?", "amazon.nova-lite-v1:0") is None
        with pytest.raises(ClientError) as refused:
            sign_in(endpoints(clean), "ada@example.com", PASSWORD)
        assert refused.value.response["Error"]["Code"] in ("NotAuthorizedException", "UserNotFoundException")


def test_the_demo_password_is_shell_safe_and_can_be_chosen(tmp_path: Path) -> None:
    with start(tmp_path / "a") as gw:
        password = gw.info["demo_user"]["password"]
        assert set(password) <= set(string.ascii_letters + string.digits + SHELL_SAFE_SYMBOLS)
        kept = json.loads((tmp_path / "a" / DEMO_FILE).read_text())
        assert kept["password"] == password and (tmp_path / "a" / DEMO_FILE).stat().st_mode & 0o077 == 0
    with start(tmp_path / "a", demo_password="Chosen-Pass-42") as gw:
        assert gw.info["demo_user"]["password"] == "Chosen-Pass-42"
        assert sign_in(endpoints(gw), gw.info["demo_user"]["username"], "Chosen-Pass-42")["IdToken"]


def test_an_unreadable_snapshot_is_set_aside_and_the_gateway_starts_clean(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / local_state.SNAPSHOT_NAME).write_bytes(b"not a pickle at all")
    with start(state) as gw:
        assert not gw.restored
        assert gw.state_note is not None and "started clean" in gw.state_note
        assert (state / "moto-state.unreadable").read_bytes() == b"not a pickle at all"
        assert (state / local_state.SNAPSHOT_NAME).is_file()  # the new state is being kept


def test_a_snapshot_of_another_moto_version_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    with start(state):
        pass
    monkeypatch.setattr(local_state.moto, "__version__", "0.0.1")
    with pytest.raises(local_state.SnapshotUnreadableError, match="taken with moto"):
        local_state.restore(state / local_state.SNAPSHOT_NAME, SETTINGS.region)


def test_each_instance_has_its_own_file_and_dev_json_names_one_still_running(tmp_path: Path) -> None:
    with running(SETTINGS, ports=Ports(0, 0, 0, 0), stack="inst1", analytics_dir=None) as one:
        one.write_info(tmp_path)
        with running(SETTINGS, ports=Ports(0, 0, 0, 0), stack="inst2", analytics_dir=None) as two:
            two.write_info(tmp_path)
            assert json.loads((tmp_path / "dev.json").read_text()) == two.info  # the newest is the default
            assert len(list(tmp_path.glob("dev-*.json"))) == 2
            two.stop()
            two.remove_info(tmp_path)
            assert json.loads((tmp_path / "dev.json").read_text()) == one.info  # back to the one still running
        one.stop()
        one.remove_info(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing points at dead ports


def test_every_taken_port_is_reported_at_once() -> None:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.listen()
        b.listen()
        ports = Ports(events=a.getsockname()[1], moto=b.getsockname()[1], bedrock=0, lambda_=0)
        with pytest.raises(PortInUseError) as raised:
            ports.check_free()
    message = str(raised.value)
    assert "--events-port" in message and "--moto-port" in message
    assert str(ports.events) in message and str(ports.moto) in message
