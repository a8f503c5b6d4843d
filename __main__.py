"""The Pulumi program: read and validate all configuration once, compose one component per concern, export.

Components never read config: each gets the typed pieces it needs from `StackSettings`. Names the runtime
relies on (table keys, TTL attributes, channel namespaces, environment variables) come from `runtime/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from analytics.local import render_query, tier_limits_from_settings
from components.analytics import Analytics, AnalyticsArgs
from components.cache import AnswerCacheTable, AnswerCacheTableArgs
from components.channel_handlers import ChannelHandlers, ChannelHandlersArgs
from components.events_api import EventsApi, EventsApiArgs
from components.functions import Functions, FunctionsArgs, FunctionSettings, powertools_layer_arn, runtime_archive
from components.guardrails import Guardrail, GuardrailArgs
from components.identity import FederationProvider, Identity, IdentityArgs
from components.metering import MeteringTable, MeteringTableArgs
from components.observability import Observability, ObservabilityArgs
from components.settings import PROJECT, FunctionSizing, StackSettings
from components.streams import StreamsTable, StreamsTableArgs
from components.web_app import WebApp, WebAppArgs


def sizing(f: FunctionSizing) -> FunctionSettings:
    return FunctionSettings(memory_mb=f.memory_mb, timeout_s=f.timeout_s, reserved_concurrency=f.reserved_concurrency)


def main() -> dict[str, Any]:
    settings = StackSettings.from_pulumi_config()
    stack = pulumi.get_stack()
    prefix = f"{PROJECT}-{stack}"
    tags = {"project": PROJECT, "stack": stack, **settings.tags}
    account = aws.get_caller_identity_output().account_id

    identity = Identity(
        "identity",
        IdentityArgs(
            name=prefix,
            tiers=tuple((t.name, t.precedence) for t in settings.tiers),
            mfa=settings.mfa,
            deletion_protection=settings.deletion_protection,
            federation=tuple(
                FederationProvider(p.name, p.type, p.details, p.attribute_mapping) for p in settings.federation
            ),
            hosted_domain_prefix=settings.hosted_domain_prefix,
            callback_urls=settings.callback_urls,
            tags=tags,
        ),
    )
    metering = MeteringTable(
        "metering",
        MeteringTableArgs(
            name=f"{prefix}-metering",
            point_in_time_recovery=settings.point_in_time_recovery,
            deletion_protection=settings.deletion_protection,
            tags=tags,
        ),
    )
    cache = AnswerCacheTable(
        "cache",
        AnswerCacheTableArgs(
            name=f"{prefix}-answers",
            point_in_time_recovery=settings.point_in_time_recovery,
            deletion_protection=settings.deletion_protection,
            tags=tags,
        ),
    )
    journal = StreamsTable(
        "streams",
        StreamsTableArgs(
            name=f"{prefix}-streams",
            point_in_time_recovery=settings.point_in_time_recovery,
            deletion_protection=settings.deletion_protection,
            tags=tags,
        ),
    )
    guardrail = (
        Guardrail(
            "guardrail",
            GuardrailArgs(
                name=prefix,
                content_filter_strength=settings.guardrail.content_filter_strength,
                prompt_attack_strength=settings.guardrail.prompt_attack_strength,
                pii_action=settings.guardrail.pii_action,
                blocked_input_message=settings.guardrail.blocked_input_message,
                blocked_output_message=settings.guardrail.blocked_output_message,
                tags=tags,
            ),
        )
        if settings.guardrail.enabled
        else None
    )
    api = EventsApi(
        "events",
        EventsApiArgs(
            name=prefix,
            user_pool_id=identity.user_pool_id,
            region=settings.region,
            log_retention_days=settings.log_retention_days,
            log_level=settings.appsync_log_level,
            tags=tags,
        ),
    )

    worker_name = f"{prefix}-worker"

    def runtime_env(values: list[Any]) -> dict[str, str]:
        metering_name, cache_name, streams_name, endpoint, guardrail_id, guardrail_version = values
        config = settings.runtime_config(
            stack=stack,
            metering_table=metering_name,
            cache_table=cache_name,
            streams_table=streams_name,
            http_endpoint=endpoint,
            worker_function_name=worker_name,
        )
        if guardrail_id:
            config = config.model_copy(update={"guardrail_id": guardrail_id, "guardrail_version": guardrail_version})
        return config.to_env()

    env = pulumi.Output.all(
        metering.table_name,
        cache.table_name,
        journal.table_name,
        api.http_endpoint,
        guardrail.guardrail_id if guardrail else None,
        guardrail.version if guardrail else None,
    ).apply(runtime_env)

    functions = Functions(
        "functions",
        FunctionsArgs(
            name=prefix,
            region=settings.region,
            runtime_env=env,
            metering_table_arn=metering.table_arn,
            cache_table_arn=cache.table_arn,
            streams_table_arn=journal.table_arn,
            api_id=api.api_id,
            model_arns=account.apply(settings.model_arns),
            powertools_layer_version=settings.powertools_layer_version,
            lease_seconds=settings.lease_seconds,
            gatekeeper=sizing(settings.functions.gatekeeper),
            worker=sizing(settings.functions.worker),
            subscribe=sizing(settings.functions.subscribe),
            log_retention_days=settings.log_retention_days,
            log_level=settings.log_level,
            guardrail_arn=guardrail.guardrail_arn if guardrail else None,
            tags=tags,
        ),
    )
    handlers = ChannelHandlers(
        "handlers",
        ChannelHandlersArgs(
            name=prefix,
            api_id=api.api_id,
            subscribe_function_arn=functions.subscribe_arn,
            gatekeeper_function_arn=functions.gatekeeper_arn,
            tags=tags,
        ),
    )
    observability = Observability(
        "observability",
        ObservabilityArgs(
            name=prefix,
            region=settings.region,
            model_ids=settings.model_ids,
            function_names={
                "gatekeeper": functions.gatekeeper_name,
                "worker": functions.worker_name,
                "subscribe": functions.subscribe_name,
            },
            alarms_enabled=settings.alarms,
            dead_letter_queue_name=functions.dead_letter_queue_url.apply(lambda url: url.rsplit("/", 1)[-1]),
            alarm_email=settings.alarm_email,
            stack_monthly_usd=settings.stack_monthly_usd,
            tags=tags,
        ),
    )
    analytics = None
    if settings.analytics.enabled:
        a = settings.analytics
        analytics = Analytics(
            "analytics",
            AnalyticsArgs(
                name=prefix,
                region=settings.region,
                log_group_names=[
                    name.apply(lambda n: f"/aws/lambda/{n}")
                    for name in (functions.gatekeeper_name, functions.worker_name)
                ],
                processor_code=runtime_archive(),
                powertools_layer_arn=powertools_layer_arn(
                    settings.region, "python3.13", settings.powertools_layer_version
                ),
                data_expiry_days=a.data_expiry_days,
                data_transition_days=a.data_transition_days,
                results_expiry_days=a.results_expiry_days,
                bytes_scanned_cutoff=a.bytes_scanned_cutoff_mb * 1024 * 1024,
                queries_dir=Path(__file__).parent / "analytics" / "queries",
                # Saved with the stack's tier limits and the catalog's model prices in place of the example rows.
                render_query=lambda stem, _text: render_query(
                    stem,
                    tier_limits=tier_limits_from_settings(settings),
                    model_prices=settings.model_prices_per_1k(),
                ),
                buffer_seconds=a.buffer_seconds,
                buffer_mb=a.buffer_mb,
                log_retention_days=settings.log_retention_days,
                # Reserved in stacks that reserve the worker's concurrency (prod): the policy pack requires it there.
                processor_reserved_concurrency=settings.analytics_processor_reserved_concurrency,
                tags=tags,
            ),
        )

    web = (
        WebApp(
            "web",
            WebAppArgs(
                name=prefix,
                settings=settings,
                web_dir=Path(__file__).parent / "web",
                user_pool_id=identity.user_pool_id,
                client_id=identity.client_id,
                http_endpoint=api.http_endpoint,
                realtime_endpoint=api.realtime_endpoint,
                tags=tags,
            ),
        )
        if settings.web_app.enabled
        else None
    )

    outputs = {
        "region": settings.region,
        "http_endpoint": api.http_endpoint,
        "realtime_endpoint": api.realtime_endpoint,
        "user_pool_id": identity.user_pool_id,
        "web_client_id": identity.client_id,
        "issuer": identity.issuer,
        "metering_table": metering.table_name,
        "cache_table": cache.table_name,
        "streams_table": journal.table_name,
        "gatekeeper_function": functions.gatekeeper_name,
        "worker_function": functions.worker_name,
        "subscribe_function": functions.subscribe_name,
        "chat_namespace": handlers.chat_namespace_name,
        "responses_namespace": handlers.responses_namespace_name,
        "dashboard_url": observability.dashboard_url,
    }
    if analytics is not None:
        outputs.update(
            analytics_bucket=analytics.data_bucket_name,
            analytics_database=analytics.database_name,
            analytics_workgroup=analytics.workgroup_name,
        )
    if web is not None:
        outputs.update(
            web_url=web.url,
            web_distribution_id=web.distribution_id,
            # What a custom domain's CNAME (or Route 53 alias) points at: this program creates no DNS records.
            web_distribution_domain=web.distribution_domain,
            web_bucket=web.bucket_name,
        )
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs


main()
