"""Run Pulumi code offline under `pulumi.runtime.set_mocks` and capture what it would create.

One machinery for the tests and for `aigw plan`: resources are recorded with their type, name, inputs and
parent, and mocked outputs echo the inputs plus the few computed attributes the program reads (ARNs, ids,
AppSync DNS names), so dependent resources see realistic values.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi

ACCOUNT = "123456789012"
# Real ARN shapes where they matter (IAM linting reads them); anything else gets a generic service ARN.
ARN_FORMATS = {
    "aws:dynamodb/table:Table": "arn:aws:dynamodb:{region}:{account}:table/{name}",
    "aws:sqs/queue:Queue": "arn:aws:sqs:{region}:{account}:{name}",
    "aws:sns/topic:Topic": "arn:aws:sns:{region}:{account}:{name}",
    "aws:cloudwatch/logGroup:LogGroup": "arn:aws:logs:{region}:{account}:log-group:{name}",
    "aws:iam/role:Role": "arn:aws:iam::{account}:role/{name}",
    "aws:cognito/userPool:UserPool": "arn:aws:cognito-idp:{region}:{account}:userpool/{region}_{name}",
    "aws:kms/key:Key": "arn:aws:kms:{region}:{account}:key/{name}",
}


@dataclass
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]
    parent: tuple[str, str] | None  # (type, name) of the parent resource; None for top-level resources
    outputs: dict[str, Any]


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    region: str = "us-east-1"
    resources: list[Recorded] = field(default_factory=list)
    parents: dict[tuple[str, str], tuple[str, str] | None] = field(default_factory=dict)

    def track_parent(self, args: pulumi.ResourceTransformationArgs) -> None:
        parent = args.opts.parent if args.opts else None
        self.parents[(args.type_, args.name)] = (parent._type, parent._name) if parent is not None else None

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        resource_id = f"{args.name}-id"
        short = args.typ.split(":")[1].split("/")[0] if ":" in args.typ else "x"
        outputs.setdefault("name", args.inputs.get("name", args.name))
        arn_format = ARN_FORMATS.get(args.typ, "arn:aws:{service}:{region}:{account}:{name}")
        outputs.setdefault(
            "arn", arn_format.format(service=short, region=self.region, account=ACCOUNT, name=outputs["name"])
        )
        outputs.setdefault("id", resource_id)
        if args.typ == "aws:appsync/api:Api":
            outputs["apiId"] = f"{args.name}apiid"
            outputs["arn"] = f"arn:aws:appsync:{self.region}:{ACCOUNT}:apis/{outputs['apiId']}"
            outputs["dns"] = {
                "HTTP": f"{args.name}apiid.appsync-api.{self.region}.amazonaws.com",
                "REALTIME": f"{args.name}apiid.appsync-realtime-api.{self.region}.amazonaws.com",
            }
        if args.typ == "aws:lambda/function:Function":
            outputs["arn"] = f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{outputs['name']}"
            outputs["invokeArn"] = f"arn:aws:apigateway:{self.region}:lambda:path/{outputs['arn']}/invocations"
        if args.typ == "aws:bedrock/guardrail:Guardrail":
            outputs.update(
                guardrailId=f"{args.name}gr", version="DRAFT",
                guardrailArn=f"arn:aws:bedrock:{self.region}:{ACCOUNT}:guardrail/{args.name}gr",
            )
        if args.typ == "aws:bedrock/guardrailVersion:GuardrailVersion":
            outputs["version"] = "1"
        if args.typ == "aws:sqs/queue:Queue":
            outputs["url"] = f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT}/{outputs['name']}"
        if args.typ in ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"):
            bucket = outputs.get("bucket", args.name)
            outputs.setdefault("bucket", bucket)
            outputs["bucketRegionalDomainName"] = f"{bucket}.s3.{self.region}.amazonaws.com"
        if args.typ == "aws:cloudfront/distribution:Distribution":
            resource_id = "E" + hashlib.sha256(args.name.encode()).hexdigest()[:13].upper()  # like E2QWRUHAPOMQZL
            outputs["id"] = resource_id
            outputs["arn"] = f"arn:aws:cloudfront::{ACCOUNT}:distribution/{resource_id}"
            outputs["domainName"] = f"d{resource_id[1:].lower()}.cloudfront.net"
        if args.typ == "aws:cognito/userPool:UserPool":
            outputs["endpoint"] = f"cognito-idp.{self.region}.amazonaws.com/{self.region}_{args.name}"
        self.resources.append(
            Recorded(args.typ, args.name, dict(args.inputs), self.parents.get((args.typ, args.name)), outputs)
        )
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        if args.token == "aws:index/getRegion:getRegion":
            return {"name": self.region, "region": self.region, "id": self.region}, []
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/test", "userId": "test"}, []
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com"}, []
        if args.token == "aws:iam/getPolicyDocument:getPolicyDocument":
            return {"json": json.dumps(_policy_document(args.args))}, []
        return {}, []

    def of_type(self, type_: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> Recorded:
        [found] = self.of_type(type_)
        return found


def _policy_document(args: dict[str, Any]) -> dict[str, Any]:
    statements = []
    for s in args.get("statements", []):
        statement: dict[str, Any] = {"Effect": s.get("effect", "Allow")}
        if "actions" in s:
            statement["Action"] = s["actions"]
        if "resources" in s:
            statement["Resource"] = s["resources"]
        if "principals" in s:
            statement["Principal"] = {p["type"]: p["identifiers"] for p in s["principals"]}
        statements.append(statement)
    return {"Version": "2012-10-17", "Statement": statements}


def run(program: Callable[[], Any], *, project: str = "ai-gateway", stack: str = "dev",
        config: dict[str, str] | None = None, region: str = "us-east-1") -> RecordingMocks:
    """Run `program` (a function that declares resources) under mocks; return everything it declared.

    `config` keys are full Pulumi keys (`ai-gateway:tiers`, `aws:region`); values are strings as Pulumi
    stores them (structured values as JSON).
    """
    mocks = RecordingMocks(region=region)
    # Pulumi's sync helpers use the thread's current event loop; code that ran asyncio.run() before (the
    # local gateway's clients, in the same test process) leaves none behind.
    try:
        loop = asyncio.get_event_loop()
        if loop.is_closed():
            raise RuntimeError
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False)
    pulumi.runtime.set_all_config({"aws:region": region, **(config or {})})

    def record_parent(args: pulumi.ResourceTransformationArgs) -> None:
        mocks.track_parent(args)  # mock resource args carry no parent: an in-process transformation sees it
        return None

    @pulumi.runtime.test
    def _run() -> Any:
        pulumi.runtime.register_stack_transformation(record_parent)
        result = program()
        return result if isinstance(result, pulumi.Output) else pulumi.Output.from_input(None)

    _run()
    return mocks
