"""The Bedrock guardrail the worker passes on every model call: content filters, prompt-attack detection, PII.

The worker calls a published version, never the DRAFT: an edit to the guardrail changes nothing in production
until a new version exists. A `GuardrailVersion` is immutable (no update API), and its description carries a
fingerprint of the policy, so a changed policy replaces it, which publishes a new version; the old one is deleted
at the end of the update, after whatever reads `version` has moved on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import pulumi
import pulumi_aws as aws

__all__ = [
    "CONTENT_FILTER_TYPES",
    "DEFAULT_PII_ENTITIES",
    "PROMPT_ATTACK",
    "Guardrail",
    "GuardrailArgs",
]

Strength = Literal["LOW", "MEDIUM", "HIGH"]
PromptAttackStrength = Literal["NONE", "LOW", "MEDIUM", "HIGH"]
PiiAction = Literal["ANONYMIZE", "BLOCK"]

CONTENT_FILTER_TYPES = ("SEXUAL", "VIOLENCE", "HATE", "INSULTS", "MISCONDUCT")
"""Filtered at the same strength on prompts and answers."""
PROMPT_ATTACK = "PROMPT_ATTACK"
"""Jailbreaks and prompt injection: prompts only (Bedrock requires output strength NONE for it)."""

DEFAULT_PII_ENTITIES = (
    "EMAIL",
    "PHONE",
    "CREDIT_DEBIT_CARD_NUMBER",
    "CREDIT_DEBIT_CARD_CVV",
    "CREDIT_DEBIT_CARD_EXPIRY",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "US_SOCIAL_SECURITY_NUMBER",
    "US_BANK_ACCOUNT_NUMBER",
    "INTERNATIONAL_BANK_ACCOUNT_NUMBER",
    "PASSWORD",
)
"""Bedrock ``GuardrailPiiEntityType`` names: contact details, payment data, credentials, national ids."""

_NAME = re.compile(r"[0-9A-Za-z_-]{1,50}")  # CreateGuardrail ``name`` (botocore shape GuardrailName)
_PII_ENTITY = re.compile(r"[A-Z][A-Z_]*")
_MESSAGE_LENGTH = (1, 500)  # GuardrailBlockedMessaging


@dataclass(frozen=True, kw_only=True)
class GuardrailArgs:
    """The guardrail's policy; the caller reads stack config. Checked here so a typo fails at preview."""

    name: str
    """The Bedrock guardrail name (1-50 letters, digits, ``_``, ``-``); also prefixes child resource names."""
    content_filter_strength: Strength = "HIGH"
    prompt_attack_strength: PromptAttackStrength = "HIGH"
    """Applied to prompts only; ``NONE`` turns prompt-attack detection off."""
    pii_action: PiiAction = "ANONYMIZE"
    """``ANONYMIZE`` masks the entity (``{EMAIL}``) and lets the text through; ``BLOCK`` refuses it."""
    pii_entities: tuple[str, ...] = DEFAULT_PII_ENTITIES
    blocked_input_message: str = "Sorry, this request cannot be answered: it was blocked by the gateway's guardrail."
    blocked_output_message: str = "Sorry, the answer was withheld: it was blocked by the gateway's guardrail."
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if _NAME.fullmatch(self.name) is None:
            raise ValueError(f"guardrail name {self.name!r}: use 1-50 letters, digits, '_' or '-'")
        _check_choice("content_filter_strength", self.content_filter_strength, Strength)
        _check_choice("prompt_attack_strength", self.prompt_attack_strength, PromptAttackStrength)
        _check_choice("pii_action", self.pii_action, PiiAction)
        if not isinstance(self.pii_entities, tuple) or not self.pii_entities:
            raise ValueError("pii_entities must be a non-empty tuple of Bedrock PII entity types")
        bad = [e for e in self.pii_entities if not isinstance(e, str) or _PII_ENTITY.fullmatch(e) is None]
        if bad:
            raise ValueError(f"pii_entities {bad}: use Bedrock's entity type names, e.g. EMAIL or AWS_ACCESS_KEY")
        if len(set(self.pii_entities)) != len(self.pii_entities):
            raise ValueError(f"pii_entities lists an entity twice: {self.pii_entities}")
        for label, message in (("blocked_input_message", self.blocked_input_message),
                               ("blocked_output_message", self.blocked_output_message)):
            if not _MESSAGE_LENGTH[0] <= len(message) <= _MESSAGE_LENGTH[1]:
                raise ValueError(f"{label} must be {_MESSAGE_LENGTH[0]}-{_MESSAGE_LENGTH[1]} characters")

    def policy(self) -> dict[str, Any]:
        """Everything a guardrail version snapshots, as plain data (the version's fingerprint is taken of it)."""
        filters = [{"type": t, "input": self.content_filter_strength, "output": self.content_filter_strength}
                   for t in CONTENT_FILTER_TYPES]
        filters.append({"type": PROMPT_ATTACK, "input": self.prompt_attack_strength, "output": "NONE"})
        return {
            "filters": filters,
            "pii": [{"type": e, "action": self.pii_action} for e in self.pii_entities],
            "blocked_input": self.blocked_input_message,
            "blocked_output": self.blocked_output_message,
        }


def _check_choice(label: str, value: object, choices: Any) -> None:
    if value not in get_args(choices):
        raise ValueError(f"{label}={value!r}; use one of {get_args(choices)}")


class Guardrail(pulumi.ComponentResource):
    """A Bedrock guardrail and its published version; pass `guardrail_id` and `version` to the worker."""

    guardrail_id: pulumi.Output[str]
    guardrail_arn: pulumi.Output[str]
    version: pulumi.Output[str]
    """The published version (``"1"``, ``"2"``...), never ``DRAFT``."""

    def __init__(self, resource_name: str, args: GuardrailArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ai-gateway:guardrails:Guardrail", resource_name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        policy = args.policy()

        guardrail = aws.bedrock.Guardrail(
            f"{resource_name}-guardrail",
            name=args.name,
            description="ai-gateway: content filters, prompt-attack detection and PII handling on every model call",
            blocked_input_messaging=args.blocked_input_message,
            blocked_outputs_messaging=args.blocked_output_message,
            content_policy_config=aws.bedrock.GuardrailContentPolicyConfigArgs(
                filters_configs=[
                    aws.bedrock.GuardrailContentPolicyConfigFiltersConfigArgs(
                        type=f["type"], input_strength=f["input"], output_strength=f["output"]
                    )
                    for f in policy["filters"]
                ]
            ),
            sensitive_information_policy_config=aws.bedrock.GuardrailSensitiveInformationPolicyConfigArgs(
                pii_entities_configs=[
                    aws.bedrock.GuardrailSensitiveInformationPolicyConfigPiiEntitiesConfigArgs(
                        type=p["type"], action=p["action"]
                    )
                    for p in policy["pii"]
                ]
            ),
            tags=dict(args.tags),
            opts=child,
        )

        # The description is immutable on a version (changing it replaces the version): a new fingerprint, a
        # new published version. Sorted JSON, so only a real policy change moves it.
        fingerprint = hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).hexdigest()[:16]
        version = aws.bedrock.GuardrailVersion(
            f"{resource_name}-version",
            guardrail_arn=guardrail.guardrail_arn,
            description=f"policy {fingerprint}",
            opts=child,
        )

        self.guardrail_id = guardrail.guardrail_id
        self.guardrail_arn = guardrail.guardrail_arn
        self.version = version.version
        self.register_outputs(
            {"guardrail_id": self.guardrail_id, "guardrail_arn": self.guardrail_arn, "version": self.version}
        )
