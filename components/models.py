"""The Bedrock model catalog (`bedrock_models.yaml`): the one place for facts about the models a stack may name.

Each model has its foundation-model id, provider, lifecycle (Active/Legacy with an EOL date), limits, the
cross-region inference profiles it has (``us.``, ``eu.``, ``apac.``, ``global.`` ...), and prices per region
and scope (``in_region`` for the bare id, ``geo`` for a geography's profile, ``global``). Every fact carries its
public source; the file is dated.

The catalog feeds stack validation (`components.settings`), the IAM ARNs, the cost model (`aigw.cost`), the
analytics' model prices and the web page's model names. Pure: reading and looking up, no AWS call.
"""

from __future__ import annotations

import re
from datetime import date
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

CATALOG_FILE = Path(__file__).with_name("bedrock_models.yaml")

# `geo.provider.model…`: a cross-region inference profile in front of a foundation model id.
_PROFILE_ID = re.compile(r"^(?P<geo>[a-z]{2,6}(?:-[a-z]+)?)\.(?P<base>[a-z0-9-]+\.[a-z0-9].*)$")
GEOGRAPHIES = ("us", "eu", "apac", "global", "jp", "au", "ca", "us-gov")

Scope = Literal["in_region", "geo", "global"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelPrice(_Strict):
    """USD per 1M tokens in one region, for one way of calling the model."""

    region: str
    scope: Scope
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)
    source: str = Field(min_length=1)
    confirmed: bool


class CatalogModel(_Strict):
    id: str = Field(pattern=r"^[a-z0-9-]+\.[a-z0-9].*$")
    name: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    marketplace: bool
    """A third-party model: a one-time AWS Marketplace subscription (and, for Anthropic, a use-case form)."""
    marketplace_product_id: str | None = None
    lifecycle: Literal["Active", "Legacy"]
    launched: date | None = None
    eol: date | None = None
    eol_no_sooner_than: date | None = None
    replacement: str | None = None
    lifecycle_source: str = Field(min_length=1)
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    limits_source: str = Field(min_length=1)
    profiles: tuple[str, ...] = ()
    in_region: bool
    """Callable on demand by its bare id (no inference profile)."""
    profiles_source: str = Field(min_length=1)
    prices: tuple[ModelPrice, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> CatalogModel:
        if self.lifecycle == "Legacy" and (self.eol is None or self.replacement is None):
            raise ValueError(f"{self.id}: a Legacy model needs its eol date and a replacement")
        unknown = set(self.profiles) - set(GEOGRAPHIES)
        if unknown:
            raise ValueError(f"{self.id}: unknown inference-profile geographies {sorted(unknown)}")
        return self


class Catalog(_Strict):
    taken: date
    notes: str = ""
    models: tuple[CatalogModel, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _replacements_are_catalogued(self) -> Catalog:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("model ids must be unique in the catalog")
        for model in self.models:
            if model.replacement is not None and model.replacement not in ids:
                raise ValueError(f"{model.id}: its replacement {model.replacement!r} is not in the catalog")
        return self

    def entry(self, model_id: str) -> CatalogModel | None:
        """The catalog entry behind `model_id`, a bare id or an inference-profile id (None: not catalogued)."""
        base, _ = split_profile(model_id)
        return next((m for m in self.models if m.id == base), None)


def split_profile(model_id: str) -> tuple[str, str | None]:
    """`us.anthropic.claude-…` -> (`anthropic.claude-…`, `us`); a bare id -> (id, None)."""
    match = _PROFILE_ID.match(model_id)
    if match and match["geo"] in GEOGRAPHIES:
        return match["base"], match["geo"]
    return model_id, None


def scope_of(model_id: str) -> Scope:
    _, geo = split_profile(model_id)
    return "in_region" if geo is None else "global" if geo == "global" else "geo"


@cache
def load_catalog(path: Path = CATALOG_FILE) -> Catalog:
    return Catalog.model_validate(yaml.safe_load(path.read_text()))


# ------------------------------------------------------------------------------------------------ judgements


class ModelProblem(ValueError):
    """A model id a stack must not deploy with; the message names the fix."""


def check_model(model_id: str, *, today: date, catalog: Catalog | None = None) -> str | None:
    """Raise `ModelProblem` for an id that cannot serve: not catalogued, past its EOL, a profile the model lacks,
    or a bare id of a model only reachable through a profile. Return a warning for a Legacy model before EOL."""
    catalog = catalog or load_catalog()
    model = catalog.entry(model_id)
    if model is None:
        active = ", ".join(m.id for m in catalog.models if m.lifecycle == "Active")
        raise ModelProblem(
            f"{model_id!r} is not in the model catalog ({CATALOG_FILE.name}, taken {catalog.taken}); use a catalogued "
            f"model (Active: {active}) or add its entry with sources"
        )
    _, geo = split_profile(model_id)
    if geo is not None and geo not in model.profiles:
        offered = ", ".join(f"{g}.{model.id}" for g in model.profiles) or "none"
        raise ModelProblem(f"{model_id!r}: {model.name} has no {geo}. inference profile (profiles: {offered})")
    if geo is None and not model.in_region:
        offered = ", ".join(f"{g}.{model.id}" for g in model.profiles)
        raise ModelProblem(
            f"{model_id!r}: {model.name} is not callable by its bare id; use an inference profile ({offered})"
        )
    if model.lifecycle == "Legacy":
        assert model.eol is not None and model.replacement is not None  # the catalog's own validation
        replacement = _same_route(model_id, model.replacement, catalog)
        if today >= model.eol:
            raise ModelProblem(
                f"{model_id!r} ({model.name}) reached its end of life on Bedrock on {model.eol}: requests fail; "
                f"use {replacement!r} instead"
            )
        return (
            f"{model_id!r} ({model.name}) is Legacy on Bedrock, end of life {model.eol} ({(model.eol - today).days} "
            f"days); new accounts cannot use it. Move to {replacement!r}"
        )
    return None


def _same_route(model_id: str, replacement: str, catalog: Catalog) -> str:
    """The replacement, called the way `model_id` is (same profile geography) when the replacement offers it."""
    _, geo = split_profile(model_id)
    successor = catalog.entry(replacement)
    if successor is None:
        return replacement
    if geo is not None and geo in successor.profiles:
        return f"{geo}.{successor.id}"
    if geo is None and not successor.in_region and successor.profiles:
        return f"{successor.profiles[0]}.{successor.id}"
    return successor.id


def price_of(model_id: str, region: str, catalog: Catalog | None = None) -> ModelPrice | None:
    """The price of calling `model_id` (bare or profile id) from `region`; None when the catalog has none."""
    model = (catalog or load_catalog()).entry(model_id)
    if model is None:
        return None
    scope = scope_of(model_id)
    return next((p for p in model.prices if p.region == region and p.scope == scope), None)


def display_name(model_id: str, catalog: Catalog | None = None) -> str:
    """A person's name for `model_id`: the catalog's, with the profile's geography (`Claude Haiku 4.5 (us)`)."""
    model = (catalog or load_catalog()).entry(model_id)
    if model is None:
        return model_id
    _, geo = split_profile(model_id)
    return model.name if geo is None else f"{model.name} ({geo})"
