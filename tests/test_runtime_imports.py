"""`runtime/` ships to Lambda as plain source beside AWS's managed Powertools layer: no build, no vendoring.

So it may import only the standard library, boto3/botocore (in the Lambda runtime), Powertools and the
pydantic that the Powertools layer bundles, and itself.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
LAMBDA_PROVIDED = {"boto3", "botocore", "aws_lambda_powertools", "pydantic"}
ALLOWED = set(sys.stdlib_module_names) | LAMBDA_PROVIDED | {"__future__", "runtime"}


def imported_top_level_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def test_runtime_imports_only_what_lambda_provides() -> None:
    files = sorted(RUNTIME.rglob("*.py"))
    assert files, "no runtime sources found"
    offenders = {
        str(f.relative_to(RUNTIME.parent)): sorted(extra)
        for f in files
        if (extra := imported_top_level_modules(f) - ALLOWED)
    }
    assert offenders == {}


def test_the_check_itself_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import requests\nfrom moto import mock_aws\nfrom . import sibling\nimport json\n")
    assert imported_top_level_modules(bad) - ALLOWED == {"requests", "moto"}
