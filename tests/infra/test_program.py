"""The Pulumi program under `pulumi.runtime.set_mocks`: what it would create, checked without AWS."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from aigw.mocks import run

ROOT = Path(__file__).resolve().parents[2]


def run_program(stack: str, config: dict[str, str]):
    return run(lambda: runpy.run_path(str(ROOT / "__main__.py")) and None, stack=stack,
               config={f"ai-gateway:{k}": v for k, v in config.items()})


@pytest.mark.parametrize(("stack", "protected"), [("dev", "false"), ("prod", "true")])
def test_metering_table_matches_the_runtime_spec(stack: str, protected: str) -> None:
    from runtime.metering import TTL_ATTRIBUTE, table_spec

    mocks = run_program(stack, {"pointInTimeRecovery": protected, "deletionProtection": protected})
    table = mocks.one("aws:dynamodb/table:Table")
    spec = table_spec("x")
    assert table.inputs["hashKey"] == spec["KeySchema"][0]["AttributeName"]
    assert table.inputs["billingMode"] == "PAY_PER_REQUEST"
    assert table.inputs["ttl"] == {"attributeName": TTL_ATTRIBUTE, "enabled": True}
    assert table.inputs["serverSideEncryption"]["enabled"] is True
    assert table.inputs["pointInTimeRecovery"]["enabled"] is (protected == "true")
    assert table.inputs["deletionProtectionEnabled"] is (protected == "true")
