"""`aigw plan --diff BASE`: what a change does to a stack, as a reviewer reads it in a pull request.

A *snapshot* is what `aigw plan --json` prints: every resource the real program declares under mocks (type,
name, component, inputs as plain JSON), the policy pack's violations and the monthly cost under one profile.
A diff compares two snapshots: resources added, removed and changed (property by property), IAM grants added
and removed, the cost delta and the policy result. BASE is a saved snapshot or a git ref; a ref's tree is
checked out to a temporary folder and its own program runs there under mocks, in a child process (its
`components` and `runtime` packages are not ours).

The core (plain values, flattening, the diff, IAM grants, Markdown) is pure; `snapshot_of` and `base_snapshot`
are the shell. This module imports only the standard library and pulumi, because the child process loads it
by path beside the base's own packages.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SNAPSHOT_VERSION = 1
ABSENT = "(absent)"  # how a property that one side does not set reads in a change row
# Inputs whose value is an IAM policy document (a JSON string), by resource type; `*` paths name list items.
IAM_DOCUMENTS: dict[str, tuple[str, ...]] = {
    "aws:iam/role:Role": ("assumeRolePolicy", "inlinePolicies[*].policy"),
    "aws:iam/rolePolicy:RolePolicy": ("policy",),
    "aws:iam/policy:Policy": ("policy",),
    "aws:iam/userPolicy:UserPolicy": ("policy",),
    "aws:iam/groupPolicy:GroupPolicy": ("policy",),
    "aws:s3/bucketPolicy:BucketPolicy": ("policy",),
    "aws:sqs/queuePolicy:QueuePolicy": ("policy",),
    "aws:sns/topicPolicy:TopicPolicy": ("policy",),
    "aws:lambda/permission:Permission": (),
}
IAM_ATTACHMENTS: dict[str, str] = {  # resources that grant by naming a managed policy
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": "policyArn",
    "aws:iam/role:Role": "managedPolicyArns",
}


class PlanDiffError(ValueError):
    """A base that cannot be read or run: a bad ref, a file that is not a snapshot, a program that fails."""


# -- the pure core


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    component: str
    inputs: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return (self.type, self.name)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.type.removeprefix('aws:')})"


@dataclass(frozen=True)
class Violation:
    rule: str
    resource: str
    message: str


@dataclass(frozen=True)
class CostSummary:
    profile: str
    total_usd: float
    fixed_usd: float
    by_service: dict[str, float]


@dataclass(frozen=True)
class Snapshot:
    stack: str
    resources: tuple[Resource, ...]
    violations: tuple[Violation, ...] = ()
    rules: int = 0  # how many policy rules were evaluated
    cost: CostSummary | None = None
    cost_note: str = ""  # why there is no cost, when there is none
    source: str = ""  # what it was made from: "working tree", a ref, a file

    def to_dict(self) -> dict[str, Any]:
        return {"version": SNAPSHOT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> Snapshot:
        if not isinstance(data, dict) or data.get("version") != SNAPSHOT_VERSION or "resources" not in data:
            raise PlanDiffError(f"{source or 'the base'} is not an `aigw plan --json` snapshot (version "
                                f"{SNAPSHOT_VERSION}); make one with `aigw plan --stack STACK --json > FILE`")
        try:
            cost = data.get("cost")
            return cls(
                stack=str(data["stack"]),
                resources=tuple(Resource(r["type"], r["name"], r.get("component", ""), dict(r["inputs"]))
                                for r in data["resources"]),
                violations=tuple(Violation(**v) for v in data.get("violations", [])),
                rules=int(data.get("rules", 0)),
                cost=CostSummary(**cost) if cost else None,
                cost_note=str(data.get("cost_note", "")),
                source=source or str(data.get("source", "")),
            )
        except (KeyError, TypeError) as err:
            raise PlanDiffError(f"{source or 'the base'} is a damaged snapshot: {err!r}") from None


def plain(value: Any, root: Path | None = None, *, documents: bool = True) -> Any:
    """An input as plain JSON: assets and archives as content digests and, with `documents`, integral floats as
    ints (Pulumi hands numbers over as floats) and JSON documents parsed (a policy diffs statement by statement).
    Without `documents` the rest is kept as it is, for the policy pack and the cost estimate to read."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if documents and value.is_integer() else value
    if isinstance(value, str):
        return plain(json.loads(value)) if documents and _is_document(value) else value
    if isinstance(value, Mapping):
        if documents and set(value) == _ASSET_KEYS:  # a digest the base's child process made
            return f"{value['sha256']} ({value['bytes']:,} bytes)"
        return {str(k): plain(v, root, documents=documents) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, root, documents=documents) for v in value]
    return plain(_asset(value, root), root, documents=documents)


