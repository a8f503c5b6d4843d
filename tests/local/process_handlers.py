"""Handlers that tests run in `aigw.lambda_processes` worker processes (imported there by path, e.g.
``"tests.local.process_handlers:behave"``). `behave` does what its event says, so one pool (one set of
processes, started once per test module) serves many tests; given an AppSync Events handler event, it reads the
command from the first published payload.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger

logger = Logger(service="process-pool-tests")


class UnauthorizedException(Exception):
    """Named like Powertools' exception: the events server recognises it (or a subclass) by name."""


class NotYourChannel(UnauthorizedException):
    pass


def _command(event: Any) -> dict[str, Any]:
    if isinstance(event, dict) and "info" in event and event.get("events"):
        return dict(event["events"][0]["payload"])  # an onPublish event from the events server
    return dict(event)


def behave(event: Any, context: Any) -> Any:
    command = _command(event)
    action = command.get("do")
    if action == "echo":
        return {
            "event": event,
            "pid": os.getpid(),
            "request_id": context.aws_request_id,
            "function_name": context.function_name,
            "function_version": context.function_version,
            "arn": context.invoked_function_arn,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "log_group_name": context.log_group_name,
            "remaining_ms": context.get_remaining_time_in_millis(),
        }
    if action == "sleep_then_write":
        # Where the test can find this process, then the effect it must never see if the sleep outlasts the timeout.
        Path(command["started"]).write_text(str(os.getpid()))
        time.sleep(command["sleep_s"])
        Path(command["path"]).write_text("written after the sleep")
        return {"pid": os.getpid()}
    if action == "correlated":
        return _correlated(command)
    if action == "crash":
        raise ValueError(f"bad input {command['n']}")
    if action == "refuse":
        raise NotYourChannel("that channel is not yours")
    if action == "exit":
        os._exit(command.get("status", 3))
    if action == "unserializable":
        return {"when": object()}
    if action == "environment":
        return os.environ.get(command["name"])
    if action == "log":
        print("plain line from the handler")
        logger.info("structured line", extra={"marker": command["marker"]})
        return None
    if action == "publish_echo":  # an onPublish answer: every event broadcast as published
        return {"events": [{"id": item["id"], "payload": item["payload"]} for item in event["events"]]}
    raise ValueError(f"unknown action {action!r}")


def _correlated(command: dict[str, Any]) -> dict[str, Any]:
    """Bind the correlation id the process-global way (Powertools' `set_correlation_id`), wait at a barrier until
    every party has bound its own (files in a shared folder), then read it back and log with it. Sharing one
    process (threads), every party would read the id bound last."""
    correlation_id = command["correlation_id"]
    logger.set_correlation_id(correlation_id)
    barrier = Path(command["barrier"])
    (barrier / correlation_id).touch()
    deadline = time.monotonic() + command["wait_s"]
    while len(list(barrier.iterdir())) < command["parties"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the other invocations never arrived: they are not running at the same time")
        time.sleep(0.01)
    logger.info("past the barrier")
    return {"correlation_id": logger.get_correlation_id(), "pid": os.getpid()}
