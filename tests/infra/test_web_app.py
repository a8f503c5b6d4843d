"""The chat page's deployment: the pure pieces (config.json, CSP, headers, file list) as properties and examples,
the WebApp component under mocks, and the real program for both stacks (dev serves the page, prod does not)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pulumi
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from aigw.mocks import ACCOUNT, Recorded, RecordingMocks, run
from components.settings import StackSettings
from components.web_app import (
    CACHING_DISABLED_POLICY_ID,
    CACHING_OPTIMIZED_POLICY_ID,
    CONFIG_KEY,
    MAX_CSP_LENGTH,
    MINIMUM_PROTOCOL_VERSION,
    WebApp,
    WebAppArgs,
    cognito_idp_endpoint,
    connect_sources,
    content_security_policy,
    security_headers,
    web_client_config,
    web_files,
)
from tests.infra.test_program import CERTIFICATE_ARN, DOMAIN, WEB_APP_WITH_DOMAIN, program, program_with_domain

ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = ROOT / "web"
DEV_SETTINGS = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
COMPONENT = ("ai-gateway:web:WebApp", "web")

BUCKET = "aws:s3/bucket:Bucket"
OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
DISTRIBUTION = "aws:cloudfront/distribution:Distribution"
OAC = "aws:cloudfront/originAccessControl:OriginAccessControl"
HEADERS_POLICY = "aws:cloudfront/responseHeadersPolicy:ResponseHeadersPolicy"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
WEB_TYPES = {BUCKET, OBJECT, DISTRIBUTION, OAC, HEADERS_POLICY, BUCKET_POLICY}

HTTP = "https://abc.appsync-api.us-east-1.amazonaws.com/event"
REALTIME = "wss://abc.appsync-realtime-api.us-east-1.amazonaws.com/event/realtime"
COGNITO = "https://cognito-idp.us-east-1.amazonaws.com/"


def config(**changes: Any) -> dict[str, Any]:
    values = dict(region="us-east-1", http_endpoint=HTTP, realtime_endpoint=REALTIME, cognito_endpoint=COGNITO,
                  user_pool_id="us-east-1_pool", client_id="client", settings=DEV_SETTINGS)
    values.update(changes)
    return web_client_config(**values)


# --- config.json ---------------------------------------------------------------------------------------------


def test_web_client_config_has_exactly_the_shape_the_page_reads() -> None:
    assert config() == {
        "http": HTTP,
        "realtime": REALTIME,
        "region": "us-east-1",
        "cognito": {"endpoint": COGNITO, "user_pool_id": "us-east-1_pool", "client_id": "client"},
        "models": ["amazon.nova-lite-v1:0", "us.anthropic.claude-haiku-5-5"],
        # People's names for them, from the model catalog.
        "modelNames": {
            "amazon.nova-lite-v1:0": "Amazon Nova Lite", "us.anthropic.claude-haiku-5-5": "Claude Haiku 5.5 (us)",
        },
        "tiers": [
            {"name": "free", "precedence": 20, "windowTokens": 20000, "monthlyTokens": 500000,
             "models": ["amazon.nova-lite-v1:0"], "defaultModel": "amazon.nova-lite-v1:0"},
            {"name": "pro", "precedence": 10, "windowTokens": 100000, "monthlyTokens": 5000000,
             "models": ["amazon.nova-lite-v1:0", "us.anthropic.claude-haiku-5-5"],
             "defaultModel": "us.anthropic.claude-haiku-5-5"},
        ],
        "defaultTier": "free",
    }


def test_every_config_key_the_page_reads_is_in_the_config() -> None:
    # The keys are a contract with web/*.js (and the local gateway, which serves the same document).
    source = "\n".join(p.read_text(encoding="utf-8") for p in WEB_DIR.glob("*.js"))
    document = config()
    read = set(re.findall(r"\bconfig\.(\w+)", source)) - {"json"}  # "config.json", the file's name
    assert read >= {"http", "realtime", "cognito", "tiers"}
    assert read <= set(document), read - set(document)
    cognito_read = set(re.findall(r"\bconfig\.cognito\.(\w+)", source))
    assert cognito_read and cognito_read <= set(document["cognito"]), cognito_read


tier_names = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
models = st.sampled_from(["amazon.nova-lite-v1:0", "us.amazon.nova-2-lite-v1:0", "us.anthropic.claude-haiku-5-5",
                          "global.anthropic.claude-haiku-5-5"])


@given(st.lists(st.tuples(tier_names, st.integers(1, 100), st.integers(1, 10**6), st.lists(models, min_size=1,
                                                                                            max_size=3, unique=True)),
                min_size=1, max_size=4, unique_by=lambda t: t[0]))
def test_web_client_config_mirrors_any_settings(tiers: list[tuple[str, int, int, list[str]]]) -> None:
    settings = StackSettings.from_values({
        "region": "eu-west-1",
        "defaultTier": tiers[0][0],
        "tiers": [{"name": n, "precedence": p, "windowTokens": w, "monthlyTokens": w * 10, "models": m}
                  for n, p, w, m in tiers],
    })
    document = config(settings=settings, region="eu-west-1")
    assert json.loads(json.dumps(document)) == document  # plain JSON
    assert [t["name"] for t in document["tiers"]] == [t[0] for t in tiers]
    assert [t["models"] for t in document["tiers"]] == [t[3] for t in tiers]
    assert [t["defaultModel"] for t in document["tiers"]] == [t[3][0] for t in tiers]  # none named: the first
    assert document["models"] == list(dict.fromkeys(m for t in tiers for m in t[3]))
    assert document["defaultTier"] == tiers[0][0]


def test_cognito_endpoint_of_a_region() -> None:
    assert cognito_idp_endpoint("eu-central-1") == "https://cognito-idp.eu-central-1.amazonaws.com/"
    with pytest.raises(ValueError, match="region"):
        cognito_idp_endpoint("https://evil.example/")


# --- connect-src and the CSP ---------------------------------------------------------------------------------


def test_connect_sources_are_the_origins_of_the_endpoints() -> None:
    assert connect_sources(config()) == [
        "https://abc.appsync-api.us-east-1.amazonaws.com",
        "wss://abc.appsync-realtime-api.us-east-1.amazonaws.com",
        "https://cognito-idp.us-east-1.amazonaws.com",
    ]


def test_connect_sources_keep_ports_drop_paths_default_ports_and_duplicates() -> None:
    local = {"http": "http://127.0.0.1:8787/event?x=1#y", "realtime": "ws://127.0.0.1:8787/event/realtime",
             "region": "us-east-1", "cognito": {"endpoint": "http://LOCALHOST:5000/"}}
    assert connect_sources(local) == ["http://127.0.0.1:8787", "ws://127.0.0.1:8787", "http://localhost:5000"]
    default_ports = {"http": "https://h.example:443/event", "realtime": "wss://h.example:443/x", "region": "us-east-1",
                     "cognito": {"endpoint": "https://h.example/"}}
    assert connect_sources(default_ports) == ["https://h.example", "wss://h.example"]
    ipv6 = {"http": "https://[::1]:8443/event", "realtime": "wss://[::1]:8443/", "region": "us-east-1",
            "cognito": {"endpoint": "https://[::1]:9000"}}
    assert connect_sources(ipv6) == ["https://[::1]:8443", "wss://[::1]:8443", "https://[::1]:9000"]


def test_connect_sources_fall_back_to_the_regions_cognito_as_the_page_does() -> None:
    document = config(cognito_endpoint="")
    assert connect_sources(document)[-1] == "https://cognito-idp.us-east-1.amazonaws.com"
    assert connect_sources({k: v for k, v in document.items() if k != "cognito"})[-1].startswith("https://cognito-idp")


@pytest.mark.parametrize("bad", ["", "relative/path", "ftp://h.example/", "javascript:alert(1)", "https://",
                                 "https://h.example:99999/", "https://h ex.example/"])
def test_connect_sources_refuse_what_is_not_an_endpoint(bad: str) -> None:
    with pytest.raises(ValueError):
        connect_sources({**config(), "http": bad})


hosts = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}",
                      fullmatch=True)
ports = st.none() | st.integers(1, 65535)
paths = st.from_regex(r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,12}){0,4}", fullmatch=True)


@given(hosts, ports, paths, st.sampled_from(["https", "http"]), st.sampled_from(["wss", "ws"]), hosts, ports)
def test_connect_sources_property(host: str, port: int | None, path: str, scheme: str, ws_scheme: str,
                                  cognito_host: str, cognito_port: int | None) -> None:
    def url(s: str, h: str, p: int | None, tail: str) -> str:
        return f"{s}://{h}" + (f":{p}" if p is not None else "") + tail

    def origin(s: str, h: str, p: int | None) -> str:
        default = {"https": 443, "wss": 443, "http": 80, "ws": 80}[s]
        return f"{s}://{h}" + (f":{p}" if p is not None and p != default else "")

    document = {"http": url(scheme, host, port, path), "realtime": url(ws_scheme, host, port, path + "/realtime"),
                "region": "us-east-1", "cognito": {"endpoint": url("https", cognito_host, cognito_port, "/")}}
    sources = connect_sources(document)
    expected = [origin(scheme, host, port), origin(ws_scheme, host, port), origin("https", cognito_host, cognito_port)]
    assert sources == list(dict.fromkeys(expected))
    csp = content_security_policy(sources)
    [connect] = [d for d in csp.split("; ") if d.startswith("connect-src ")]
    assert connect.split()[1:] == ["'self'", *sources]


def test_content_security_policy_is_strict() -> None:
    csp = content_security_policy(connect_sources(config()))
    directives = dict(d.split(" ", 1) for d in csp.split("; "))
    assert directives == {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "connect-src": "'self' https://abc.appsync-api.us-east-1.amazonaws.com "
                       "wss://abc.appsync-realtime-api.us-east-1.amazonaws.com https://cognito-idp.us-east-1.amazonaws.com",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
    }
    for loose in ("unsafe-inline", "unsafe-eval", "unsafe-hashes", "wasm-unsafe-eval", "*", "http:", "https:"):
        assert loose not in csp.split(), loose
    assert "unsafe" not in csp


def test_the_page_needs_nothing_the_csp_forbids() -> None:
    # No inline scripts, inline styles, event-handler attributes or eval in web/ (the CSP would block them).
    for path in WEB_DIR.iterdir():
        if path.suffix not in (".html", ".js"):
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path.name
        assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", text), path.name
        assert not re.search(r"\beval\(|new Function\(", text), path.name


@pytest.mark.parametrize("bad", ["*", "https:", "'unsafe-inline'", "https://a.example; script-src *",
                                 "https://a.example https://b.example", "https://a.example/path", "data:",
                                 "https://a.example\n", "https://a.example:\u0663", "HTTPS://A.EXAMPLE"])
def test_content_security_policy_refuses_anything_but_origins(bad: str) -> None:
    with pytest.raises(ValueError, match="origins"):
        content_security_policy(["https://ok.example", bad])
    with pytest.raises(ValueError, match="sequence"):
        content_security_policy("https://ok.example")


STRICT_DIRECTIVES = [
    ("default-src", ["'none'"]),
    ("script-src", ["'self'"]),
    ("style-src", ["'self'"]),
    ("img-src", ["'self'", "data:"]),
    ("base-uri", ["'none'"]),
    ("form-action", ["'none'"]),
    ("frame-ancestors", ["'none'"]),
]
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True)
dns_names = st.lists(labels, min_size=1, max_size=4).map(".".join)
origins = st.builds(lambda scheme, host, port: f"{scheme}://{host}" + (f":{port}" if port is not None else ""),
                    st.sampled_from(["https", "wss", "http", "ws"]), dns_names, ports)


@given(st.lists(origins, max_size=6))
def test_content_security_policy_never_loosens(sources: list[str]) -> None:
    # Any list of origins: the fixed directives stay exactly as they are, connect-src is 'self' and the origins.
    csp = content_security_policy(sources)
    directives = [(d.split(" ")[0], d.split(" ")[1:]) for d in csp.split("; ")]
    assert [d for d in directives if d[0] != "connect-src"] == STRICT_DIRECTIVES
    assert directives[4] == ("connect-src", ["'self'", *dict.fromkeys(sources)])
    assert csp.count(";") == 7 and "\n" not in csp and len(csp) <= MAX_CSP_LENGTH
    tokens = csp.replace(";", " ").split()
    assert not any("unsafe" in t or "*" in t or (t.endswith(":") and t != "data:") for t in tokens), csp


HOSTILE = {  # what a connect-src entry could smuggle into the policy, and an example of it
    "separator": ";", "space": " ", "single quote": "'", "double quote": '"', "newline": "\n",
    "carriage return": "\r", "wildcard": "*", "path": "/", "keyword": "'unsafe-inline'",
}


@st.composite
def hostile_sources(draw: st.DrawFn) -> tuple[list[str], str]:
    """A list of valid origins with one entry made hostile: a HOSTILE piece put into a valid origin (anywhere in it,
    or after it), or one of the hostile pieces, a directive or a scheme-only source on its own."""
    kind = draw(st.sampled_from([*HOSTILE, "directive", "scheme only", "bare keyword"]))
    origin = draw(origins)
    if kind == "directive":
        bad = origin + "; script-src " + draw(st.sampled_from(["*", "'unsafe-inline'", "'unsafe-eval'", "data:"]))
    elif kind == "scheme only":
        bad = draw(st.sampled_from(["https:", "http:", "wss:", "data:", "blob:", "*"]))
    elif kind == "bare keyword":
        bad = draw(st.sampled_from(["'unsafe-inline'", "'unsafe-eval'", "'self'", "'none'", "'strict-dynamic'"]))
    else:
        at = draw(st.sampled_from([0, len(origin)]) | st.integers(0, len(origin)))  # the ends are where regexes slip
        piece = HOSTILE[kind] + (draw(labels) if kind == "path" else "")
        bad = origin[:at] + piece + origin[at:]
    event(f"hostile: {kind}")
    sources = draw(st.lists(origins, max_size=3))
    sources.insert(draw(st.integers(0, len(sources))), bad)
    return sources, bad


@given(hostile_sources())
def test_content_security_policy_refuses_hostile_sources(case: tuple[list[str], str]) -> None:
    sources, bad = case
    with pytest.raises(ValueError, match="origins") as raised:
        content_security_policy(sources)
    assert repr(bad) in str(raised.value)


# --- Security headers ----------------------------------------------------------------------------------------


def test_security_headers() -> None:
    headers = security_headers("default-src 'none'")
    assert headers["Content-Security-Policy"] == "default-src 'none'"
    assert headers["Strict-Transport-Security"] == "max-age=63072000; includeSubDomains"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] in ("no-referrer", "strict-origin-when-cross-origin")
    assert "camera=()" in headers["Permissions-Policy"] and "microphone=()" in headers["Permissions-Policy"]
    with pytest.raises(ValueError):
        security_headers("default-src 'none'\r\nSet-Cookie: x=1")


def headers_sent_by(policy: dict[str, Any]) -> dict[str, str]:
    """The headers a viewer gets from a response headers policy (its recorded inputs), as CloudFront writes them;
    only settings whose override is on (the origin's header would win otherwise). Fails on anything it does not
    know, so a new setting cannot slip past the comparison with `security_headers`."""
    assert set(policy) <= {"name", "comment", "securityHeadersConfig", "customHeadersConfig"}, set(policy)
    config = policy.get("securityHeadersConfig") or {}
    assert set(config) <= {"contentSecurityPolicy", "strictTransportSecurity", "contentTypeOptions", "frameOptions",
                           "referrerPolicy"}, set(config)
    assert all(section["override"] is True for section in config.values()), config
    sent = {}
    if "contentSecurityPolicy" in config:
        sent["Content-Security-Policy"] = config["contentSecurityPolicy"]["contentSecurityPolicy"]
    if "strictTransportSecurity" in config:
        hsts = config["strictTransportSecurity"]
        sent["Strict-Transport-Security"] = (f"max-age={int(hsts['accessControlMaxAgeSec'])}"
                                             + ("; includeSubDomains" if hsts.get("includeSubdomains") else "")
                                             + ("; preload" if hsts.get("preload") else ""))
    if "contentTypeOptions" in config:
        sent["X-Content-Type-Options"] = "nosniff"  # the only value CloudFront sends
    if "frameOptions" in config:
        sent["X-Frame-Options"] = config["frameOptions"]["frameOption"]
    if "referrerPolicy" in config:
        sent["Referrer-Policy"] = config["referrerPolicy"]["referrerPolicy"]
    for item in (policy.get("customHeadersConfig") or {}).get("items", []):
        assert item["override"] is True and item["header"] not in sent, item
        sent[item["header"]] = item["value"]
    return sent


def test_the_component_sends_exactly_the_security_headers_of_its_endpoints() -> None:
    local = {"http_endpoint": "http://127.0.0.1:8787/event", "realtime_endpoint": "ws://127.0.0.1:8787/event/realtime",
             "cognito_endpoint": "http://localhost:5000/"}
    mocks = run(lambda: WebApp("web", make_args(**local)))
    document = {"http": local["http_endpoint"], "realtime": local["realtime_endpoint"],
                "cognito": {"endpoint": local["cognito_endpoint"]}}
    expected = security_headers(content_security_policy(connect_sources(document)))
    assert headers_sent_by(mocks.one(HEADERS_POLICY).inputs) == expected
    assert "connect-src 'self' http://127.0.0.1:8787 ws://127.0.0.1:8787 http://localhost:5000;" in (
        expected["Content-Security-Policy"])


# --- The files -----------------------------------------------------------------------------------------------


def test_web_files_of_the_real_page() -> None:
    files = {f.key: f for f in web_files(WEB_DIR)}
    assert {"index.html", "app.js", "events.js", "cognito.js", "style.css"} <= set(files)
    assert files["index.html"].content_type == "text/html; charset=utf-8"
    assert files["app.js"].content_type.startswith("text/javascript")
    assert files["style.css"].content_type.startswith("text/css")
    assert CONFIG_KEY not in files
    assert all(f.path == WEB_DIR / f.key for f in files.values())
    assert list(files) == sorted(files)


def make_page(root: Path, *names: str) -> Path:
    for name in ("index.html", *names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    return root


def test_web_files_types_keys_and_skips(tmp_path: Path) -> None:
    make_page(tmp_path, "img/logo.svg", "img/photo.PNG", "config.json", ".DS_Store", ".cache/x.bin", "m.mjs")
    assert [(f.key, f.content_type) for f in web_files(tmp_path)] == [
        ("img/logo.svg", "image/svg+xml"),
        ("img/photo.PNG", "image/png"),
        ("index.html", "text/html; charset=utf-8"),
        ("m.mjs", "text/javascript; charset=utf-8"),
    ]


@pytest.mark.parametrize("name", ["README.md", "notes", "app.ts", "archive.tar.gz"])
def test_web_files_refuse_unknown_suffixes(tmp_path: Path, name: str) -> None:
    make_page(tmp_path, name)
    with pytest.raises(ValueError, match=re.escape(name)) as raised:
        web_files(tmp_path)
    assert "CONTENT_TYPES" in str(raised.value)


def test_web_files_need_an_index_and_a_directory(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("")
    with pytest.raises(ValueError, match=r"index\.html"):
        web_files(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        web_files(tmp_path / "missing")


# --- The component on its own ----------------------------------------------------------------------------------


def make_args(**changes: Any) -> WebAppArgs:
    args = WebAppArgs(
        name="ai-gateway-dev",
        settings=DEV_SETTINGS,
        web_dir=WEB_DIR,
        user_pool_id="us-east-1_pool",
        client_id=pulumi.Output.from_input("client"),
        http_endpoint=HTTP,
        realtime_endpoint=REALTIME,
        tags={"project": "ai-gateway"},
    )
    return dataclasses.replace(args, **changes)


def test_component_outputs_and_parents() -> None:
    seen: dict[str, Any] = {}

    def deploy() -> pulumi.Output[Any]:
        web = WebApp("web", make_args())
        names = ("url", "distribution_id", "distribution_domain", "bucket_name")
        return pulumi.Output.all(*(getattr(web, n) for n in names)).apply(
            lambda values: seen.update(zip(names, values, strict=True)))

    mocks = run(deploy)
    distribution = mocks.one(DISTRIBUTION).outputs
    assert seen == {
        "url": f"https://{distribution['domainName']}",
        "distribution_id": distribution["id"],
        "distribution_domain": distribution["domainName"],
        "bucket_name": f"ai-gateway-dev-web-{ACCOUNT}-us-east-1",
    }
    children = [r for r in mocks.resources if (r.type, r.name) != COMPONENT]
    assert children and all(r.parent == COMPONENT for r in children)


def with_domain(settings: StackSettings = DEV_SETTINGS, **web_app: Any) -> StackSettings:
    return StackSettings.from_values({**settings.model_dump(by_alias=True),
                                      "webApp": {**WEB_APP_WITH_DOMAIN, **web_app}})


def component_outputs(args: WebAppArgs) -> tuple[RecordingMocks, dict[str, Any]]:
    seen: dict[str, Any] = {}

    def deploy() -> pulumi.Output[Any]:
        web = WebApp("web", args)
        names = ("url", "distribution_id", "distribution_domain", "bucket_name")
        return pulumi.Output.all(*(getattr(web, n) for n in names)).apply(
            lambda values: seen.update(zip(names, values, strict=True)))

    return run(deploy), seen


def test_component_on_its_own_domain() -> None:
    mocks, seen = component_outputs(make_args(settings=with_domain()))
    distribution = mocks.one(DISTRIBUTION)
    assert distribution.inputs["aliases"] == [DOMAIN]
    assert distribution.inputs["viewerCertificate"] == {
        "acmCertificateArn": CERTIFICATE_ARN,
        "sslSupportMethod": "sni-only",
        "minimumProtocolVersion": "TLSv1.2_2021",
    }
    assert MINIMUM_PROTOCOL_VERSION == "TLSv1.2_2021"
    # The page's address is the team's name; the distribution's own name is what that name's CNAME points at.
    assert seen["url"] == f"https://{DOMAIN}"
    assert seen["distribution_domain"] == distribution.outputs["domainName"]
    assert seen["distribution_domain"].endswith(".cloudfront.net")
    # Neither the certificate nor the DNS record is made here: DNS is often run outside this account.
    assert not [r.type for r in mocks.resources if r.type.startswith(("aws:acm/", "aws:route53/"))]


def test_component_without_a_domain_keeps_the_default_certificate() -> None:
    mocks, seen = component_outputs(make_args())
    distribution = mocks.one(DISTRIBUTION)
    assert "aliases" not in distribution.inputs
    assert distribution.inputs["viewerCertificate"] == {"cloudfrontDefaultCertificate": True}
    assert seen["url"] == f"https://{distribution.outputs['domainName']}"


def test_the_domain_changes_nothing_else_of_the_distribution() -> None:
    plain = run(lambda: WebApp("web", make_args())).one(DISTRIBUTION).inputs
    named = run(lambda: WebApp("web", make_args(settings=with_domain()))).one(DISTRIBUTION).inputs
    assert set(named) - set(plain) == {"aliases"}
    assert {k: v for k, v in named.items() if k not in ("aliases", "viewerCertificate")} == {
        k: v for k, v in plain.items() if k != "viewerCertificate"}


@pytest.mark.parametrize("web_app", [{"domain_name": None}, {"certificate_arn": None}])
def test_args_refuse_a_domain_without_its_certificate_even_past_the_settings(web_app: dict[str, Any]) -> None:
    # `model_copy(update=...)` skips validation: the component checks the pair again.
    settings = with_domain()
    settings = settings.model_copy(update={"web_app": settings.web_app.model_copy(update=web_app)})
    with pytest.raises(ValueError, match="give both or neither"):
        make_args(settings=settings)


def test_price_class_comes_from_the_settings() -> None:
    settings = StackSettings.from_values({**DEV_SETTINGS.model_dump(by_alias=True),
                                          "webApp": {"enabled": True, "priceClass": "PriceClass_All"}})
    mocks = run(lambda: WebApp("web", make_args(settings=settings)))
    assert mocks.one(DISTRIBUTION).inputs["priceClass"] == "PriceClass_All"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "AI_Gateway"}, "lowercase"),
        ({"name": "a" * 40}, "too long"),
        ({"web_dir": ROOT / "no-such-dir"}, "not a directory"),
    ],
)
def test_bad_args_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_args(**changes)


def test_a_page_with_an_unknown_file_stops_the_program(tmp_path: Path) -> None:
    make_page(tmp_path, "notes.md")
    with pytest.raises(Exception) as raised:
        run(lambda: WebApp("web", make_args(web_dir=tmp_path)))
    error: BaseException | None = raised.value
    while error is not None and "notes.md" not in str(error):
        error = error.__cause__ or error.__context__
    assert error is not None


# --- The real program -------------------------------------------------------------------------------------------


def web_resources(mocks: RecordingMocks) -> list[Recorded]:
    return [r for r in mocks.resources if r.parent == COMPONENT]


def on_bucket(mocks: RecordingMocks, type_: str, bucket: Recorded) -> list[Recorded]:
    return [r for r in mocks.of_type(type_) if r.inputs.get("bucket") == bucket.outputs["id"]]


def web_bucket(mocks: RecordingMocks) -> Recorded:
    [bucket] = [b for b in mocks.of_type(BUCKET) if b.parent == COMPONENT]
    return bucket


def dev_config() -> dict[str, Any]:
    mocks = program("dev")
    [document] = [o for o in mocks.of_type(OBJECT) if o.inputs["key"] == CONFIG_KEY]
    return json.loads(document.inputs["content"])


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_program_serves_the_page_on_a_configured_domain(stack: str) -> None:
    mocks = program_with_domain(stack)
    d = mocks.one(DISTRIBUTION)
    assert d.parent == COMPONENT
    assert d.inputs["aliases"] == [DOMAIN]
    assert d.inputs["viewerCertificate"] == {"acmCertificateArn": CERTIFICATE_ARN, "sslSupportMethod": "sni-only",
                                             "minimumProtocolVersion": MINIMUM_PROTOCOL_VERSION}
    assert not [r.type for r in mocks.resources if r.type.startswith(("aws:acm/", "aws:route53/"))]
    # Everything else of the page is as without a domain (same resources, same config.json).
    plain = program("dev")
    assert sorted((r.type, r.name) for r in web_resources(mocks)) == sorted(
        (r.type, r.name) for r in web_resources(plain))


def exports(stack: str, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> tuple[RecordingMocks, dict[str, Any]]:
    """The real program's stack outputs (`pulumi.export`), resolved."""
    from aigw.plan import run_stack

    exported: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.__setitem__(name, value))

    def resolve(values: list[Any]) -> None:
        exported.update(zip(list(exported), values, strict=True))

    mocks = run_stack(stack, overrides=overrides)
    run(lambda: pulumi.Output.all(*exported.values()).apply(resolve))
    return mocks, exported