def _is_document(text: str) -> bool:
    if not text.lstrip().startswith(("{", "[")):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


_ASSET_KEYS = {"sha256", "bytes"}


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def _asset(value: Any, root: Path | None) -> Any:
    """A pulumi asset or archive by what it holds; anything else by its repr (never silently dropped)."""
    assets = getattr(value, "assets", None)
    if isinstance(assets, Mapping):  # AssetArchive: one digest per file, so a diff names the file that changed
        return {"files": {str(name): _asset(asset, root) for name, asset in sorted(assets.items())}}
    text = getattr(value, "text", None)
    if isinstance(text, str):
        return {"sha256": _digest(text.encode()), "bytes": len(text.encode())}
    path = getattr(value, "path", None)
    if isinstance(path, str):
        file = Path(path) if root is None or Path(path).is_absolute() else root / path
        if file.is_file():
            data = file.read_bytes()
            return {"sha256": _digest(data), "bytes": len(data)}
        return {"path": path}
    uri = getattr(value, "uri", None)
    return {"uri": uri} if isinstance(uri, str) else repr(value)


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by path (`a.b[0].c`, `files["runtime/x.py"]`); an empty dict or list is a leaf of its own, so
    clearing one shows."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            step = (f"{prefix}.{key}" if prefix else key) if _IDENTIFIER.match(key) else f"{prefix}[{json.dumps(key)}]"
            out.update(flatten(item, step))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, item in zip(_item_names(value), value, strict=True):
            out.update(flatten(item, f"{prefix}[{index}]"))
        return out
    return {prefix: value}


_NAMING_KEYS = ("Sid", "name", "key")  # a policy statement, an inline policy, a tag: named, not numbered


def _item_names(items: list[Any]) -> list[str]:
    """How a list's items are addressed: by a name they all carry uniquely (so inserting one does not shift
    the rest into rows of changes), else by position."""
    for key in _NAMING_KEYS:
        names = [item.get(key) for item in items if isinstance(item, dict)]
        if len(names) == len(items) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
            return [f"{key}={json.dumps(n)}" for n in names]
    return [str(index) for index in range(len(items))]


@dataclass(frozen=True)
class Change:
    path: str
    before: Any
    after: Any


def property_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    old, new = flatten(dict(before)), flatten(dict(after))
    return [Change(path, old.get(path, ABSENT), new.get(path, ABSENT))
            for path in sorted(old.keys() | new.keys()) if old.get(path, ABSENT) != new.get(path, ABSENT)]


def _documents(resource: Resource) -> list[tuple[str, Any]]:
    """(which, document) for each policy document the resource carries."""
    found = []
    for path in IAM_DOCUMENTS.get(resource.type, ()):
        head, _, tail = path.partition("[*].")
        value = resource.inputs.get(head)
        if tail:
            for item in value or []:
                if isinstance(item, dict):
                    found.append((f"inline {item.get('name', '?')}", item.get(tail)))
        else:
            found.append(("trust" if head == "assumeRolePolicy" else head, value))
    return [(which, document) for which, document in found if isinstance(document, dict)]


def _words(value: Any) -> str:
    values = value if isinstance(value, list) else [value]
    return ", ".join(str(v) for v in values)


