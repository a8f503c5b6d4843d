"""The CI workflows can't run here; check their shape, and that zizmor (offline) finds nothing at medium+."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
OIDC_ACTION = "aws-actions/configure-aws-credentials"
PULUMI_ACTION = "pulumi/actions"


def load(name: str) -> dict[str, Any]:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the `on:` key as True
    return workflow


def steps(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job.get("steps", []) if s.get("uses", "").split("@")[0] == action]


def all_workflows() -> dict[str, dict[str, Any]]:
    return {p.name: load(p.name) for p in sorted(WORKFLOWS.glob("*.yml"))}


def test_the_four_workflows_exist() -> None:
    assert {"test.yml", "preview.yml", "deploy.yml", "latest.yml"} <= set(all_workflows())


def test_triggers() -> None:
    assert set(load("test.yml")["on"]) == {"pull_request", "push"}
    assert load("test.yml")["on"]["push"]["branches"] == ["main"]
    assert set(load("preview.yml")["on"]) == {"pull_request"}
    assert set(load("deploy.yml")["on"]) == {"push"}
    assert load("deploy.yml")["on"]["push"]["branches"] == ["main"]
    assert set(load("latest.yml")["on"]) == {"schedule", "workflow_dispatch"}
    for name, workflow in all_workflows().items():
        assert "pull_request_target" not in workflow["on"], name
        assert "workflow_run" not in workflow["on"], name


def test_test_workflow_runs_the_whole_suite_on_python_311() -> None:
    [job] = load("test.yml")["jobs"].values()
    [setup] = steps(job, "actions/setup-python")
    assert str(setup["with"]["python-version"]) == "3.11"
    assert steps(job, "actions/checkout")
    assert any(s.get("run", "").strip() in ("make test", ".ci/run") for s in job["steps"])


def test_permissions_are_least_privilege_and_oidc_is_scoped_to_the_jobs_that_use_it() -> None:
    for name, workflow in all_workflows().items():
        assert workflow["permissions"] == {"contents": "read"}, name
        for job_name, job in workflow["jobs"].items():
            permissions = job.get("permissions", {})
            assert permissions.get("contents", "read") == "read", (name, job_name)
            uses_oidc = bool(steps(job, OIDC_ACTION))
            assert (permissions.get("id-token") == "write") is uses_oidc, (name, job_name)
            for step in steps(job, OIDC_ACTION):
                assert re.fullmatch(r"\$\{\{ vars\.[A-Z_]+ \}\}", step["with"]["role-to-assume"]), step
                assert "aws-access-key-id" not in step["with"]  # OIDC, never stored keys
            if permissions.get("pull-requests") == "write":  # granted only to a job that comments
                pulumi_comments = any(s["with"].get("comment-on-pr") is True for s in steps(job, PULUMI_ACTION))
                assert pulumi_comments or any("/comments" in s.get("run", "") for s in job["steps"]), job_name


def test_preview_runs_the_policy_pack_for_both_stacks() -> None:
    job = load("preview.yml")["jobs"]["preview"]
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    [pulumi] = steps(job, PULUMI_ACTION)
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["stack-name"] == "${{ vars.PULUMI_ORG }}/ai-gateway/${{ matrix.stack }}"
    assert pulumi["with"]["policyPacks"] == "policy"
    assert pulumi["with"]["comment-on-pr"] is True
    names = [s.get("uses", "").split("@")[0] for s in job["steps"]]
    assert names.index(OIDC_ACTION) < names.index(PULUMI_ACTION)  # credentials before Pulumi


def test_plan_diff_runs_offline_for_every_pull_request_and_comments_only_where_it_can() -> None:
    job = load("preview.yml")["jobs"]["plan-diff"]
    assert "if" not in job  # forks too: it needs no secrets
    assert not steps(job, OIDC_ACTION) and not steps(job, PULUMI_ACTION)
    assert "secrets." not in yaml.safe_dump(job)
    [checkout] = steps(job, "actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0  # the base commit is archived from the clone
    [diff] = [s for s in job["steps"] if "aigw plan" in s.get("run", "")]
    assert diff["env"] == {"BASE_SHA": "${{ github.event.pull_request.base.sha }}"}
    assert "${{" not in diff["run"]  # expressions reach the shell as variables, never spliced into it
    [comment] = [s for s in job["steps"] if "/comments" in s.get("run", "")]
    assert comment["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    assert "${{" not in comment["run"]


def test_the_plan_diff_step_writes_a_markdown_diff_of_both_stacks(tmp_path: Path) -> None:
    # Runs the workflow's own shell against this clone, with HEAD as the "base" (a working tree may differ from it).
    job = load("preview.yml")["jobs"]["plan-diff"]
    [diff] = [s for s in job["steps"] if "aigw plan" in s.get("run", "")]
    if not (ROOT / ".venv" / "bin" / "aigw").exists():
        pytest.skip("needs the project's .venv")
    summary = tmp_path / "summary.md"
    work = tmp_path / "work"
    work.mkdir()
    script = diff["run"].replace(".venv/bin/aigw", str(ROOT / ".venv" / "bin" / "aigw"))
    env = {"PATH": "/usr/bin:/bin", "BASE_SHA": "HEAD", "GITHUB_STEP_SUMMARY": str(summary), "HOME": str(tmp_path)}
    result = subprocess.run(
        ["bash", "-e", "-c", f"cd {ROOT} && {script.replace('plan-diff.md', str(work / 'plan-diff.md'))}"],
        capture_output=True, text=True, timeout=180, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr
    body = (work / "plan-diff.md").read_text()
    assert body.startswith("<!-- aigw-plan-diff -->\n")
    assert summary.read_text() == body
    for stack in ("dev", "prod"):
        heading = rf"^### ai-gateway {stack}: \d+ to add, \d+ to change, \d+ to remove against HEAD "
        assert re.search(heading, body, re.M)
    assert body.count("**Policy pack**") == 2


def test_deploy_goes_dev_then_approved_prod() -> None:
    jobs = load("deploy.yml")["jobs"]
    assert set(jobs) == {"test", "dev", "prod"}
    assert jobs["dev"]["needs"] in ("test", ["test"])  # no `pulumi up` of a commit the suite has not passed
    assert jobs["prod"]["needs"] in ("dev", ["dev"])
    assert any(s.get("run", "").strip() == "make test" for s in jobs["test"]["steps"])
    assert not steps(jobs["test"], OIDC_ACTION) and "permissions" not in jobs["test"]
    assert jobs["prod"]["environment"] == "production"
    for stack in ("dev", "prod"):
        [pulumi] = steps(jobs[stack], PULUMI_ACTION)
        assert pulumi["with"]["command"] == "up"
        assert pulumi["with"]["stack-name"] == f"${{{{ vars.PULUMI_ORG }}}}/ai-gateway/{stack}"
        assert pulumi["with"]["policyPacks"] == "policy"
    assert load("deploy.yml")["concurrency"]["cancel-in-progress"] is False


def test_actions_are_pinned_to_full_commit_shas() -> None:
    for name, workflow in all_workflows().items():
        for job in workflow["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), (name, step["uses"])
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False, name


def test_the_policy_pack_input_name_matches_pulumi_actions() -> None:
    # pulumi/actions reads `policyPacks` (camelCase, unlike its other inputs); a typo would be silently ignored.
    for name in ("preview.yml", "deploy.yml"):
        text = (WORKFLOWS / name).read_text()
        assert "policyPacks: policy" in text and "policy-packs" not in text, name


def _zizmor() -> str:
    found = Path(sys.executable).with_name("zizmor")
    return str(found) if found.exists() else (shutil.which("zizmor") or pytest.skip("zizmor is not installed"))


def test_zizmor_finds_nothing_at_medium_or_higher() -> None:
    result = subprocess.run(
        [_zizmor(), "--offline", "--min-severity", "medium", "--format", "json", "--no-progress", str(WORKFLOWS)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    findings = json.loads(result.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=2)


def test_latest_runs_the_suite_weekly_against_the_newest_releases_and_reports_only_failure() -> None:
    workflow = load("latest.yml")
    [schedule] = workflow["on"]["schedule"]
    _minute, _hour, day, month, weekday = schedule["cron"].split()
    assert (day, month) == ("*", "*") and weekday.isdigit()  # once a week
    jobs = workflow["jobs"]
    assert any(s.get("run", "").strip() == "make test-latest" for s in jobs["test-latest"]["steps"])
    assert "permissions" not in jobs["test-latest"]
    report = jobs["report"]
    assert report["needs"] == "test-latest" and report["if"] == "failure()"
    assert report["permissions"] == {"issues": "write"}


def test_dependabot_watches_every_lock() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    updates = {(u["package-ecosystem"], u["directory"]): u for u in config["updates"]}
    assert set(updates) == {("uv", "/"), ("npm", "/tests/local/amplify"), ("github-actions", "/")}
    assert (ROOT / "uv.lock").is_file()
    assert (ROOT / "tests/local/amplify/package-lock.json").is_file()
    # Powertools moves only with the managed layer the stacks deploy, never alone.
    ignored = {rule["dependency-name"] for rule in updates[("uv", "/")]["ignore"]}
    assert "aws-lambda-powertools" in ignored


def test_every_oidc_subject_the_workflows_produce_is_in_the_trust_policy_notes() -> None:
    # A job naming an environment gets `environment:<name>` in its token's subject (not the branch): the deploy
    # guide must name each subject a role has to trust, or the first `pulumi up` fails to assume the role.
    guide = (ROOT / "docs" / "deploy.md").read_text()
    subjects = {"repo:<owner>/<repo>:pull_request"}
    for name in all_workflows():
        for job in load(name)["jobs"].values():
            if steps(job, OIDC_ACTION) and "environment" in job:
                environment = job["environment"]
                environment_name = environment["name"] if isinstance(environment, dict) else environment
                subjects.add(f"repo:<owner>/<repo>:environment:{environment_name}")
    assert "repo:<owner>/<repo>:environment:development" in subjects
    missing = [subject for subject in sorted(subjects) if f"`{subject}`" not in guide]
    assert missing == []