def test_the_program_exports_where_to_point_the_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    mocks, exported = exports("dev", monkeypatch, webApp=WEB_APP_WITH_DOMAIN)
    domain_name = mocks.one(DISTRIBUTION).outputs["domainName"]
    assert exported["web_url"] == f"https://{DOMAIN}"
    assert exported["web_distribution_domain"] == domain_name and domain_name.endswith(".cloudfront.net")
    assert {"web_distribution_id", "web_bucket", "http_endpoint", "dashboard_url"} <= set(exported)


def test_the_program_without_a_domain_exports_the_distributions_address(monkeypatch: pytest.MonkeyPatch) -> None:
    mocks, exported = exports("dev", monkeypatch)
    domain_name = mocks.one(DISTRIBUTION).outputs["domainName"]
    assert exported["web_url"] == f"https://{domain_name}"
    assert exported["web_distribution_domain"] == domain_name
    _, prod = exports("prod", monkeypatch)
    assert not {"web_url", "web_distribution_id", "web_distribution_domain", "web_bucket"} & set(prod)
    assert "web_client_id" in prod  # the Cognito app client: there with or without the page


def test_prod_has_no_web_page() -> None:
    mocks = program("prod")
    assert not any(r.type == COMPONENT[0] for r in mocks.resources)
    assert web_resources(mocks) == []
    assert mocks.of_type(DISTRIBUTION) == mocks.of_type(OAC) == mocks.of_type(OBJECT) == []


