"""The AppSync Events API: endpoints, auth providers and its own bounded, least-privilege logging.

Channel namespaces and their Lambda handlers live in `components.channel_handlers.ChannelHandlers`, not here:
the functions need this API's HTTP endpoint and the handlers need the functions' ARNs, so the API is built
first, then the functions, then the handlers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import pulumi
import pulumi_aws as aws

from components.settings import LOG_RETENTION_DAYS
from runtime.channels import COGNITO_AUTH, IAM_AUTH

__all__ = ["APPSYNC_TRUST_POLICY", "COGNITO", "IAM", "LOG_RETENTION_DAYS", "EventsApi", "EventsApiArgs", "LogLevel"]

COGNITO = COGNITO_AUTH
IAM = IAM_AUTH

LogLevel = Literal["NONE", "ERROR", "INFO", "DEBUG", "ALL"]


_API_NAME = re.compile(r"[A-Za-z0-9_\- ]{1,50}")  # AppSync CreateApi ``name`` (botocore shape ApiName)


@dataclass(frozen=True)
class EventsApiArgs:
    """What the Events API needs; the caller reads stack config, the component never does.

    Values AWS would only reject at deploy time (API name, retention, log level) are checked here, at preview.
    """

    name: str
    """The AppSync API name (1-50 letters, digits, ``_``, ``-``, spaces); also prefixes child resource names."""
    user_pool_id: pulumi.Input[str]
    region: str
    """Region of the Cognito user pool."""
    log_retention_days: int
    log_level: LogLevel = "ERROR"
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if _API_NAME.fullmatch(self.name) is None:
            raise ValueError(f"Events API name {self.name!r}: use 1-50 letters, digits, '_', '-' or spaces")
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise ValueError(
                f"log_retention_days={self.log_retention_days} is not a CloudWatch Logs retention period; use one"
                f" of {sorted(LOG_RETENTION_DAYS)}"
            )
        if self.log_level not in get_args(LogLevel):
            raise ValueError(f"log_level={self.log_level!r}; use one of {get_args(LogLevel)}")


APPSYNC_TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "appsync.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
)
"""Trust policy of a role that AppSync itself assumes (logging, data sources)."""


class EventsApi(pulumi.ComponentResource):
    """An AppSync Event API: Cognito users and IAM callers (the worker) on one connection endpoint.

    Cognito is the default for publish and subscribe; each namespace narrows that (see `ChannelHandlers`).
    AppSync writes its logs to ``/aws/appsync/apis/<apiId>``: the group is created here with a retention, and
    the logging role may only write streams into it (no ``logs:CreateLogGroup``, so nothing unbounded appears).
    """

    api_id: pulumi.Output[str]
    api_arn: pulumi.Output[str]
    http_domain: pulumi.Output[str]
    realtime_domain: pulumi.Output[str]
    http_endpoint: pulumi.Output[str]
    """``https://<http domain>/event``: HTTP publish; its domain is also the ``host`` of every auth map."""
    realtime_endpoint: pulumi.Output[str]
    """``wss://<realtime domain>/event/realtime``: the WebSocket endpoint."""
    log_group_name: pulumi.Output[str]

    def __init__(self, resource_name: str, args: EventsApiArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ai-gateway:events:EventsApi", resource_name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        # The role exists before the API (the API names it); its permissions come once the log group exists.
        logging_role = aws.iam.Role(
            f"{resource_name}-logging",
            description=f"AppSync Events API {args.name}: writes the API's logs",
            assume_role_policy=APPSYNC_TRUST_POLICY,
            tags=tags,
            opts=child,
        )

        api = aws.appsync.Api(
            f"{resource_name}-api",
            name=args.name,
            event_config=aws.appsync.ApiEventConfigArgs(
                auth_providers=[
                    aws.appsync.ApiEventConfigAuthProviderArgs(
                        auth_type=COGNITO,
                        cognito_config=aws.appsync.ApiEventConfigAuthProviderCognitoConfigArgs(
                            user_pool_id=args.user_pool_id,
                            aws_region=args.region,
                        ),
                    ),
                    aws.appsync.ApiEventConfigAuthProviderArgs(auth_type=IAM),
                ],
                connection_auth_modes=[
                    aws.appsync.ApiEventConfigConnectionAuthModeArgs(auth_type=COGNITO),
                    aws.appsync.ApiEventConfigConnectionAuthModeArgs(auth_type=IAM),
                ],
                default_publish_auth_modes=[aws.appsync.ApiEventConfigDefaultPublishAuthModeArgs(auth_type=COGNITO)],
                default_subscribe_auth_modes=[
                    aws.appsync.ApiEventConfigDefaultSubscribeAuthModeArgs(auth_type=COGNITO)
                ],
                log_config=aws.appsync.ApiEventConfigLogConfigArgs(
                    cloudwatch_logs_role_arn=logging_role.arn,
                    log_level=args.log_level,
                ),
            ),
            tags=tags,
            opts=child,
        )

        # The exact group AppSync writes to, so its retention is ours and not "never expire".
        log_group = aws.cloudwatch.LogGroup(
            f"{resource_name}-logs",
            name=api.api_id.apply(lambda api_id: f"/aws/appsync/apis/{api_id}"),
            retention_in_days=args.log_retention_days,
            tags=tags,
            opts=child,
        )

        aws.iam.RolePolicy(
            f"{resource_name}-logging",
            role=logging_role.id,
            policy=pulumi.Output.json_dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                            # The group and the streams inside it (``<group arn>:*``); nothing else.
                            "Resource": [log_group.arn, pulumi.Output.concat(log_group.arn, ":*")],
                        }
                    ],
                }
            ),
            opts=child,
        )

        self.api_id = api.api_id
        self.api_arn = api.api_arn
        self.http_domain = api.dns.apply(lambda dns: dns["HTTP"])
        self.realtime_domain = api.dns.apply(lambda dns: dns["REALTIME"])
        self.http_endpoint = pulumi.Output.concat("https://", self.http_domain, "/event")
        self.realtime_endpoint = pulumi.Output.concat("wss://", self.realtime_domain, "/event/realtime")
        self.log_group_name = log_group.name
        self.register_outputs(
            {
                "api_id": self.api_id,
                "api_arn": self.api_arn,
                "http_domain": self.http_domain,
                "realtime_domain": self.realtime_domain,
                "http_endpoint": self.http_endpoint,
                "realtime_endpoint": self.realtime_endpoint,
                "log_group_name": self.log_group_name,
            }
        )
