"""The IAM grants cover every DynamoDB call the code makes: each function's calls, recorded on the real request path
(admit, refuse, release, resume, cancel, replay a duplicate; stream, cancel and settle), checked against the
policies `components.functions` renders. A call the role may not make would fail only in AWS, with AccessDenied.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime import protocol
from tests.infra.test_functions import CACHE_ARN, METERING_ARN, STREAMS_ARN, deploy, grants, policies
from tests.runtime.test_request_path import SUB, Gateway, ask

ARN_OF_TABLE = {"metering": METERING_ARN, "cache": CACHE_ARN, "streams": STREAMS_ARN}


class Calls:
    """(role, DynamoDB action, table ARN) of every call, attributed to the role set while it runs."""

    def __init__(self, gateway: Gateway) -> None:
        self.role = ""
        self.seen: set[tuple[str, str, str]] = set()
        gateway.dynamodb.meta.events.register("provide-client-params.dynamodb.*", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if self.role:
            kind = str(params.get("TableName", "")).split("-", 1)[0]
            self.seen.add((self.role, f"dynamodb:{model.name}", ARN_OF_TABLE[kind]))


@pytest.fixture(scope="module")
def granted() -> dict[str, dict[str, set[str]]]:
    with pytest.MonkeyPatch.context() as mp:
        mocks, _ = deploy(mp)
    return {role: grants(policy) for role, policy in policies(mocks).items()}


def test_every_dynamodb_call_of_the_request_path_is_granted(
    gateway: Gateway, granted: dict[str, dict[str, set[str]]]
) -> None:
    calls = Calls(gateway)
    gateway.cache.put("What is cached?", gateway.config.tier("free").model, "A prepared answer.")

    calls.role = "gatekeeper"
    gateway.publish(ask(requestId="plain"))
    gateway.publish(ask("what is cached", requestId="cached"))
    gateway.publish({"action": "cancel", "requestId": "plain"})
    real_invoke = gateway.gatekeeper.invoke_worker

    def failing_invoke(job: protocol.WorkerJob) -> None:
        raise ConnectionError("injected")

    gateway.gatekeeper.invoke_worker = failing_invoke
    gateway.publish(ask(requestId="released"))  # admitted, then released
    gateway.gatekeeper.invoke_worker = real_invoke

    calls.role = "worker"
    gateway.worker.journal_interval_s = 0
    gateway.run_jobs()  # "plain" sees its cancel at the first journal write; "cached" streams the prepared answer

    calls.role = "gatekeeper"
    gateway.publish({"action": "resume", "requestId": "plain", "afterSeq": 0})
    gateway.publish(ask(requestId="plain"))  # a duplicate of an answered request: replayed
    calls.role = ""  # the test itself uses up the window
    gateway.meter.admit(SUB, gateway.config.tier("free").limits, input_tokens=0, max_output_tokens=4_000)
    calls.role = "gatekeeper"
    [refused] = gateway.publish(ask(requestId="refused"))
    assert refused["error"].startswith("rate_limited")

    assert {role for role, _, _ in calls.seen} == {"gatekeeper", "worker"}
    missing = {(role, action, arn) for role, action, arn in calls.seen if arn not in granted[role].get(action, set())}
    assert not missing, f"calls the role may not make: {sorted(missing)}"