def test_dev_page_is_a_component_whose_children_all_have_a_parent() -> None:
    mocks = program("dev")
    assert mocks.one(COMPONENT[0]).parent is None
    children = web_resources(mocks)
    assert {r.type for r in children} >= WEB_TYPES
    assert all(r.parent == COMPONENT for r in mocks.resources if r.type in (DISTRIBUTION, OAC, HEADERS_POLICY, OBJECT))


def test_dev_bucket_is_private_encrypted_and_owner_enforced() -> None:
    mocks = program("dev")
    bucket = web_bucket(mocks)
    assert bucket.inputs["bucket"] == f"ai-gateway-dev-web-{ACCOUNT}-us-east-1"
    [block] = on_bucket(mocks, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", bucket)
    assert all(block.inputs[f] is True
               for f in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))
    [ownership] = on_bucket(mocks, "aws:s3/bucketOwnershipControls:BucketOwnershipControls", bucket)
    assert ownership.inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    [sse] = on_bucket(mocks, "aws:s3/bucketServerSideEncryptionConfiguration:"
                             "BucketServerSideEncryptionConfiguration", bucket)
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    assert not any(r.type.startswith("aws:s3/bucketWebsiteConfiguration") for r in mocks.resources)
    assert not any(r.type == "aws:s3/bucketAcl:BucketAcl" for r in mocks.resources)


