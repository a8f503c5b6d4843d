"""The ai-gateway policy pack: guardrails every stack must pass before `pulumi preview`/`pulumi up` succeeds.

`policy.rules` holds the rules as plain, importable `pulumi_policy` policy objects (`ALL_RULES`), so tests can
call each rule's `validate` directly. `policy/__main__.py` is the only place a `PolicyPack` is constructed,
because constructing one starts the analyzer's gRPC server and blocks. Run the pack with
`pulumi preview --policy-pack policy` (CI does, see `.github/workflows/preview.yml`).
"""
