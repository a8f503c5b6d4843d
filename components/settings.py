"""One settings model for a stack, validated once.

`__main__.py` feeds it from Pulumi config (`StackSettings.from_pulumi_config`), the local gateway from the
stack file (`StackSettings.from_stack_file("Pulumi.dev.yaml")`): one parser, two sources. Components never
read config; they receive the typed pieces they need. Errors name the key and the command that fixes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from components.models import CATALOG_FILE, ModelProblem, check_model, display_name, load_catalog, price_of
from runtime.config import RuntimeConfig, TierSettings

POWERTOOLS_LAYERS_FILE = Path(__file__).with_name("powertools_layers.yaml")


def powertools_layer_releases() -> dict[int, str]:
    """Managed Powertools layer version -> the PyPI release it holds (dated, sourced data in POWERTOOLS_LAYERS_FILE)."""
    document = yaml.safe_load(POWERTOOLS_LAYERS_FILE.read_text())
    return {int(row["layer"]): str(row["release"]) for row in document["layers"]}

def aws_partition(region: str) -> str:
    """The ARN partition of `region` (`aws`, `aws-cn`, `aws-us-gov`, ...), from botocore's bundled endpoint data."""
    import boto3

    return boto3.session.Session().get_partition_for_region(region)


PROJECT = "ai-gateway"
ANALYTICS_PROCESSOR_RESERVED = 5
# A Bedrock model id (`provider.model...`), optionally behind a cross-region inference-profile prefix.
MODEL_ID = re.compile(
    r"^(?:(?P<geo>us|eu|apac|us-gov|global|jp|au|ca)\.)?[a-z0-9-]{1,63}\.[a-z0-9-]{1,63}(?:[.:][a-z0-9-]{1,63})*$"
)
# CloudWatch Logs accepts only these retention periods (PutRetentionPolicy).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                      2922, 3288, 3653)
# A fully qualified DNS name as CloudFront aliases take it: two or more lowercase LDH labels (1-63 characters, no
# leading or trailing '-'), no trailing dot. ASCII only (punycode `xn--` labels are LDH), hence [0-9], not \d.
DNS_NAME = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
DNS_NAME_MAX_LENGTH = 253
# CloudFront reads viewer certificates from ACM in us-east-1 only, whatever region the stack is in.
CLOUDFRONT_CERTIFICATE_REGION = "us-east-1"
ACM_CERTIFICATE_ARN = re.compile(
    r"arn:aws[-a-z]*:acm:(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]):[0-9]{12}:certificate/[A-Za-z0-9-]+"
)


class _Camel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class FunctionSizing(_Camel):
    memory_mb: int = Field(ge=128, le=10_240)
    timeout_s: int = Field(ge=1, le=900)
    reserved_concurrency: int | None = Field(default=None, ge=1)


class FunctionsSettings(_Camel):
    gatekeeper: FunctionSizing = FunctionSizing(memory_mb=256, timeout_s=10)
    # The worker streams whole answers: its timeout bounds the longest generation.
    worker: FunctionSizing = FunctionSizing(memory_mb=512, timeout_s=300)
    subscribe: FunctionSizing = FunctionSizing(memory_mb=128, timeout_s=5)


class GuardrailSettings(_Camel):
    enabled: bool = False
    content_filter_strength: Literal["LOW", "MEDIUM", "HIGH"] = "HIGH"
    prompt_attack_strength: Literal["LOW", "MEDIUM", "HIGH"] = "HIGH"
    pii_action: Literal["ANONYMIZE", "BLOCK"] = "ANONYMIZE"
    blocked_input_message: str = "Sorry, this request can't be answered here."
    blocked_output_message: str = "Sorry, the answer was withheld by the content policy."


class AnalyticsSettings(_Camel):
    """Usage records -> Firehose -> Parquet in S3 -> Glue/Athena."""

    enabled: bool = True
    data_expiry_days: int = Field(default=400, ge=1)
    data_transition_days: int | None = Field(default=90, ge=30)
    results_expiry_days: int = Field(default=30, ge=1)
    bytes_scanned_cutoff_mb: int = Field(default=1024, ge=10)
    buffer_seconds: int = Field(default=300, ge=60, le=900)
    buffer_mb: int = Field(default=64, ge=64, le=128)