def test_dev_bucket_policy_lets_only_this_distribution_read_over_tls() -> None:
    mocks = program("dev")
    bucket = web_bucket(mocks)
    [policy] = on_bucket(mocks, BUCKET_POLICY, bucket)
    statements = json.loads(policy.inputs["policy"])["Statement"]
    arn = f"arn:aws:s3:::{bucket.inputs['bucket']}"
    distribution = mocks.one(DISTRIBUTION)
    assert distribution.outputs["arn"].startswith(f"arn:aws:cloudfront::{ACCOUNT}:distribution/")
    deny, allow = statements
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [arn, f"{arn}/*"]
    assert allow == {
        "Sid": "AllowCloudFrontRead",
        "Effect": "Allow",
        "Principal": {"Service": "cloudfront.amazonaws.com"},
        "Action": "s3:GetObject",
        "Resource": f"{arn}/*",
        "Condition": {"StringEquals": {"AWS:SourceArn": distribution.outputs["arn"]}},
    }


def test_dev_distribution_reads_the_bucket_through_the_oac_over_https() -> None:
    mocks = program("dev")
    oac = mocks.one(OAC)
    assert (oac.inputs["originAccessControlOriginType"], oac.inputs["signingBehavior"],
            oac.inputs["signingProtocol"]) == ("s3", "always", "sigv4")
    d = mocks.one(DISTRIBUTION).inputs
    assert d["enabled"] is True and d["isIpv6Enabled"] is True and d["httpVersion"] == "http2and3"
    assert d["defaultRootObject"] == "index.html" and d["priceClass"] == "PriceClass_100"
    [origin] = d["origins"]
    assert origin["domainName"] == web_bucket(mocks).outputs["bucketRegionalDomainName"]
    assert origin["originAccessControlId"] == oac.outputs["id"]
    assert "s3OriginConfig" not in origin and "customOriginConfig" not in origin
    headers_id = mocks.one(HEADERS_POLICY).outputs["id"]
    default = d["defaultCacheBehavior"]
    assert default["viewerProtocolPolicy"] == "redirect-to-https"
    assert default["allowedMethods"] == default["cachedMethods"] == ["GET", "HEAD"]
    assert default["compress"] is True and default["cachePolicyId"] == CACHING_OPTIMIZED_POLICY_ID
    assert default["responseHeadersPolicyId"] == headers_id and default["targetOriginId"] == origin["originId"]
    [config_behavior] = d["orderedCacheBehaviors"]
    assert config_behavior["pathPattern"] == CONFIG_KEY
    assert config_behavior["cachePolicyId"] == CACHING_DISABLED_POLICY_ID
    assert config_behavior["viewerProtocolPolicy"] == "redirect-to-https"
    assert config_behavior["responseHeadersPolicyId"] == headers_id
    assert d["viewerCertificate"] == {"cloudfrontDefaultCertificate": True}
    assert d["restrictions"]["geoRestriction"]["restrictionType"] == "none"


