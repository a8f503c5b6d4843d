"""The runtime's configuration: environment variables set by the Pulumi components (or by `aigw dev`).

`ENV` names every variable once; the components import it instead of repeating the strings. Parsing and
validation happen once per cold start (`RuntimeConfig.from_env`), so a bad deployment fails loudly at the
first invocation with a message naming the variable, never halfway through a request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from runtime.budgets import Price
from runtime.errors import ConfigurationError
from runtime.metering import Limits

ENV = {
    "metering_table": "AIGW_METERING_TABLE",
    "cache_table": "AIGW_CACHE_TABLE",
    "streams_table": "AIGW_STREAMS_TABLE",
    "appsync_http_endpoint": "AIGW_APPSYNC_HTTP_ENDPOINT",  # https://<host>/event
    "worker_function_name": "AIGW_WORKER_FUNCTION",
    "tiers": "AIGW_TIERS",  # JSON list of tiers, see TierSettings
    "default_tier": "AIGW_DEFAULT_TIER",
    "log_prompts": "AIGW_LOG_PROMPTS",
    "flush_interval_ms": "AIGW_FLUSH_INTERVAL_MS",
    "max_messages": "AIGW_MAX_MESSAGES",
    "max_message_chars": "AIGW_MAX_MESSAGE_CHARS",
    "max_total_chars": "AIGW_MAX_TOTAL_CHARS",
    "cache_namespace": "AIGW_CACHE_NAMESPACE",
    "cache_cost_tokens": "AIGW_CACHE_COST_TOKENS",
    "lease_seconds": "AIGW_LEASE_SECONDS",
    "guardrail_id": "AIGW_GUARDRAIL_ID",
    "guardrail_version": "AIGW_GUARDRAIL_VERSION",
    "stack": "AIGW_STACK",
    "prices": "AIGW_PRICES",  # JSON {modelId: [input, output]} in USD per 1M tokens, from the model catalog
    "stack_monthly_usd": "AIGW_STACK_MONTHLY_USD",
    "region": "AWS_REGION",
}


class _Camel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class TierSettings(_Camel):
    """One tier (a Cognito group): its token limits and the models it may use."""

    name: str = Field(min_length=1, max_length=128)
    precedence: int = Field(ge=0)  # as Cognito: the lower, the stronger when a user is in several groups
    window_tokens: int = Field(gt=0)
    monthly_tokens: int = Field(gt=0)
    window_seconds: int = 600
    min_output_tokens: int = Field(default=64, gt=0)
    max_output_tokens: int = Field(default=2048, gt=0)
    monthly_usd: float | None = Field(default=None, gt=0, lt=1e8)  # each user's own USD month (priced models)
    models: tuple[str, ...] = Field(min_length=1)
    default_model: str | None = None

    @model_validator(mode="after")
    def _default_model_is_allowed(self) -> TierSettings:
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"defaultModel {self.default_model!r} is not among the tier's models")
        self.limits  # noqa: B018 - validates the limits now, not at the first request
        return self

    @property
    def model(self) -> str:
        return self.default_model or self.models[0]

    @property
    def limits(self) -> Limits:
        return Limits(self.window_tokens, self.monthly_tokens, self.window_seconds, self.min_output_tokens,
                      self.monthly_usd)


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metering_table: str = Field(min_length=3)
    cache_table: str = Field(min_length=3)
    streams_table: str | None = Field(default=None, min_length=3)  # the answer journal; None: no resume or cancel
    appsync_http_endpoint: str = Field(pattern=r"^https?://[^/]+/event$")
    worker_function_name: str = Field(min_length=1)
    tiers: tuple[TierSettings, ...] = Field(min_length=1)
    default_tier: str
    region: str = "us-east-1"
    log_prompts: bool = False
    flush_interval_ms: int = Field(default=50, gt=0, le=1000)
    max_messages: int = Field(default=40, gt=0)
    max_message_chars: int = Field(default=32_000, gt=0)
    max_total_chars: int = Field(default=120_000, gt=0)
    cache_namespace: str = "default"
    cache_cost_tokens: int = Field(default=0, ge=0)
    lease_seconds: int = Field(default=900, gt=0)
    guardrail_id: str | None = None
    guardrail_version: str | None = None
    stack: str = "local"
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict)
    stack_monthly_usd: float | None = Field(default=None, gt=0)  # the stack's ceiling (its starting value)

    @field_validator("tiers", "prices", mode="before")
    @classmethod
    def _tiers_from_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> RuntimeConfig:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        if self.default_tier not in names:
            raise ValueError(f"default tier {self.default_tier!r} is not one of {names}")
        if (self.guardrail_id is None) != (self.guardrail_version is None):
            raise ValueError("guardrail id and version go together")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        environ = os.environ if environ is None else environ
        raw = {field: environ[var] for field, var in ENV.items() if environ.get(var) not in (None, "")}
        try:
            return cls.model_validate(raw)
        except (ValidationError, json.JSONDecodeError) as err:
            raise ConfigurationError(_explain(err)) from err

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces this configuration (used by the components and `aigw dev`)."""
        env: dict[str, str] = {}
        for field, var in ENV.items():
            value = getattr(self, field)
            if value is None:
                continue
            if field == "tiers":
                env[var] = json.dumps([t.model_dump(by_alias=True, exclude_none=True) for t in value])
            elif field == "prices":
                if value:
                    env[var] = json.dumps({m: list(p) for m, p in value.items()}, separators=(",", ":"))
            elif isinstance(value, bool):
                env[var] = "true" if value else "false"
            else:
                env[var] = str(value)
        return env

    def price(self, model_id: str) -> Price | None:
        """The model's token price (USD per 1M tokens), when the stack's catalog prices it in its region."""
        found = self.prices.get(model_id)
        return Price(*found) if found else None

    def tier(self, name: str) -> TierSettings:
        return next(t for t in self.tiers if t.name == name)

    def tier_for(self, groups: Sequence[str] | None) -> TierSettings:
        """The user's tier: the strongest (lowest precedence) of their groups that is a tier, else the default."""
        member = [t for t in self.tiers if groups and t.name in groups]
        return min(member, key=lambda t: t.precedence) if member else self.tier(self.default_tier)


def _explain(err: Exception) -> str:
    if isinstance(err, ValidationError):
        parts = []
        for e in err.errors():
            field = str(e["loc"][0]) if e["loc"] else ""
            where = ENV.get(field, field) + "".join(f"[{p}]" for p in e["loc"][1:])
            parts.append(f"{where}: {e['msg']}")
        return "invalid runtime configuration: " + "; ".join(parts)
    return f"invalid runtime configuration: {err}"
