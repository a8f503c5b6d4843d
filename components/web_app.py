"""The chat page: the static files of ``web/`` in a private S3 bucket, served by CloudFront over HTTPS only.

The page is plain ES modules with no build step, so every file of ``web/`` is uploaded as it is (`web_files`
gives each its content type and refuses a suffix it does not know). Next to them the component writes
``config.json`` — the page's endpoints, Cognito pool and client, models and tiers (`web_client_config`, the
same function the local gateway serves it with) — from the stack's outputs, so the page needs no build step
per stack either. It is served without caching (``no-store`` and CloudFront's managed ``CachingDisabled``
policy), so a new deployment's endpoints are seen at once. The other files have no content hash in their names,
so they are sent with ``Cache-Control: no-cache``: a browser revalidates each of them (ETag) on every load, and
the managed ``CachingOptimized`` policy keeps them at the edge for its 1 s minimum TTL only. A page can then mix
the modules of two deployments only if it loads while (or within a second after) the files are uploaded, not for
minutes after a deploy.

The bucket is private: public access block, bucket-owner-enforced ownership, SSE-S3, TLS only, and its policy
lets only this distribution (``cloudfront.amazonaws.com`` with ``AWS:SourceArn`` = the distribution's ARN)
read objects, through an origin access control that signs every request (SigV4). Viewers are redirected to
HTTPS, and every response carries the headers of `security_headers` — a strict Content-Security-Policy whose
``connect-src`` allows only the page itself, this stack's AppSync Events endpoints and the Cognito endpoint
(`connect_sources`) — from one CloudFront response headers policy built from the same constants
(tests/infra check that it sends exactly that dictionary).

With ``webApp.domainName`` and ``webApp.certificateArn`` set, the distribution answers to that name as well
(an alias) with that ACM certificate (SNI, `MINIMUM_PROTOCOL_VERSION`), and `WebApp.url` is ``https://<name>``.
The component creates neither the certificate nor the DNS record: the zone is often run elsewhere, so the team
that owns it points a CNAME (or a Route 53 alias) for the name at `WebApp.distribution_domain`.

The pure functions at the top take plain strings so the local gateway can send the very same headers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pulumi
import pulumi_aws as aws

from components._s3 import private_bucket
from components.settings import StackSettings

__all__ = [
    "CACHING_DISABLED_POLICY_ID",
    "CACHING_OPTIMIZED_POLICY_ID",
    "CONFIG_KEY",
    "CONTENT_TYPES",
    "INDEX_KEY",
    "MINIMUM_PROTOCOL_VERSION",
    "PRICE_CLASSES",
    "SSL_SUPPORT_METHOD",
    "WebApp",
    "WebAppArgs",
    "WebFile",
    "cognito_idp_endpoint",
    "connect_sources",
    "content_security_policy",
    "security_headers",
    "web_client_config",
    "web_files",
]

# AWS managed cache policies (the same ids in every account; see "Use managed cache policies" in the CloudFront
# Developer Guide). CachingOptimized: gzip/brotli, no cookies/headers/query strings in the key, TTL from the
# origin's Cache-Control within 1 s..1 year (default 1 day). CachingDisabled: every request goes to the origin.
CACHING_OPTIMIZED_POLICY_ID = "658327ea-f89d-4fab-a63d-7e88639e58f6"
CACHING_DISABLED_POLICY_ID = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"

CONFIG_KEY = "config.json"
INDEX_KEY = "index.html"
# The files are ES modules with no content hash in their names: a cached old cognito.js next to a new app.js (a
# missing export) is a blank page. So nothing is reused unchecked: browsers revalidate every file on every load
# (a 304 when its ETag still matches), and CachingOptimized keeps it at the edge for its 1 s minimum TTL only.
STATIC_CACHE_CONTROL = "no-cache"
CONFIG_CACHE_CONTROL = "no-store"
CONFIG_CONTENT_TYPE = "application/json"

PRICE_CLASSES = ("PriceClass_100", "PriceClass_200", "PriceClass_All")

# With the stack's own domain (a custom certificate): SNI, as every current client sends it (``vip`` is a dedicated
# IP per edge location for pre-SNI clients, billed monthly), and the security policy CloudFront recommends for
# that: TLS 1.2 or 1.3 with forward-secret AEAD ciphers only. The policy pack's `cloudfront-modern-tls` checks both.
SSL_SUPPORT_METHOD = "sni-only"
MINIMUM_PROTOCOL_VERSION = "TLSv1.2_2021"

# Suffix -> Content-Type. Anything else in web/ is refused: a guessed type is how a script ends up served as
# text/plain (blocked by nosniff) or a page as application/octet-stream (downloaded instead of shown).
CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}

# --- Security headers (one source of truth for CloudFront and the local gateway) ------------------------------

# `security_headers` formats these for the local gateway; `_headers_policy_args` hands the same values to
# CloudFront's security settings (which send only ``nosniff`` for X-Content-Type-Options).
HSTS_MAX_AGE_S = 63_072_000  # two years
HSTS_INCLUDE_SUBDOMAINS = True
FRAME_OPTIONS = "DENY"
REFERRER_POLICY = "no-referrer"
# The page uses none of these powerful features; deny them to the page and anything it could embed.
PERMISSIONS_POLICY = ("accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), "
                      "payment=(), usb=()")
# Headers CloudFront has no security setting for: sent as custom headers of the response headers policy.
CUSTOM_HEADERS: Mapping[str, str] = MappingProxyType({"Permissions-Policy": PERMISSIONS_POLICY})
MAX_CSP_LENGTH = 1783  # CloudFront's quota for a response headers policy's Content-Security-Policy value

CSP_FIXED_DIRECTIVES = (
    ("default-src", ("'none'",)),
    ("script-src", ("'self'",)),
    ("style-src", ("'self'",)),
    ("img-src", ("'self'", "data:")),
)
CSP_CLOSING_DIRECTIVES = (
    ("base-uri", ("'none'",)),
    ("form-action", ("'none'",)),
    ("frame-ancestors", ("'none'",)),
)
_SCHEMES = {"https": 443, "http": 80, "wss": 443, "ws": 80}
# An origin as CSP reads it: scheme://host[:port], nothing that could end or extend the directive. Used with
# `fullmatch` (`$` would let a trailing newline through) and ASCII digits only (`\d` also matches e.g. "٣").
_SOURCE = re.compile(r"(?:https|http|wss|ws)://(?:\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)(?::[0-9]{1,5})?")


def cognito_idp_endpoint(region: str) -> str:
    """The Cognito user pools API endpoint of `region` (what the page calls for USER_PASSWORD_AUTH)."""
    if not re.fullmatch(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d", region):
        raise ValueError(f"region does not look like an AWS region: {region!r}")
    return f"https://cognito-idp.{region}.amazonaws.com/"


def web_client_config(
    *,
    region: str,
    http_endpoint: str,
    realtime_endpoint: str,
    cognito_endpoint: str,
    user_pool_id: str,
    client_id: str,
    settings: StackSettings,
) -> dict[str, Any]:
    """The page's ``/config.json``: endpoints, Cognito pool and client, the models the tiers allow, the tiers.

    The local gateway serves the same document (with its local endpoints), so the key names are a contract
    with ``web/app.js`` and ``web/cognito.js``.
    """
    return {
        "http": http_endpoint,
        "realtime": realtime_endpoint,
        "region": region,
        "cognito": {"endpoint": cognito_endpoint, "user_pool_id": user_pool_id, "client_id": client_id},
        "models": list(settings.model_ids),
        "modelNames": settings.model_names(),
        "tiers": [
            {
                "name": t.name,
                "precedence": t.precedence,
                "windowTokens": t.window_tokens,
                "monthlyTokens": t.monthly_tokens,
                "models": list(t.models),
                "defaultModel": t.model,  # what the gateway uses when the request names no model
            }
            for t in settings.tiers
        ],
        "defaultTier": settings.default_tier,
    }


def _origin(url: str, what: str) -> str:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http(s)/ws(s) URL, got {url!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{what} has an invalid port: {url!r}") from None
    origin = f"{scheme}://{host}" + (f":{port}" if port is not None and port != _SCHEMES[scheme] else "")
    if not _SOURCE.fullmatch(origin):
        raise ValueError(f"{what} does not give a usable origin: {url!r}")
    return origin


def connect_sources(config: Mapping[str, Any]) -> list[str]:
    """The origins the page connects to, from its config: AppSync HTTP, AppSync realtime, Cognito.

    Each is ``scheme://host[:port]`` (paths, queries and default ports dropped; the realtime endpoint keeps its
    ``wss``/``ws`` scheme). A config without a Cognito endpoint falls back to the region's, as the page does.
    Duplicates are dropped, order kept.
    """
    cognito = config.get("cognito") or {}
    cognito_endpoint = cognito.get("endpoint") or cognito_idp_endpoint(str(config.get("region") or ""))
    origins = [
        _origin(str(config.get("http") or ""), "http endpoint"),
        _origin(str(config.get("realtime") or ""), "realtime endpoint"),
        _origin(str(cognito_endpoint), "cognito endpoint"),
    ]
    return list(dict.fromkeys(origins))


def content_security_policy(connect_src: Sequence[str]) -> str:
    """A strict CSP for the page: its own scripts and styles only, no inline code, no framing, no forms, and
    network access only to itself and `connect_src` (origins such as `connect_sources` returns)."""
    if isinstance(connect_src, str):
        raise ValueError("connect_src must be a sequence of origins, not one string")
    sources = []
    for source in connect_src:
        if not isinstance(source, str) or not _SOURCE.fullmatch(source):
            raise ValueError(f"connect-src entries must be origins (scheme://host[:port]), got {source!r}")
        sources.append(source)
    directives = [
        *CSP_FIXED_DIRECTIVES,
        ("connect-src", ("'self'", *dict.fromkeys(sources))),
        *CSP_CLOSING_DIRECTIVES,
    ]
    csp = "; ".join(f"{name} {' '.join(values)}" for name, values in directives)
    if len(csp) > MAX_CSP_LENGTH:
        raise ValueError(f"Content-Security-Policy is {len(csp)} characters; CloudFront accepts {MAX_CSP_LENGTH}")
    return csp


def security_headers(csp: str) -> dict[str, str]:
    """Every security header the page is served with, by the local gateway as by CloudFront (whose response
    headers policy, `_headers_policy_args`, expresses the same constants in its own terms)."""
    if not csp or any(c in csp for c in "\r\n"):
        raise ValueError("csp must be a non-empty single-line header value")
    hsts = f"max-age={HSTS_MAX_AGE_S}" + ("; includeSubDomains" if HSTS_INCLUDE_SUBDOMAINS else "")
    return {
        "Content-Security-Policy": csp,
        "Strict-Transport-Security": hsts,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": FRAME_OPTIONS,
        "Referrer-Policy": REFERRER_POLICY,
        **CUSTOM_HEADERS,
    }


class WebFile(NamedTuple):
    key: str
    path: Path
    content_type: str


def web_files(web_dir: Path) -> list[WebFile]:
    """The page's static files under `web_dir` as ``(key, path, content_type)``, sorted by key.

    Keys are paths relative to `web_dir` with ``/`` separators. Hidden files and directories (``.name``) and a
    local ``config.json`` are skipped (the component writes the stack's own); an unknown suffix is an error.
    """
    root = Path(web_dir)
    if not root.is_dir():
        raise ValueError(f"web_dir {str(root)!r} is not a directory")
    found, unknown = [], []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        key = relative.as_posix()
        if key == CONFIG_KEY:
            continue
        content_type = CONTENT_TYPES.get(path.suffix.lower())
        if content_type is None:
            unknown.append(key)
            continue
        found.append(WebFile(key, path, content_type))
    if unknown:
        raise ValueError(
            f"{root}: no content type known for {unknown}; add the suffix to components.web_app.CONTENT_TYPES "
            "or move the file out of the page's directory"
        )
    if not any(f.key == INDEX_KEY for f in found):
        raise ValueError(f"{root}: no {INDEX_KEY}")
    return found


# --- The component ----------------------------------------------------------------------------------------------

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # S3 bucket names: lowercase, no underscores
_ACCOUNT_ID_LEN = 12


@dataclass(frozen=True, kw_only=True)
class WebAppArgs:
    """What the page needs from the rest of the stack; the caller reads config, not the component.

    The endpoints, pool and client end up in ``config.json`` and (as origins) in the CSP's ``connect-src``.
    `settings` supplies the region, the tiers and models for ``config.json``, ``webApp.priceClass`` and the
    optional ``webApp.domainName`` with its ``webApp.certificateArn``.
    """

    name: str
    """Prefix of every physical name, e.g. ``ai-gateway-dev`` (lowercase: it names the S3 bucket)."""
    settings: StackSettings
    web_dir: Path
    user_pool_id: pulumi.Input[str]
    client_id: pulumi.Input[str]
    http_endpoint: pulumi.Input[str]
    """``https://<AppSync HTTP domain>/event``."""
    realtime_endpoint: pulumi.Input[str]
    """``wss://<AppSync realtime domain>/event/realtime``."""
    cognito_endpoint: str | None = None
    """The Cognito API the page signs in with; None: the region's `cognito_idp_endpoint`."""
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"name must be lowercase letters, digits and '-', got {self.name!r}")
        for what, value, limit in (
            ("S3 bucket name", self.bucket_name("0" * _ACCOUNT_ID_LEN), 63),
            ("origin access control name", self.origin_access_control_name, 64),
            ("response headers policy name", self.headers_policy_name, 128),
        ):
            if len(value) > limit:
                raise ValueError(f"name {self.name!r} is too long: {what} {value!r} exceeds {limit} characters")
        if self.price_class not in PRICE_CLASSES:
            raise ValueError(f"price class must be one of {PRICE_CLASSES}, got {self.price_class!r}")
        if (self.domain_name is None) != (self.certificate_arn is None):
            # The settings refuse one without the other; `model_copy(update=...)` would skip that check.
            raise ValueError("a domain name needs a certificate ARN and a certificate ARN a domain name: give both or "
                             f"neither, got {self.domain_name!r} and {self.certificate_arn!r}")
        if not Path(self.web_dir).is_dir():
            raise ValueError(f"web_dir {str(self.web_dir)!r} is not a directory")
        cognito_idp_endpoint(self.region)  # validates the region

    @property
    def region(self) -> str:
        return self.settings.region

    @property
    def price_class(self) -> str:
        return self.settings.web_app.price_class

    @property
    def domain_name(self) -> str | None:
        """The page's own name, or None for the distribution's ``*.cloudfront.net`` name only."""
        return self.settings.web_app.domain_name

    @property
    def certificate_arn(self) -> str | None:
        """The us-east-1 ACM certificate for `domain_name` (the settings require both or neither)."""
        return self.settings.web_app.certificate_arn

    def bucket_name(self, account: str) -> str:
        # Bucket names are global: the account and region keep stacks (and their copies) apart.
        return f"{self.name}-web-{account}-{self.region}"

    @property
    def origin_access_control_name(self) -> str:
        return f"{self.name}-web"

    @property
    def headers_policy_name(self) -> str:
        return f"{self.name}-web-headers"  # unique per account, like the OAC name