def test_dev_headers_policy_sends_the_security_headers_of_the_stacks_endpoints() -> None:
    mocks = program("dev")
    document = dev_config()
    expected = security_headers(content_security_policy(connect_sources(document)))
    sent = headers_sent_by(mocks.one(HEADERS_POLICY).inputs)
    assert sent == expected
    assert list(sent) == list(expected)  # the same headers, not just the same values under other names
    [connect] = [d.split()[1:] for d in sent["Content-Security-Policy"].split("; ") if d.startswith("connect-src ")]
    api = mocks.one("aws:appsync/api:Api").outputs["dns"]
    assert connect == ["'self'", f"https://{api['HTTP']}", f"wss://{api['REALTIME']}",
                       "https://cognito-idp.us-east-1.amazonaws.com"]


def test_dev_uploads_every_web_file_with_its_content_type() -> None:
    mocks = program("dev")
    objects = {o.inputs["key"]: o.inputs for o in mocks.of_type(OBJECT)}
    files = web_files(WEB_DIR)
    assert set(objects) == {f.key for f in files} | {CONFIG_KEY}
    for f in files:
        inputs = objects[f.key]
        assert inputs["contentType"] == f.content_type, f.key
        # Uploaded from the file itself: Pulumi hashes a FileAsset's contents, so a changed file is re-uploaded.
        assert isinstance(inputs["source"], pulumi.FileAsset) and Path(inputs["source"].path) == f.path, f.key
        assert "content" not in inputs, f.key
        # No content hash in the names: browsers must revalidate every file on every load (a new app.js never
        # runs next to an old cognito.js for minutes after a deploy).
        assert inputs["cacheControl"] == "no-cache", f.key
        assert inputs["bucket"] == web_bucket(mocks).outputs["id"]
    assert objects["index.html"]["contentType"] == "text/html; charset=utf-8"


