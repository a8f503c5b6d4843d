"""Lambda entry points. Thin: parse the event, call the gatekeeper/worker, shape the answer.

Three functions share this module: `subscribe_handler` (onSubscribe of `responses`), `gatekeeper_handler`
(onPublish of `chat`, REQUEST_RESPONSE) and `worker_handler` (asynchronous invoke). Clients and
configuration are built on first use, not at import (cold start), and reused across invocations. In
`aigw dev` the very same functions run, pointed at local endpoints by `AWS_ENDPOINT_URL_<SERVICE>`.
"""

from __future__ import annotations

import functools
import json
import threading
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import AppSyncEventsResolver
from aws_lambda_powertools.event_handler.events_appsync.exceptions import UnauthorizedException

from runtime import channels, observability, protocol
from runtime.config import RuntimeConfig
from runtime.errors import ChannelForbiddenError, InvalidInputError

if TYPE_CHECKING:
    from runtime.appsync_publish import PublishResult

app = AppSyncEventsResolver()


@functools.cache
def config() -> RuntimeConfig:
    return RuntimeConfig.from_env()


_thread = threading.local()


def publisher() -> Any:
    """This thread's publisher: one keep-alive connection each (Lambda runs one invocation per container at a
    time, so there is one; `aigw dev` runs workers on several threads, and a connection is not shareable)."""
    from runtime.appsync_publish import EventPublisher

    cfg = config()
    current = getattr(_thread, "publisher", None)
    if current is None or current.http_endpoint != cfg.appsync_http_endpoint:
        current = _thread.publisher = EventPublisher(cfg.appsync_http_endpoint, cfg.region)
    return current


def publish(channel: str, events: list[dict[str, Any]]) -> PublishResult:
    """Publish with this thread's publisher. Events AppSync refuses (a 200 answer's `failed`) are published again,
    once; those refused twice are logged and counted (`PublishFailures`), and stay in the answer's `failed`, with
    their index in `events`, for the caller to act on."""
    from runtime.appsync_publish import publish_retrying_failed

    result = publish_retrying_failed(publisher().publish, channel, events)
    if result.failed:
        report_undelivered(channel, events, result, log_prompts=config().log_prompts)
    return result


def undelivered_fields(
    channel: str, events: list[dict[str, Any]], result: PublishResult, *, log_prompts: bool
) -> dict[str, Any]:
    """The log fields of events AppSync refused twice. Never their text; AppSync's own messages only with
    logPrompts (they could quote what was sent)."""
    from runtime.appsync_publish import failed_entry_index

    def index(entry: dict[str, Any]) -> int:
        found = failed_entry_index(entry)
        return found if found is not None and 0 <= found < len(events) else -1

    failed = sorted((entry for entry in result.failed if isinstance(entry, dict)), key=index)
    lost = [events[i] if (i := index(entry)) >= 0 else {} for entry in failed]
    request_id = next((e["requestId"] for e in [*lost, *events] if isinstance(e, dict) and e.get("requestId")), None)
    fields: dict[str, Any] = {
        "channel": channel,
        "request_id": request_id,
        "failed_indexes": [entry.get("index") for entry in failed],
        "failed_types": [event.get("type") if isinstance(event, dict) else None for event in lost],
        "failed_codes": [entry.get("code", entry.get("errorCode")) for entry in failed],  # WebSocket: errorCode
    }
    if log_prompts is True:
        fields["failed_messages"] = [entry.get("message", entry.get("errorMessage")) for entry in failed]
    return fields


def report_undelivered(channel: str, events: list[dict[str, Any]], result: PublishResult, *, log_prompts: bool) -> None:
    observability.logger.error(
        "AppSync refused events twice: not delivered",
        extra=undelivered_fields(channel, events, result, log_prompts=log_prompts),
    )
    observability.record_publish_failures(len(result.failed))


@functools.cache
def gatekeeper() -> Any:
    import boto3

    from runtime.budgets import Budgets
    from runtime.cache import AnswerCache
    from runtime.gatekeeper import Gatekeeper
    from runtime.metering import Meter

    cfg = config()
    dynamodb = boto3.client("dynamodb", region_name=cfg.region)
    lambda_client = boto3.client("lambda", region_name=cfg.region)

    def invoke_worker(job: protocol.WorkerJob) -> None:
        lambda_client.invoke(
            FunctionName=cfg.worker_function_name, InvocationType="Event", Payload=job.model_dump_json().encode()
        )

    return Gatekeeper(
        cfg,
        Meter(cfg.metering_table, client=dynamodb, lease_seconds=cfg.lease_seconds),
        AnswerCache(cfg.cache_table, client=dynamodb, namespace=cfg.cache_namespace),
        invoke_worker,
        publish,
        journal=journal(dynamodb),
        budgets=Budgets(cfg.metering_table, dynamodb),
    )


def journal(dynamodb: Any) -> Any:
    """The answer journal (resume and cancel), when the stack has a streams table."""
    from runtime.streams import Journal

    cfg = config()
    return Journal(cfg.streams_table, dynamodb) if cfg.streams_table else None


@functools.cache
def worker() -> Any:
    import boto3

    from runtime.bedrock import ModelClient
    from runtime.budgets import Budgets
    from runtime.metering import Meter
    from runtime.worker import Worker

    cfg = config()
    dynamodb = boto3.client("dynamodb", region_name=cfg.region)
    meter = Meter(cfg.metering_table, client=dynamodb, lease_seconds=cfg.lease_seconds)
    return Worker(
        cfg, meter, ModelClient(), publish, journal=journal(dynamodb), budgets=Budgets(cfg.metering_table, dynamodb)
    )


@app.on_subscribe("/*")
def on_subscribe() -> None:
    identity = app.current_event.get("identity") or {}
    try:
        channels.authorize(channels.SUBSCRIBE, app.current_event.info.channel_path, identity.get("sub") or "")
    except (ChannelForbiddenError, InvalidInputError) as err:
        raise UnauthorizedException(str(err)) from None


@app.on_publish("/*", aggregate=True)
def on_publish(payload: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return gatekeeper().on_publish(app.current_event.get("identity"), app.current_event.info.channel_path, payload)


def subscribe_handler(event: dict[str, Any], context: Any) -> Any:
    return app.resolve(event, context)


def gatekeeper_handler(event: dict[str, Any], context: Any) -> Any:
    return app.resolve(event, context)


def worker_handler(event: dict[str, Any] | str, context: Any) -> None:
    job = protocol.WorkerJob.model_validate(json.loads(event) if isinstance(event, str) else event)
    observability.bind_request(job.request_id, user_id=job.user_id)
    worker().handle(job)
