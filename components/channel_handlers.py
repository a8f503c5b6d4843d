"""The two channel namespaces of the Events API and the Lambda handlers AppSync calls directly on them.

Separate from `components.events_api.EventsApi` to break a cycle: the functions need the API's endpoint,
these handlers need the functions' ARNs. Order: EventsApi, then the functions, then ChannelHandlers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.events_api import APPSYNC_TRUST_POLICY
from runtime.channels import CHAT_NAMESPACE, NAMESPACE_AUTH, RESPONSES_NAMESPACE

__all__ = [
    "DATA_SOURCE_NAME_PATTERN",
    "GATEKEEPER_DATA_SOURCE",
    "SUBSCRIBE_DATA_SOURCE",
    "ChannelHandlers",
    "ChannelHandlersArgs",
]

DATA_SOURCE_NAME_PATTERN = r"[_A-Za-z][_0-9A-Za-z]*"
"""AppSync ``ResourceName``: no hyphens, so data-source names are set explicitly, never Pulumi auto-names."""

GATEKEEPER_DATA_SOURCE = "gatekeeper"
"""Checks and admits every ``chat`` publish (onPublish)."""
SUBSCRIBE_DATA_SOURCE = "subscribe_handler"
"""Authorizes every ``responses`` subscription (onSubscribe)."""

_DIRECT = "DIRECT"
_REQUEST_RESPONSE = "REQUEST_RESPONSE"  # the handler's answer decides; EVENT would ignore it


@dataclass(frozen=True)
class ChannelHandlersArgs:
    """The API to attach to and the two functions AppSync invokes; the caller reads stack config."""

    name: str
    """Prefix of the child resources' Pulumi names."""
    api_id: pulumi.Input[str]
    """`EventsApi.api_id` (AppSync's ``apiId``, not the Pulumi ``id``)."""
    subscribe_function_arn: pulumi.Input[str]
    gatekeeper_function_arn: pulumi.Input[str]
    tags: Mapping[str, str] = field(default_factory=dict)


class ChannelHandlers(pulumi.ComponentResource):
    """``chat`` and ``responses`` with their auth narrowed per direction and their handlers wired DIRECT.

    - ``chat``: users (Cognito) publish; only IAM may subscribe, so no user ever reads another's requests.
      Every publish is decided by the gatekeeper, synchronously.
    - ``responses``: only IAM (the worker) publishes; users (Cognito) subscribe, each subscription decided
      by the subscribe handler, synchronously.
    AppSync invokes both functions through one service role allowed to call exactly those two ARNs.
    """

    chat_namespace_name: pulumi.Output[str]
    responses_namespace_name: pulumi.Output[str]
    gatekeeper_data_source_name: pulumi.Output[str]
    subscribe_data_source_name: pulumi.Output[str]
    service_role_arn: pulumi.Output[str]

    def __init__(
        self, resource_name: str, args: ChannelHandlersArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ai-gateway:events:ChannelHandlers", resource_name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        service_role = aws.iam.Role(
            f"{resource_name}-handlers",
            description=f"{args.name}: lets AppSync invoke the channel-namespace handlers",
            assume_role_policy=APPSYNC_TRUST_POLICY,
            tags=tags,
            opts=child,
        )
        invoke_policy = aws.iam.RolePolicy(
            f"{resource_name}-handlers",
            role=service_role.id,
            policy=pulumi.Output.json_dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": ["lambda:InvokeFunction"],
                            "Resource": [args.subscribe_function_arn, args.gatekeeper_function_arn],
                        }
                    ],
                }
            ),
            opts=child,
        )

        # Data sources wait for the policy so AppSync never holds a role that cannot yet invoke.
        after_policy = pulumi.ResourceOptions(parent=self, depends_on=[invoke_policy])
        def lambda_data_source(key: str, name: str, function_arn: pulumi.Input[str]) -> aws.appsync.DataSource:
            return aws.appsync.DataSource(
                f"{resource_name}-{key}",
                api_id=args.api_id,
                name=name,
                type="AWS_LAMBDA",
                lambda_config=aws.appsync.DataSourceLambdaConfigArgs(function_arn=function_arn),
                service_role_arn=service_role.arn,
                opts=after_policy,
            )

        def namespace(
            name: str, handlers: aws.appsync.ChannelNamespaceHandlerConfigsArgs
        ) -> aws.appsync.ChannelNamespace:
            # Auth modes from the runtime's table: the same one the local gateway's namespaces use.
            return aws.appsync.ChannelNamespace(
                f"{resource_name}-{name}",
                api_id=args.api_id,
                name=name,
                publish_auth_modes=[
                    aws.appsync.ChannelNamespacePublishAuthModeArgs(auth_type=a)
                    for a in NAMESPACE_AUTH[name]["publish"]
                ],
                subscribe_auth_modes=[
                    aws.appsync.ChannelNamespaceSubscribeAuthModeArgs(auth_type=a)
                    for a in NAMESPACE_AUTH[name]["subscribe"]
                ],
                handler_configs=handlers,
                tags=tags,
                opts=child,
            )

        gatekeeper = lambda_data_source("gatekeeper", GATEKEEPER_DATA_SOURCE, args.gatekeeper_function_arn)
        subscribe = lambda_data_source("subscribe", SUBSCRIBE_DATA_SOURCE, args.subscribe_function_arn)
        # The two handler configs differ only in their typed argument classes (onPublish vs onSubscribe).
        chat = namespace(
            CHAT_NAMESPACE,
            aws.appsync.ChannelNamespaceHandlerConfigsArgs(
                on_publish=aws.appsync.ChannelNamespaceHandlerConfigsOnPublishArgs(
                    behavior=_DIRECT,
                    integration=aws.appsync.ChannelNamespaceHandlerConfigsOnPublishIntegrationArgs(
                        data_source_name=gatekeeper.name,
                        lambda_config=aws.appsync.ChannelNamespaceHandlerConfigsOnPublishIntegrationLambdaConfigArgs(
                            invoke_type=_REQUEST_RESPONSE
                        ),
                    ),
                ),
            ),
        )
        responses = namespace(
            RESPONSES_NAMESPACE,
            aws.appsync.ChannelNamespaceHandlerConfigsArgs(
                on_subscribe=aws.appsync.ChannelNamespaceHandlerConfigsOnSubscribeArgs(
                    behavior=_DIRECT,
                    integration=aws.appsync.ChannelNamespaceHandlerConfigsOnSubscribeIntegrationArgs(
                        data_source_name=subscribe.name,
                        lambda_config=aws.appsync.ChannelNamespaceHandlerConfigsOnSubscribeIntegrationLambdaConfigArgs(
                            invoke_type=_REQUEST_RESPONSE
                        ),
                    ),
                ),
            ),
        )

        self.chat_namespace_name = chat.name
        self.responses_namespace_name = responses.name
        self.gatekeeper_data_source_name = gatekeeper.name
        self.subscribe_data_source_name = subscribe.name
        self.service_role_arn = service_role.arn
        self.register_outputs(
            {
                "chat_namespace_name": self.chat_namespace_name,
                "responses_namespace_name": self.responses_namespace_name,
                "gatekeeper_data_source_name": self.gatekeeper_data_source_name,
                "subscribe_data_source_name": self.subscribe_data_source_name,
                "service_role_arn": self.service_role_arn,
            }
        )