def _headers_policy_args(csp: pulumi.Input[str]) -> dict[str, Any]:
    """`security_headers` as a response headers policy's inputs: CloudFront's own setting for each header it has
    one for, a custom header for the rest (`CUSTOM_HEADERS`); every one overrides whatever the origin sends.
    Only `csp` depends on the stack, so the rest is known in a preview (and visible to the policy pack)."""
    cf = aws.cloudfront
    return {
        "security_headers_config": cf.ResponseHeadersPolicySecurityHeadersConfigArgs(
            content_security_policy=cf.ResponseHeadersPolicySecurityHeadersConfigContentSecurityPolicyArgs(
                content_security_policy=csp, override=True
            ),
            strict_transport_security=cf.ResponseHeadersPolicySecurityHeadersConfigStrictTransportSecurityArgs(
                access_control_max_age_sec=HSTS_MAX_AGE_S,
                include_subdomains=HSTS_INCLUDE_SUBDOMAINS,
                override=True,
            ),
            content_type_options=cf.ResponseHeadersPolicySecurityHeadersConfigContentTypeOptionsArgs(override=True),
            frame_options=cf.ResponseHeadersPolicySecurityHeadersConfigFrameOptionsArgs(
                frame_option=FRAME_OPTIONS, override=True
            ),
            referrer_policy=cf.ResponseHeadersPolicySecurityHeadersConfigReferrerPolicyArgs(
                referrer_policy=REFERRER_POLICY, override=True
            ),
        ),
        "custom_headers_config": cf.ResponseHeadersPolicyCustomHeadersConfigArgs(
            items=[
                cf.ResponseHeadersPolicyCustomHeadersConfigItemArgs(header=name, value=value, override=True)
                for name, value in CUSTOM_HEADERS.items()
            ]
        ),
    }