def grants(resource: Resource) -> set[str]:
    """What the resource grants, one line per policy statement (or attached managed policy)."""
    lines = set()
    for which, document in _documents(resource):
        statements = document.get("Statement", [])
        for s in statements if isinstance(statements, list) else [statements]:
            if not isinstance(s, dict):
                continue
            actions = s.get("Action") or s.get("NotAction")
            line = f"{which}: {s.get('Effect', '?')} {_words(actions)}"
            if "Principal" in s:
                line += f" to {json.dumps(s['Principal'], sort_keys=True)}"
            if "Resource" in s or "NotResource" in s:
                line += f" on {_words(s.get('Resource') or s.get('NotResource'))}"
            if s.get("Condition"):
                line += f" if {json.dumps(s['Condition'], sort_keys=True)}"
            lines.add(line)
    attached = IAM_ATTACHMENTS.get(resource.type)
    if attached and resource.inputs.get(attached):
        lines |= {f"managed policy {arn}" for arn in _words(resource.inputs[attached]).split(", ")}
    if resource.type == "aws:lambda/permission:Permission":
        i = resource.inputs
        lines.add(f"invoke: {i.get('action')} of {i.get('function')} by {i.get('principal')}"
                  + (f" from {i['sourceArn']}" if i.get("sourceArn") else ""))
    return lines


def is_broad(grant: str) -> bool:
    """A grant a reviewer should stop at: a wildcard action or resource."""
    return ":*" in grant.split(" on ")[0] or " * " in f" {grant} ".replace(",", " ") or grant.endswith(" on *")


@dataclass(frozen=True)
class IamChange:
    resource: str
    added: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True)
class PlanDiff:
    stack: str
    base: str
    added: tuple[Resource, ...]
    removed: tuple[Resource, ...]
    changed: tuple[tuple[Resource, tuple[Change, ...]], ...]
    iam: tuple[IamChange, ...]
    violations: tuple[Violation, ...]  # the head's
    new_violations: tuple[Violation, ...]
    fixed_violations: tuple[Violation, ...]
    rules: int
    cost_before: CostSummary | None
    cost_after: CostSummary | None
    cost_note: str = ""
    unchanged: int = field(default=0)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    @property
    def cost_delta_usd(self) -> float | None:
        if self.cost_before is None or self.cost_after is None:
            return None
        return self.cost_after.total_usd - self.cost_before.total_usd


def diff(base: Snapshot, head: Snapshot) -> PlanDiff:
    old = {r.key: r for r in base.resources}
    new = {r.key: r for r in head.resources}
    changed = []
    for key in sorted(old.keys() & new.keys()):
        changes = property_changes(old[key].inputs, new[key].inputs)
        if changes:
            changed.append((new[key], tuple(changes)))
    iam = []
    for key in sorted(old.keys() | new.keys()):
        before = grants(old[key]) if key in old else set()
        after = grants(new[key]) if key in new else set()
        if before != after:
            label = (new.get(key) or old[key]).label
            iam.append(IamChange(label, tuple(sorted(after - before)), tuple(sorted(before - after))))
    cost_note = head.cost_note or base.cost_note
    if base.cost and head.cost and base.cost.profile != head.cost.profile:
        cost_note = f"the base was priced for profile {base.cost.profile}, this for {head.cost.profile}"
    return PlanDiff(
        stack=head.stack, base=base.source,
        added=tuple(new[k] for k in sorted(new.keys() - old.keys())),
        removed=tuple(old[k] for k in sorted(old.keys() - new.keys())),
        changed=tuple(changed), iam=tuple(iam),
        violations=head.violations,
        new_violations=tuple(v for v in head.violations if v not in base.violations),
        fixed_violations=tuple(v for v in base.violations if v not in head.violations),
        rules=head.rules, cost_before=base.cost, cost_after=head.cost, cost_note=cost_note,
        unchanged=len(old.keys() & new.keys()) - len(changed),
    )  # fmt: skip


