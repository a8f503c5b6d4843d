"""The README's commands work as written for a newcomer: every `.venv/bin/aigw …` line of its `sh` blocks runs
against a running `aigw dev` (from a project folder whose `.aigw/dev.json` names it, as after `make dev`), the
`make` lines name real targets with flags `aigw dev` accepts, and the addresses it gives are the defaults."""

from __future__ import annotations

import re
import shlex
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aigw.cli import app
from aigw.dev import Ports, running
from aigw.local_cognito import DEMO_USERNAME
from components.settings import StackSettings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def shell_lines() -> list[str]:
    """Every command line of the README's ```sh blocks, comments dropped."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command:
                lines.append(command)
    return lines


def aigw_commands() -> list[list[str]]:
    return [shlex.split(line)[1:] for line in shell_lines() if line.startswith(".venv/bin/aigw ")]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("newcomer")
    shutil.copy(ROOT / "Pulumi.dev.yaml", folder / "Pulumi.dev.yaml")
    settings = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
    with running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0, stack=f"readme{uuid.uuid4().hex[:6]}",
                 analytics_dir=folder / ".aigw" / "analytics") as gw:
        gw.write_info(folder / ".aigw")
        yield folder


def test_the_readme_shows_aigw_commands_to_run() -> None:
    commands = aigw_commands()
    assert len(commands) >= 8
    assert ["chat"] in commands  # the interactive session is shown, not only one-shot prompts


@pytest.mark.parametrize("args", aigw_commands(), ids=" ".join)
def test_each_aigw_command_in_the_readme_works_as_written(
    project: Path, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)  # the README's commands rely on the default .aigw/dev.json
    session_input = "/quit\n" if args == ["chat"] else None
    result = CliRunner().invoke(app, args, input=session_input, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    if args[:1] == ["usage"]:
        assert DEMO_USERNAME in args  # the README's usage line names the user `make dev` prints


def test_the_make_lines_name_real_targets_and_flags_aigw_dev_accepts() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    dev_help = CliRunner().invoke(app, ["dev", "--help"], env={"COLUMNS": "200"}).output
    make_lines = re.findall(r"`?(make [^`\n]+)`?", README)
    assert "make dev" in make_lines and "make test" in make_lines
    for line in make_lines:
        words = shlex.split(line)
        assert words[1] in targets, line
        for word in words[2:]:
            if word.startswith("ARGS="):
                for flag in (f for f in shlex.split(word.removeprefix("ARGS=")) if f.startswith("--")):
                    assert flag in dev_help, (line, flag)


def test_the_page_address_in_the_readme_is_where_aigw_dev_serves_it() -> None:
    assert f"http://127.0.0.1:{Ports().events}/" in README
