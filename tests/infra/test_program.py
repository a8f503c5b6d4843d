"""The Pulumi program under `pulumi.runtime.set_mocks`: what it would create, checked without AWS."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pulumi
import pytest

ROOT = Path(__file__).resolve().parents[2]


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


def run_program(stack: str, config: dict[str, str]) -> RecordingMocks:
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="ai-gateway", stack=stack, preview=False)
    pulumi.runtime.set_all_config({f"ai-gateway:{k}": v for k, v in config.items()})
    spec = importlib.util.spec_from_file_location(f"pulumi_program_{stack}", ROOT / "__main__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module

    @pulumi.runtime.test  # runs the program and waits until the mocked engine has seen every resource
    def load() -> pulumi.Output:
        spec.loader.exec_module(module)
        return module.metering_table.name

    load()
    return mocks


@pytest.mark.parametrize(("stack", "protected"), [("dev", "false"), ("prod", "true")])
def test_metering_table_matches_the_runtime_spec(stack: str, protected: str) -> None:
    from runtime.metering import TTL_ATTRIBUTE, table_spec

    mocks = run_program(stack, {"pointInTimeRecovery": protected, "deletionProtection": protected})
    tables = [r for r in mocks.resources if r.typ == "aws:dynamodb/table:Table"]
    assert len(tables) == 1
    inputs = tables[0].inputs
    spec = table_spec("x")
    assert inputs["hashKey"] == spec["KeySchema"][0]["AttributeName"]
    assert inputs["billingMode"] == "PAY_PER_REQUEST"
    assert inputs["ttl"] == {"attributeName": TTL_ATTRIBUTE, "enabled": True}
    assert inputs["serverSideEncryption"]["enabled"] is True
    assert inputs["pointInTimeRecovery"]["enabled"] is (protected == "true")
    assert inputs["deletionProtectionEnabled"] is (protected == "true")