def shown(value: Any) -> str:
    """A value as one line, whole: strings as they are, the rest as compact JSON."""
    if value == ABSENT:
        return ABSENT
    if isinstance(value, str) and "\n" not in value:
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def usd(amount: float, signed: bool = False) -> str:
    """Dollars and cents; an amount under a cent keeps its first significant digits instead of reading $0.00."""
    sign = ("+" if amount > 0 else "-" if amount < 0 else "±") if signed else ("-" if amount < 0 else "")
    size = abs(amount)
    if 0 < size < 0.01:
        if size < 1e-6:
            return f"{sign}<$0.000001"
        decimals = 1 - math.floor(math.log10(size))  # two significant digits, never in scientific notation
        return f"{sign}${size:.{decimals}f}"
    return f"{sign}${size:,.2f}"


def markdown_cell(text: str) -> str:
    """Text safe inside a Markdown table cell (and not read as HTML)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def markdown_code(text: str) -> str:
    return f"`{markdown_cell(text)}`" if "`" not in text else f"<code>{markdown_cell(text)}</code>"


def summary_line(d: PlanDiff) -> str:
    counts = f"{len(d.added)} to add, {len(d.changed)} to change, {len(d.removed)} to remove"
    return f"ai-gateway {d.stack}: {counts} against {d.base or 'the base'} ({d.unchanged} unchanged)"


def policy_line(d: PlanDiff) -> str:
    if not d.violations:
        return f"passes all {d.rules} rules" + (f" (fixes {len(d.fixed_violations)})" if d.fixed_violations else "")
    return (f"{len(d.violations)} violation(s), {len(d.new_violations)} new"
            + (f", {len(d.fixed_violations)} fixed" if d.fixed_violations else ""))


def cost_line(d: PlanDiff) -> str:
    before, after = d.cost_before, d.cost_after
    if before is None or after is None or d.cost_delta_usd is None:
        return "not compared" + (f": {d.cost_note}" if d.cost_note else "")
    line = (f"{usd(before.total_usd)} → {usd(after.total_usd)} a month ({usd(d.cost_delta_usd, signed=True)}; "
            f"fixed {usd(after.fixed_usd - before.fixed_usd, signed=True)}), profile {after.profile}")
    return line + (f" — {d.cost_note}" if d.cost_note else "")


def cost_by_service(d: PlanDiff) -> list[tuple[str, float, float]]:
    """(service, before, after) for the services whose cost moved by at least half a cent."""
    if d.cost_before is None or d.cost_after is None:
        return []
    names = dict.fromkeys([*d.cost_before.by_service, *d.cost_after.by_service])
    rows = [(s, d.cost_before.by_service.get(s, 0.0), d.cost_after.by_service.get(s, 0.0)) for s in names]
    return [row for row in rows if abs(row[2] - row[1]) >= 0.005]


def markdown(d: PlanDiff) -> str:
    """The diff as a pull-request comment: the verdicts first, details folded, nothing truncated."""
    policy_mark = "✅" if not d.violations else "❌"
    lines = [f"### {summary_line(d)}", "",
             f"- **Policy pack** {policy_mark} {policy_line(d)}",
             f"- **IAM**: {_iam_count(d)}",
             f"- **Cost**: {cost_line(d)}", ""]
    if d.violations:
        lines += ["#### Policy violations", "", "| rule | resource | message | |", "|---|---|---|---|"]
        lines += [f"| {markdown_cell(v.rule)} | {markdown_cell(v.resource)} | {markdown_cell(v.message)} | "
                  f"{'new' if v in d.new_violations else ''} |" for v in d.violations]
        lines.append("")
    if d.iam:
        lines += ["#### IAM changes", ""]
        for change in d.iam:
            lines.append(f"- {markdown_code(change.resource)}")
            lines += [f"  - ➕ {'⚠️ broad: ' if is_broad(g) else ''}{markdown_code(g)}" for g in change.added]
            lines += [f"  - ➖ {markdown_code(g)}" for g in change.removed]
        lines.append("")
    if rows := cost_by_service(d):
        lines += ["#### Cost by service (USD a month)", "", "| service | before | after | change |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {markdown_cell(s)} | {usd(b)} | {usd(a)} | {usd(a - b, signed=True)} |" for s, b, a in rows]
        lines.append("")
    for title, resources in (("Added", d.added), ("Removed", d.removed)):
        if resources:
            lines += [f"#### {title}", "", "| resource | type | component |", "|---|---|---|"]
            lines += [f"| {markdown_code(r.name)} | {markdown_cell(r.type)} | {markdown_cell(r.component or '-')} |"
                      for r in resources]
            lines.append("")
    if d.changed:
        lines += ["#### Changed", ""]
        for resource, changes in d.changed:
            lines += [f"<details><summary><code>{markdown_cell(resource.label)}</code>: {len(changes)} "
                      f"propert{'y' if len(changes) == 1 else 'ies'}</summary>", "",
                      "| property | before | after |", "|---|---|---|"]
            lines += [f"| {markdown_code(c.path)} | {markdown_code(shown(c.before))} | "
                      f"{markdown_code(shown(c.after))} |" for c in changes]
            lines += ["", "</details>", ""]
    if d.empty:
        lines += ["No resource changes.", ""]
    return "\n".join(lines)


def _iam_count(d: PlanDiff) -> str:
    if not d.iam:
        return "no changes"
    added = sum(len(c.added) for c in d.iam)
    broad = sum(is_broad(g) for c in d.iam for g in c.added)
    removed = sum(len(c.removed) for c in d.iam)
    return (f"{added} grant(s) added, {removed} removed on {len(d.iam)} resource(s)"
            + (f", ⚠️ {broad} broad" if broad else ""))


# -- the shell: snapshots of the working tree and of a base


def snapshot_resources(records: Iterable[Any], root: Path | None = None) -> tuple[Resource, ...]:
    """`Resource`s from `aigw.mocks.Recorded`s: AWS resources only, each under its top-level component."""
    records = list(records)
    by_key = {(r.type, r.name): r for r in records}

    def top_component(record: Any) -> str:
        parent, found = record.parent, ""
        while parent is not None and parent in by_key:
            found = f"{parent[1]} ({parent[0].split(':')[-1]})"
            parent = by_key[parent].parent
        return found

    return tuple(sorted((Resource(r.type, r.name, top_component(r), plain(r.inputs, root))
                         for r in records if r.type.startswith("aws:")), key=lambda r: r.key))


_CHILD = """
import importlib.util, json, os, runpy, sys
here, base, stack, config, region = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
def load(name):
    spec = importlib.util.spec_from_file_location("_aigw_" + name, os.path.join(here, name + ".py"))
    module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; spec.loader.exec_module(module)
    return module
