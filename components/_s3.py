"""Private S3 buckets, declared one way for every component that keeps data in S3 (analytics, the web page).

Private means: S3-managed encryption (SSE-S3, so no reader needs KMS grants — CloudFront's OAC and Firehose
included), all four public-access blocks, bucket-owner-enforced ownership (no ACLs), and one bucket policy
that refuses plain HTTP plus whatever access the owner grants. The policy rules `s3-encryption-at-rest` and
`s3-public-access-blocked` (policy/rules.py) check the first two on every bucket the program declares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

__all__ = ["PrivateBucket", "policy_document", "private_bucket"]


def policy_document(*statements: Mapping[str, Any]) -> pulumi.Output[str]:
    """An IAM policy document of `statements` (which may hold Outputs), as JSON."""
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": list(statements)})


@dataclass(frozen=True)
class PrivateBucket:
    resource_name: str
    bucket: aws.s3.Bucket
    arn: pulumi.Output[str]
    public_access_block: aws.s3.BucketPublicAccessBlock

    def policy(
        self, *grants: Mapping[str, Any], parent: pulumi.Resource, suffix: str = "policy"
    ) -> aws.s3.BucketPolicy:
        """The bucket's one policy: TLS only, then `grants`. Declared after the public access block, which S3
        must have in place before it accepts a policy (and which it checks the policy against)."""
        return aws.s3.BucketPolicy(
            f"{self.resource_name}-{suffix}",
            bucket=self.bucket.id,
            policy=policy_document(
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [self.arn, pulumi.Output.concat(self.arn, "/*")],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
                *grants,
            ),
            opts=pulumi.ResourceOptions(parent=parent, depends_on=[self.public_access_block]),
        )


def private_bucket(
    resource_name: str,
    *,
    bucket_name: pulumi.Input[str],
    partition: pulumi.Input[str],
    force_destroy: bool,
    tags: Mapping[str, str],
    parent: pulumi.Resource,
) -> PrivateBucket:
    """A private, encrypted bucket named `bucket_name`; its resources are named ``{resource_name}-...``."""
    child = pulumi.ResourceOptions(parent=parent)
    bucket = aws.s3.Bucket(
        f"{resource_name}-bucket", bucket=bucket_name, force_destroy=force_destroy, tags=dict(tags), opts=child
    )
    aws.s3.BucketServerSideEncryptionConfiguration(
        f"{resource_name}-sse",
        bucket=bucket.id,
        rules=[
            aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=(
                    aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="AES256"
                    )
                ),
            )
        ],
        opts=child,
    )
    block = aws.s3.BucketPublicAccessBlock(
        f"{resource_name}-public-access",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=child,
    )
    aws.s3.BucketOwnershipControls(
        f"{resource_name}-ownership",
        bucket=bucket.id,
        rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
        opts=child,
    )
    arn = pulumi.Output.format("arn:{0}:s3:::{1}", partition, bucket.bucket)
    return PrivateBucket(resource_name, bucket, arn, block)