class WebAppSettings(_Camel):
    """The chat page of `web/` on CloudFront (`components.web_app`); off unless a stack turns it on."""

    enabled: bool = False
    price_class: Literal["PriceClass_100", "PriceClass_200", "PriceClass_All"] = "PriceClass_100"
    """CloudFront edge locations: 100 = North America, Europe, Israel (cheapest); All = every location."""
    domain_name: str | None = None
    """The page's own name (``chat.example.com``) instead of ``*.cloudfront.net``; needs `certificate_arn`."""
    certificate_arn: str | None = None
    """An ACM certificate in us-east-1 covering `domain_name` (CloudFront takes viewer certificates only there)."""

    @field_validator("domain_name")
    @classmethod
    def _domain_is_a_dns_name(cls, value: str | None) -> str | None:
        if value is not None and not (len(value) <= DNS_NAME_MAX_LENGTH and DNS_NAME.fullmatch(value)):
            raise ValueError(
                f"{value!r} is not a DNS name: give lowercase labels (a-z, 0-9, '-') joined by dots, such as "
                "chat.example.com — no scheme, path, port, wildcard or trailing dot"
            )
        return value

    @field_validator("certificate_arn")
    @classmethod
    def _certificate_is_an_acm_arn_in_us_east_1(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = ACM_CERTIFICATE_ARN.fullmatch(value)
        if match and match["region"] == CLOUDFRONT_CERTIFICATE_REGION:
            return value
        if match:
            raise ValueError(
                f"{value!r} is an ACM certificate in {match['region']}, but CloudFront only accepts certificates "
                f"from {CLOUDFRONT_CERTIFICATE_REGION}: request or import the certificate there"
            )
        raise ValueError(
            f"{value!r} is not an ACM certificate ARN (arn:aws:acm:{CLOUDFRONT_CERTIFICATE_REGION}:<account>:"
            f"certificate/<id>); CloudFront only accepts certificates from {CLOUDFRONT_CERTIFICATE_REGION}"
        )

    @model_validator(mode="after")
    def _domain_and_certificate_together(self) -> WebAppSettings:
        # Keys as the stack file spells them: this model only ever sits at `webApp`.
        if self.domain_name is not None and self.certificate_arn is None:
            raise _KeyedError(
                "webApp.certificateArn",
                f"webApp.domainName is {self.domain_name!r} but no certificate is set: give the ARN of an ACM "
                f"certificate in {CLOUDFRONT_CERTIFICATE_REGION} that covers it (or unset webApp.domainName)",
            )
        if self.certificate_arn is not None and self.domain_name is None:
            raise _KeyedError(
                "webApp.domainName",
                "webApp.certificateArn is set but no domain name: give the name the certificate covers, such as "
                "chat.example.com (or unset webApp.certificateArn)",
            )
        return self


class FederationProviderSettings(_Camel):
    name: str = Field(min_length=1, max_length=32)
    type: Literal["OIDC", "SAML", "Google", "Facebook", "LoginWithAmazon", "SignInWithApple"]
    details: dict[str, str]
    attribute_mapping: dict[str, str] = {"email": "email"}


class StackSettings(_Camel):
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    tiers: tuple[TierSettings, ...] = Field(min_length=1)
    default_tier: str
    log_prompts: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_retention_days: int = 14
    point_in_time_recovery: bool = False
    deletion_protection: bool = False
    mfa: Literal["OFF", "OPTIONAL", "ON"] = "OPTIONAL"
    cache_namespace: str = "default"
    cache_cost_tokens: int = Field(default=0, ge=0)
    cache_ttl_days: int = Field(default=30, ge=1, le=3650)
    flush_interval_ms: int = Field(default=50, gt=0, le=1000)
    max_messages: int = Field(default=40, gt=0)
    max_message_chars: int = Field(default=32_000, gt=0)
    max_total_chars: int = Field(default=120_000, gt=0)
    lease_seconds: int = Field(default=900, ge=60)
    # The stack's monthly USD ceiling ("never surprise the finance team"): every request is admitted against it,
    # priced by the model catalog. Its starting value; `aigw budgets set --stack-monthly-usd` changes it live.
    stack_monthly_usd: float | None = Field(default=None, gt=0)
    functions: FunctionsSettings = FunctionsSettings()
    powertools_layer_version: int = Field(default=34, ge=1)
    guardrail: GuardrailSettings = GuardrailSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    web_app: WebAppSettings = WebAppSettings()
    alarms: bool = True
    alarm_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    federation: tuple[FederationProviderSettings, ...] = ()
    hosted_domain_prefix: str | None = Field(default=None, pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
    callback_urls: tuple[str, ...] = ()
    tags: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _no_prices_in_the_stack(cls, values: Any) -> Any:
        if isinstance(values, Mapping) and "modelPrices" in values:
            raise _KeyedError(
                "modelPrices",
                f"model prices come from the model catalog ({CATALOG_FILE.name}) now, one source for cost and "
                "analytics: remove modelPrices from the stack (pulumi config rm modelPrices)",
            )
        return values

    @field_validator("tiers")
    @classmethod
    def _models_are_catalogued_and_alive(cls, tiers: tuple[TierSettings, ...]) -> tuple[TierSettings, ...]:
        today = datetime.now(UTC).date()
        for tier in tiers:
            for model in tier.models:
                if not MODEL_ID.match(model):
                    raise ValueError(f"tier {tier.name!r}: {model!r} is not a Bedrock model id (provider.model)")
                try:
                    check_model(model, today=today)
                except ModelProblem as problem:
                    raise ValueError(f"tier {tier.name!r}: {problem}") from None
                entry = load_catalog().entry(model)
                if entry is not None and tier.max_output_tokens > entry.max_output_tokens:
                    raise ValueError(
                        f"tier {tier.name!r}: maxOutputTokens {tier.max_output_tokens} exceeds {entry.name}'s "
                        f"{entry.max_output_tokens}: Bedrock would refuse every request to {model!r}"
                    )
        return tiers

    @field_validator("powertools_layer_version")
    @classmethod
    def _layer_release_is_known(cls, version: int) -> int:
        known = powertools_layer_releases()
        if version not in known:
            raise ValueError(
                f"powertoolsLayerVersion {version} holds no Powertools release this project knows; use one of "
                f"{sorted(known)} (newest {max(known)} = {known[max(known)]}) or add the layer's row, with its source, "
                f"to {POWERTOOLS_LAYERS_FILE.name}"
            )
        return version

    @field_validator("log_retention_days")
    @classmethod
    def _retention_is_one_cloudwatch_accepts(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"must be one of {LOG_RETENTION_DAYS}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StackSettings:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise _KeyedError("tiers", f"tier names must be unique, got {names}")
        if self.default_tier not in names:
            raise _KeyedError("defaultTier", f"{self.default_tier!r} is not one of the tiers {names}")
        if self.functions.worker.timeout_s >= self.lease_seconds:
            raise _KeyedError(
                "functions.worker.timeoutS",
                f"{self.functions.worker.timeout_s} must be below leaseSeconds ({self.lease_seconds}): "
                "a reservation must outlive the worker that holds it",
            )
        return self

    # -- derived values

    @property
    def analytics_processor_reserved_concurrency(self) -> int | None:
        """The usage processor reserves a little only when the worker reserves (a stack that budgets concurrency)."""
        reserving = self.analytics.enabled and self.functions.worker.reserved_concurrency
        return ANALYTICS_PROCESSOR_RESERVED if reserving else None

    @property
    def reserved_concurrency_total(self) -> int:
        """Executions the stack takes out of the account's pool; Lambda requires 100 to stay unreserved."""
        sizes = (self.functions.gatekeeper, self.functions.worker, self.functions.subscribe)
        return sum(f.reserved_concurrency or 0 for f in sizes) + (self.analytics_processor_reserved_concurrency or 0)

    @property
    def appsync_log_level(self) -> Literal["ERROR", "INFO", "DEBUG"]:
        """The Event API's CloudWatch log level for this stack's `logLevel`.

        AppSync's DEBUG and ALL write handler-level logs with the events' payloads, i.e. the users' messages:
        only with `logPrompts` on. Otherwise DEBUG is capped at INFO. WARNING has no AppSync twin: errors only.
        """
        if self.log_level == "DEBUG":
            return "DEBUG" if self.log_prompts else "INFO"
        return "INFO" if self.log_level == "INFO" else "ERROR"

    @property
    def model_ids(self) -> tuple[str, ...]:
        """Every model some tier allows, in first-seen order."""
        return tuple(dict.fromkeys(m for t in self.tiers for m in t.models))

    def model_warnings(self, today: date | None = None) -> list[str]:
        """What `aigw plan` warns about the stack's models: Legacy models before their end of life."""
        today = today or datetime.now(UTC).date()
        return [w for m in self.model_ids if (w := check_model(m, today=today)) is not None]

    def token_prices(self) -> dict[str, tuple[float, float]]:
        """``{model id: (input, output)}`` USD per 1M tokens in this region, from the catalog (budgets)."""
        prices = {m: price_of(m, self.region) for m in self.model_ids}
        return {m: (p.input, p.output) for m, p in prices.items() if p is not None}

    def model_prices_per_1k(self) -> dict[str, tuple[float, float]]:
        """``{model id: (input, output)}`` USD per 1,000 tokens in this region, from the catalog, for analytics."""
        return {m: (i / 1000, o / 1000) for m, (i, o) in self.token_prices().items()}

    def model_names(self) -> dict[str, str]:
        """``{model id: display name}`` for the web page's model picker."""
        return {m: display_name(m) for m in self.model_ids}

    def model_arns(self, account: str) -> list[str]:
        """IAM resources for invoking the allowed models.

        A cross-region inference profile (`us.anthropic...`) needs the profile in this region and the
        foundation model in every region the profile may route to, hence `bedrock:*` for those.
        """
        arns: list[str] = []
        partition = aws_partition(self.region)
        for model in self.model_ids:
            match = MODEL_ID.match(model)
            if match and match["geo"]:
                base = model.split(".", 1)[1]
                arns.append(f"arn:{partition}:bedrock:{self.region}:{account}:inference-profile/{model}")
                arns.append(f"arn:{partition}:bedrock:*::foundation-model/{base}")
            else:
                arns.append(f"arn:{partition}:bedrock:{self.region}::foundation-model/{model}")
        return arns

    def runtime_config(
        self,
        *,
        stack: str,
        metering_table: str,
        cache_table: str,
        streams_table: str,
        http_endpoint: str,
        worker_function_name: str,
    ) -> RuntimeConfig:
        """The Lambda functions' configuration for this stack (rendered with `RuntimeConfig.to_env()`)."""
        return RuntimeConfig(
            metering_table=metering_table,
            cache_table=cache_table,
            streams_table=streams_table,
            prices=self.token_prices(),
            stack_monthly_usd=self.stack_monthly_usd,
            appsync_http_endpoint=http_endpoint,
            worker_function_name=worker_function_name,
            tiers=self.tiers,
            default_tier=self.default_tier,
            region=self.region,
            log_prompts=self.log_prompts,
            flush_interval_ms=self.flush_interval_ms,
            max_messages=self.max_messages,
            max_message_chars=self.max_message_chars,
            max_total_chars=self.max_total_chars,
            cache_namespace=self.cache_namespace,
            cache_cost_tokens=self.cache_cost_tokens,
            lease_seconds=self.lease_seconds,
            stack=stack,
        )

    # -- sources

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> StackSettings:
        """Validate config values keyed as in the stack file, without the project prefix."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as err:
            raise SettingsError(err) from None

    @classmethod
    def from_pulumi_config(cls) -> StackSettings:
        """Read every key this model knows from the running Pulumi program's config."""
        import pulumi

        config, aws = pulumi.Config(PROJECT), pulumi.Config("aws")
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            key = field.alias or name
            raw = aws.get("region") if key == "region" else config.get(key)
            if raw is not None:
                values[key] = _decode(raw)
        return cls.from_values(values)

    @classmethod
    def from_stack_file(cls, path: str | Path) -> StackSettings:
        return cls.from_values(stack_file_values(path))


def stack_file_values(path: str | Path) -> dict[str, Any]:
    """The `config:` of a Pulumi stack file, keyed without the project prefix (`aws:region` as `region`)."""
    document = yaml.safe_load(Path(path).read_text()) or {}
    values: dict[str, Any] = {}
    for key, value in (document.get("config") or {}).items():
        namespace, _, name = key.partition(":")
        if namespace == PROJECT:
            values[name] = value
        elif key == "aws:region":
            values["region"] = value
    return values


def _decode(raw: str) -> Any:
    # Pulumi hands structured values (objects, lists, numbers, booleans) to programs as JSON text.
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


class _KeyedError(ValueError):
    """A cross-field rule broken at a known key (pydantic reports model-level errors without a location)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class SettingsError(ValueError):
    """Stack configuration that cannot be deployed; the message names each key and how to fix it."""

    def __init__(self, err: ValidationError) -> None:
        lines = []
        errors = err.errors()
        for e in errors:
            if e["type"] == "too_short" and any(o["loc"][: len(e["loc"])] == e["loc"] and o is not e for o in errors):
                continue  # "no valid items left" is only the echo of the item errors reported below it
            keyed = (e.get("ctx") or {}).get("error")
            path = keyed.key if isinstance(keyed, _KeyedError) else _config_path(e["loc"])
            message = str(keyed) if isinstance(keyed, _KeyedError) else e["msg"].removeprefix("Value error, ")
            key = "aws:region" if path == "region" else f"{PROJECT}:{path}" if path else PROJECT
            fix = (
                f"pulumi config set --path '{path}' <value>"
                if path and path != "region"
                else "pulumi config set aws:region <region>"
                if path
                else "see the configuration table in docs/request-path.md"
            )
            lines.append(f"{key}: {message} (fix: {fix})")
        super().__init__("invalid stack configuration:\n  " + "\n  ".join(lines))


def _config_path(loc: tuple[Any, ...]) -> str:
    """`('tiers', 0, 'windowTokens')` -> `tiers[0].windowTokens` (the `--path` syntax of pulumi config)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + to_camel(str(part))
    return path
