"""Shared test set-up: Hypothesis profiles and a moto server on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, settings

# `ci` (used by `make test`): a fixed example budget and no deadline, so the suite's runtime is predictable
# on a 2-core machine. `dev`: more examples for local digging (`HYPOTHESIS_PROFILE=dev pytest`).
settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Tests never talk to AWS: dummy credentials and a fixed region, whatever the machine has configured.
for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}.items():
    os.environ[_name] = _value
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's real HTTP server on an ephemeral 127.0.0.1 port, shared by the session (atomic writes, as AWS)."""
    from aigw.emulators.moto_server import AtomicMotoServer

    with AtomicMotoServer() as server:
        yield server.endpoint_url


@pytest.fixture(scope="session")
def dynamodb(moto_endpoint: str) -> Any:
    from botocore.config import Config

    return boto3.client(
        "dynamodb",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        config=Config(max_pool_connections=128, retries={"mode": "standard", "max_attempts": 3}),
    )


@pytest.fixture
def meter_table(dynamodb: Any) -> str:
    """A fresh, empty metering table per test."""
    from runtime.metering import table_spec

    name = f"metering-{uuid.uuid4().hex[:12]}"
    dynamodb.create_table(**table_spec(name))
    return name


# moto's server logs every request through werkzeug: noise in failures, and slow when captured.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture
def calls(dynamodb: Any) -> Iterator[Any]:
    """DynamoDB calls made during the test, by operation name (`calls.take()`)."""
    from tests.support import CallCounter

    counter = CallCounter(dynamodb)
    yield counter
    counter.close()
