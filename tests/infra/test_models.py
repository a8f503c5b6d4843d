"""The Bedrock model catalog: its own consistency, the judgements stack validation makes from it, its consumers."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.models import (
    CATALOG_FILE,
    GEOGRAPHIES,
    Catalog,
    ModelProblem,
    check_model,
    display_name,
    load_catalog,
    price_of,
    split_profile,
)
from components.settings import SettingsError, StackSettings

TODAY = date(2026, 12, 5)


def entry(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": "anthropic.new-v1:0", "name": "New", "provider": "Anthropic", "marketplace": True,
        "lifecycle": "Active", "lifecycle_source": "https://example.com/card", "context_window": 200_000,
        "max_output_tokens": 64_000, "limits_source": "https://example.com/card", "profiles": ["us", "global"],
        "in_region": False, "profiles_source": "https://example.com/card",
        "prices": [
            {"region": "us-east-1", "scope": "geo", "input": 1.1, "output": 5.5, "source": "s", "confirmed": True},
            {"region": "us-east-1", "scope": "global", "input": 1.0, "output": 5.0, "source": "s", "confirmed": True},
        ],
    }  # fmt: skip
    return {**values, **overrides}


def catalog(*models: dict[str, Any]) -> Catalog:
    return Catalog.model_validate({"taken": "2026-12-05", "models": list(models)})


OLD = entry(id="anthropic.old-v1:0", name="Old", lifecycle="Legacy", eol="2027-01-31",
            replacement="anthropic.new-v1:0", in_region=True, profiles=["us"])  # fmt: skip
FAKE = catalog(entry(), OLD, entry(id="amazon.lite-v1:0", name="Lite", provider="Amazon", marketplace=False,
                                    in_region=True, profiles=["us", "eu"], prices=[]))  # fmt: skip


def test_split_profile() -> None:
    assert split_profile("us.anthropic.new-v1:0") == ("anthropic.new-v1:0", "us")
    assert split_profile("global.anthropic.new-v1:0") == ("anthropic.new-v1:0", "global")
    assert split_profile("anthropic.new-v1:0") == ("anthropic.new-v1:0", None)
    assert split_profile("amazon.nova-lite-v1:0") == ("amazon.nova-lite-v1:0", None)


@given(st.sampled_from(GEOGRAPHIES), st.from_regex(r"[a-z]{3,10}\.[a-z][a-z0-9-]{0,20}(?::[0-9])?", fullmatch=True))
def test_a_profile_id_splits_back_into_its_parts(geo: str, base: str) -> None:
    assert split_profile(f"{geo}.{base}") == (base, geo)
    assert split_profile(base) == (base, None)


def test_active_catalogued_models_pass() -> None:
    assert check_model("us.anthropic.new-v1:0", today=TODAY, catalog=FAKE) is None
    assert check_model("global.anthropic.new-v1:0", today=TODAY, catalog=FAKE) is None
    assert check_model("amazon.lite-v1:0", today=TODAY, catalog=FAKE) is None


def test_an_uncatalogued_id_is_an_error_naming_active_models() -> None:
    with pytest.raises(ModelProblem, match=r"not in the model catalog.*anthropic\.new-v1:0"):
        check_model("meta.llama-nope-v1:0", today=TODAY, catalog=FAKE)


def test_a_profile_the_model_lacks_and_a_bare_id_without_on_demand_are_errors() -> None:
    with pytest.raises(ModelProblem, match=r"no eu\. inference profile.*us\.anthropic\.new-v1:0"):
        check_model("eu.anthropic.new-v1:0", today=TODAY, catalog=FAKE)
    with pytest.raises(ModelProblem, match=r"not callable by its bare id.*us\.anthropic\.new-v1:0"):
        check_model("anthropic.new-v1:0", today=TODAY, catalog=FAKE)


def test_legacy_before_eol_warns_and_names_the_replacement_by_the_same_route() -> None:
    warning = check_model("us.anthropic.old-v1:0", today=TODAY, catalog=FAKE)
    assert warning is not None and "2027-01-31" in warning and "'us.anthropic.new-v1:0'" in warning
    # The bare id's successor has no on-demand route: the warning names a profile that works.
    bare = check_model("anthropic.old-v1:0", today=TODAY, catalog=FAKE)
    assert bare is not None and "'us.anthropic.new-v1:0'" in bare


@given(st.integers(min_value=0, max_value=3650))
def test_legacy_on_or_after_eol_is_an_error_naming_the_replacement(days_after: int) -> None:
    with pytest.raises(ModelProblem, match=r"end of life.*'us\.anthropic\.new-v1:0'"):
        check_model("us.anthropic.old-v1:0", today=date(2027, 1, 31) + timedelta(days=days_after), catalog=FAKE)


def test_prices_follow_the_way_the_model_is_called() -> None:
    geo, world = price_of("us.anthropic.new-v1:0", "us-east-1", FAKE), price_of("global.anthropic.new-v1:0",
                                                                                  "us-east-1", FAKE)
    assert geo is not None and world is not None and (geo.input, world.input) == (1.1, 1.0)
    assert price_of("us.anthropic.new-v1:0", "eu-west-1", FAKE) is None
    assert price_of("amazon.lite-v1:0", "us-east-1", FAKE) is None


def test_display_names_carry_the_geography() -> None:
    assert display_name("us.anthropic.new-v1:0", FAKE) == "New (us)"
    assert display_name("amazon.lite-v1:0", FAKE) == "Lite"
    assert display_name("meta.unknown-v1:0", FAKE) == "meta.unknown-v1:0"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (entry(lifecycle="Legacy", replacement="anthropic.x-v1:0"), "needs its eol date and a replacement"),
        (entry(lifecycle="Legacy", eol="2027-01-01"), "needs its eol date and a replacement"),
        (entry(lifecycle="Legacy", eol="2027-01-01", replacement="anthropic.gone-v1:0"), "not in the catalog"),
        (entry(profiles=["mars"]), "unknown inference-profile geographies"),
        (entry(id="anthropic.x-v1:0"), "unique"),
    ],
)
def test_the_catalog_refuses_inconsistent_entries(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        catalog(entry(id="anthropic.x-v1:0"), model)


# --- the real catalog ---------------------------------------------------------------------------------------


def test_the_catalog_is_dated_sourced_and_consistent() -> None:
    real = load_catalog()
    assert real.taken <= date.today()
    for model in real.models:
        for source in (model.lifecycle_source, model.limits_source, model.profiles_source):
            assert source.startswith("https://"), (model.id, source)
        assert model.in_region or model.profiles, f"{model.id}: no way to call it"
        for price in model.prices:
            assert price.source.startswith("https://"), (model.id, price)
    assert CATALOG_FILE.name == "bedrock_models.yaml"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_both_stacks_name_only_active_catalogued_models(stack: str) -> None:
    settings = StackSettings.from_stack_file(f"Pulumi.{stack}.yaml")
    real = load_catalog()
    for model in settings.model_ids:
        found = real.entry(model)
        assert found is not None and found.lifecycle == "Active", model
        assert check_model(model, today=date.today()) is None
    assert settings.model_warnings() == []


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_stack_model_is_priced_in_its_region(stack: str) -> None:
    settings = StackSettings.from_stack_file(f"Pulumi.{stack}.yaml")
    assert set(settings.model_prices_per_1k()) == set(settings.model_ids)


def test_the_retired_defaults_are_refused_with_their_replacement() -> None:
    values = {
        "region": "us-east-1", "defaultTier": "pro",
        "tiers": [{"name": "pro", "precedence": 1, "windowTokens": 1000, "monthlyTokens": 10000,
                   "models": ["us.anthropic.claude-3-5-haiku-20241022-v1:0"]}],
    }  # fmt: skip
    with pytest.raises(SettingsError, match=r"end of life on Bedrock on 2026-06-19.*use '"):
        StackSettings.from_values(values)


def test_model_prices_in_a_stack_file_point_at_the_catalog() -> None:
    values = {
        "region": "us-east-1", "defaultTier": "free", "modelPrices": {"amazon.nova-lite-v1:0": {"inputPer1k": 1}},
        "tiers": [{"name": "free", "precedence": 1, "windowTokens": 1000, "monthlyTokens": 10000,
                   "models": ["amazon.nova-lite-v1:0"]}],
    }  # fmt: skip
    with pytest.raises(SettingsError, match=r"ai-gateway:modelPrices: model prices come from the model catalog"):
        StackSettings.from_values(values)


def test_the_deploy_docs_say_how_to_enable_third_party_models() -> None:
    # Until the Marketplace subscription and Anthropic's form exist, every call is AccessDeniedException.
    stack_models = {m for s in ("dev", "prod") for m in StackSettings.from_stack_file(f"Pulumi.{s}.yaml").model_ids}
    marketplace = [m for m in stack_models if (found := load_catalog().entry(m)) is not None and found.marketplace]
    assert marketplace, "the stacks use a third-party model: the docs must say how to enable it"
    root = CATALOG_FILE.parents[1]
    for doc in (root / "docs" / "infrastructure.md", root / "docs" / "deploy.md"):
        text = doc.read_text()
        for phrase in ("aws-marketplace:Subscribe", "aws-marketplace:ViewSubscriptions", "use-case", "AccessDenied"):
            assert phrase in text, (doc.name, phrase)
