"""The Powertools the suite and `aigw dev` run is the one inside the managed layer the stacks deploy."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pydantic
import pytest
import yaml

from components.settings import POWERTOOLS_LAYERS_FILE, SettingsError, StackSettings, powertools_layer_releases

ROOT = Path(__file__).resolve().parents[2]
STACK_FILES = sorted(ROOT.glob("Pulumi.*.yaml"))


def locked_version(package: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (version,) = [p["version"] for p in lock["package"] if p["name"] == package]
    return version


@pytest.mark.parametrize("stack_file", STACK_FILES, ids=lambda p: p.name)
def test_each_stack_deploys_the_layer_whose_release_the_lock_pins(stack_file: Path) -> None:
    layer = StackSettings.from_stack_file(stack_file).powertools_layer_version
    assert powertools_layer_releases()[layer] == locked_version("aws-lambda-powertools"), (
        f"{stack_file.name} deploys Powertools layer {layer} = {powertools_layer_releases()[layer]}, but uv.lock "
        f"pins aws-lambda-powertools {locked_version('aws-lambda-powertools')}: tests would not run what ships"
    )


def test_the_default_layer_matches_pulumi_yaml_and_the_lock() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    default = project["config"]["powertoolsLayerVersion"]["default"]
    assert default == StackSettings.model_fields["powertools_layer_version"].default
    assert powertools_layer_releases()[default] == locked_version("aws-lambda-powertools")


def test_what_is_installed_is_what_is_locked() -> None:
    assert importlib.metadata.version("aws-lambda-powertools") == locked_version("aws-lambda-powertools")
    assert importlib.metadata.version("pydantic") == locked_version("pydantic")
    bundled_major = yaml.safe_load(POWERTOOLS_LAYERS_FILE.read_text())["bundled_pydantic_major"]
    assert int(pydantic.VERSION.split(".")[0]) == bundled_major


def test_pyproject_pins_exactly_the_layer_release() -> None:
    # A range would let `make test-latest` and Dependabot run a Powertools that Lambda never runs.
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (powertools,) = [d for d in dependencies if d.startswith("aws-lambda-powertools")]
    assert re.fullmatch(r"aws-lambda-powertools\[parser\]==([\d.]+)", powertools)
    assert powertools.split("==")[1] == locked_version("aws-lambda-powertools")


def test_every_row_is_dated_and_sourced() -> None:
    document = yaml.safe_load(POWERTOOLS_LAYERS_FILE.read_text())
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(document["checked"]))
    layers = [row["layer"] for row in document["layers"]]
    assert layers == sorted(set(layers))
    for row in document["layers"]:
        assert re.fullmatch(r"3\.\d+\.\d+", row["release"]), row
        assert "powertools-lambda-python" in row["source"], row
        assert re.search(r"\d{4}-\d{2}-\d{2}|@[0-9a-f]{8}", row["source"]), row


def test_an_unlisted_layer_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    document = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    document["config"]["ai-gateway:powertoolsLayerVersion"] = 18
    stack = tmp_path / "Pulumi.x.yaml"
    stack.write_text(yaml.safe_dump(document))
    with pytest.raises(SettingsError, match=r"powertoolsLayerVersion 18 .*use one of \[.*34.*\]"):
        StackSettings.from_stack_file(stack)