def test_dev_config_json_is_web_client_config_of_the_stacks_outputs() -> None:
    mocks = program("dev")
    [document] = [o.inputs for o in mocks.of_type(OBJECT) if o.inputs["key"] == CONFIG_KEY]
    assert document["contentType"] == "application/json" and document["cacheControl"] == "no-store"
    api = mocks.one("aws:appsync/api:Api").outputs["dns"]
    pool = mocks.one("aws:cognito/userPool:UserPool").outputs["id"]
    client = mocks.one("aws:cognito/userPoolClient:UserPoolClient").outputs["id"]
    assert json.loads(document["content"]) == web_client_config(
        region="us-east-1",
        http_endpoint=f"https://{api['HTTP']}/event",
        realtime_endpoint=f"wss://{api['REALTIME']}/event/realtime",
        cognito_endpoint=cognito_idp_endpoint("us-east-1"),
        user_pool_id=pool,
        client_id=client,
        settings=DEV_SETTINGS,
    )


def test_dev_cognito_client_allows_the_pages_sign_in_flows() -> None:
    client = program("dev").one("aws:cognito/userPoolClient:UserPoolClient").inputs
    assert {"ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"} <= set(client["explicitAuthFlows"])
    assert client.get("generateSecret") in (None, False)  # a browser cannot keep a secret