mocks, plan_diff = load("mocks"), load("plan_diff")
sys.path.insert(0, base); os.chdir(base)
recorded = mocks.run(lambda: runpy.run_path(os.path.join(base, "__main__.py")) and None,
                     stack=stack, config=config, region=region)
as_json = lambda value: plan_diff.plain(value, documents=False)  # noqa: E731
print(json.dumps([{"type": r.type, "name": r.name, "parent": r.parent, "inputs": as_json(r.inputs),
                   "outputs": as_json(r.outputs)} for r in recorded.resources]))
"""


def checkout(ref: str, repo: Path, into: Path) -> None:
    """The tree of `ref` (tracked files only) into `into`."""
    try:
        subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=repo, check=True,
                       capture_output=True)
    except subprocess.CalledProcessError:
        raise PlanDiffError(f"{ref!r} is neither a file nor a git ref in {repo} (a shallow clone may lack it: "
                            "fetch it, e.g. `git fetch origin main`)") from None
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=repo, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, capture_output=True)


def run_base_program(base_root: Path, stack: str, config: dict[str, str], region: str) -> list[dict[str, Any]]:
    """The base's own program under our mocks, in a child process: the resources it declares, as plain JSON."""
    here = Path(__file__).resolve().parent
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(here), str(base_root), stack, json.dumps(config), region],
        capture_output=True, text=True, cwd=base_root,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-6:])
        raise PlanDiffError(f"the base's program failed under mocks:\n{tail}")
    records: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return records


def with_tempdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="aigw-plan-base-")