def _viewer_certificate(args: WebAppArgs) -> aws.cloudfront.DistributionViewerCertificateArgs:
    """The stack's ACM certificate when it has its own domain, else CloudFront's ``*.cloudfront.net`` one."""
    if args.domain_name is None:
        # CloudFront then negotiates TLSv1 or later: the security policy is fixed for the default certificate.
        return aws.cloudfront.DistributionViewerCertificateArgs(cloudfront_default_certificate=True)
    return aws.cloudfront.DistributionViewerCertificateArgs(
        acm_certificate_arn=args.certificate_arn,
        ssl_support_method=SSL_SUPPORT_METHOD,
        minimum_protocol_version=MINIMUM_PROTOCOL_VERSION,
    )


class WebApp(pulumi.ComponentResource):
    """The chat page: private S3 bucket -> origin access control -> CloudFront (HTTPS, security headers).

    With a domain in the settings the distribution takes it as an alias, with the given us-east-1 ACM certificate.
    No Route 53 record and no ACM certificate is created here (DNS is often run elsewhere): point a CNAME or alias
    for the name at `distribution_domain`, and request the certificate before setting ``webApp.certificateArn``.
    """

    url: pulumi.Output[str]
    distribution_id: pulumi.Output[str]
    distribution_domain: pulumi.Output[str]
    bucket_name: pulumi.Output[str]

    def __init__(self, resource_name: str, args: WebAppArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ai-gateway:web:WebApp", resource_name, None, opts)
        files = web_files(args.web_dir)  # fail before declaring anything
        tags = dict(args.tags)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        partition = aws.get_partition_output(opts=invoke).partition
        account = aws.get_caller_identity_output(opts=invoke).account_id

        # --- The bucket: private, encrypted, owner-enforced (as Analytics' buckets) ---
        # SSE-S3: CloudFront's OAC reads it without KMS grants.
        private = private_bucket(
            resource_name,
            bucket_name=account.apply(args.bucket_name),
            partition=partition,
            force_destroy=True,  # nothing but redeployable copies of web/ lives here
            tags=tags,
            parent=self,
        )
        bucket, bucket_arn = private.bucket, private.arn

        # --- What the page may connect to, and the headers every response carries ---
        cognito_endpoint = args.cognito_endpoint or cognito_idp_endpoint(args.region)
        config = pulumi.Output.all(args.http_endpoint, args.realtime_endpoint, args.user_pool_id, args.client_id).apply(
            lambda values: web_client_config(
                region=args.region,
                http_endpoint=values[0],
                realtime_endpoint=values[1],
                cognito_endpoint=cognito_endpoint,
                user_pool_id=values[2],
                client_id=values[3],
                settings=args.settings,
            )
        )
        csp = config.apply(lambda c: content_security_policy(connect_sources(c)))
        headers_policy = aws.cloudfront.ResponseHeadersPolicy(
            f"{resource_name}-headers",
            name=args.headers_policy_name,
            comment="ai-gateway chat page: CSP, HSTS, nosniff, no framing, no referrer",
            **_headers_policy_args(csp),
            opts=child,
        )

        # --- CloudFront ---
        oac = aws.cloudfront.OriginAccessControl(
            f"{resource_name}-oac",
            name=args.origin_access_control_name,
            description="ai-gateway chat page: CloudFront signs every request to the private bucket",
            origin_access_control_origin_type="s3",
            signing_behavior="always",
            signing_protocol="sigv4",
            opts=child,
        )
        origin_id = "web-bucket"
        methods = ["GET", "HEAD"]
        distribution = aws.cloudfront.Distribution(
            f"{resource_name}-distribution",
            comment=f"{args.name} chat page",
            enabled=True,
            is_ipv6_enabled=True,
            http_version="http2and3",
            default_root_object=INDEX_KEY,
            price_class=args.price_class,
            origins=[
                aws.cloudfront.DistributionOriginArgs(
                    origin_id=origin_id,
                    domain_name=bucket.bucket_regional_domain_name,
                    origin_access_control_id=oac.id,
                )
            ],
            default_cache_behavior=aws.cloudfront.DistributionDefaultCacheBehaviorArgs(
                target_origin_id=origin_id,
                viewer_protocol_policy="redirect-to-https",
                allowed_methods=methods,
                cached_methods=methods,
                compress=True,
                cache_policy_id=CACHING_OPTIMIZED_POLICY_ID,
                response_headers_policy_id=headers_policy.id,
            ),
            ordered_cache_behaviors=[
                # config.json changes with every deployment's endpoints: never cached at the edge.
                aws.cloudfront.DistributionOrderedCacheBehaviorArgs(
                    path_pattern=CONFIG_KEY,
                    target_origin_id=origin_id,
                    viewer_protocol_policy="redirect-to-https",
                    allowed_methods=methods,
                    cached_methods=methods,
                    compress=True,
                    cache_policy_id=CACHING_DISABLED_POLICY_ID,
                    response_headers_policy_id=headers_policy.id,
                )
            ],
            restrictions=aws.cloudfront.DistributionRestrictionsArgs(
                geo_restriction=aws.cloudfront.DistributionRestrictionsGeoRestrictionArgs(restriction_type="none")
            ),
            aliases=[args.domain_name] if args.domain_name is not None else None,
            viewer_certificate=_viewer_certificate(args),
            tags=tags,
            opts=child,
        )

        # --- Only this distribution reads the bucket, only over TLS ---
        private.policy(
            {
                "Sid": "AllowCloudFrontRead",
                "Effect": "Allow",
                "Principal": {"Service": "cloudfront.amazonaws.com"},
                "Action": "s3:GetObject",
                "Resource": pulumi.Output.concat(bucket_arn, "/*"),
                "Condition": {"StringEquals": {"AWS:SourceArn": distribution.arn}},
            },
            parent=self,
        )

        # --- The files, and the stack's config.json ---
        for file in files:
            aws.s3.BucketObjectv2(
                f"{resource_name}-file-{file.key}",
                bucket=bucket.id,
                key=file.key,
                source=pulumi.FileAsset(str(file.path)),  # Pulumi hashes its contents: a changed file is re-uploaded
                content_type=file.content_type,
                cache_control=STATIC_CACHE_CONTROL,
                tags=tags,
                opts=child,
            )
        aws.s3.BucketObjectv2(
            f"{resource_name}-file-{CONFIG_KEY}",
            bucket=bucket.id,
            key=CONFIG_KEY,
            content=config.apply(lambda c: json.dumps(c, indent=2) + "\n"),
            content_type=CONFIG_CONTENT_TYPE,
            cache_control=CONFIG_CACHE_CONTROL,
            tags=tags,
            opts=child,
        )

        # The stack's own name when it has one (its DNS record is the domain owner's to create), else CloudFront's.
        self.url = pulumi.Output.concat("https://", args.domain_name or distribution.domain_name)
        self.distribution_id = distribution.id
        self.distribution_domain = distribution.domain_name
        self.bucket_name = bucket.bucket
        self.register_outputs({
            "url": self.url,
            "distribution_id": self.distribution_id,
            "distribution_domain": self.distribution_domain,
            "bucket_name": self.bucket_name,
        })  # fmt: skip
