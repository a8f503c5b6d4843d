"""The policy pack's entry point — the only place a `PolicyPack` is constructed (constructing one starts the
analyzer's gRPC server and blocks until the CLI is done with it).

`pulumi preview --policy-pack policy` runs this file with `runpy.run_path("policy", run_name="__main__")`: the
pack directory is on `sys.path`, the repository root is not, so it is added here and the rules are imported
as `policy.rules` — the same module the tests import.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from policy.rules import ALL_RULES  # noqa: E402

if __name__ == "__main__":
    PolicyPack(
        name="ai-gateway-guardrails",
        description="Encryption at rest, prod durability, log retention, no public S3, least-privilege IAM, "
                    "arm64 Lambda, MFA and HTTPS-only, OAC-signed, header-hardened CloudFront for the ai-gateway "
                    "stacks.",
        enforcement_level=EnforcementLevel.MANDATORY,
        policies=list(ALL_RULES),
    )
