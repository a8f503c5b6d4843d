"""Fixtures of the request-path tests: real protocol peers (AppSync receiver, Bedrock emulator) and the gateway."""

from __future__ import annotations

from typing import Any

import pytest

from aigw.emulators.appsync_receiver import AppSyncReceiver
from aigw.emulators.bedrock import BedrockEmulator
from tests.runtime.test_request_path import CREDS, Gateway


@pytest.fixture
def receiver() -> Any:
    with AppSyncReceiver({CREDS.access_key: CREDS.secret_key}, region="us-east-1") as r:
        yield r


@pytest.fixture
def bedrock() -> Any:
    with BedrockEmulator() as emu:
        yield emu


@pytest.fixture
def gateway(dynamodb: Any, receiver: AppSyncReceiver, bedrock: BedrockEmulator) -> Gateway:
    return Gateway(dynamodb, receiver, bedrock)
