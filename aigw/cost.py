"""`aigw plan --cost`: a monthly cost estimate for a stack and a usage profile, from what the stack creates.

`estimate(mocks_or_inventory, settings, profile, prices)` is pure arithmetic: quantities come from the stack's
inventory (what `aigw.plan.run_stack` recorded: Lambda memory sizes, log retention, PITR, guardrail, alarms,
dashboards, KMS keys, SNS topic, SQS dead-letter queue, analytics stream/buckets/workgroup, the chat page's
CloudFront distribution and files) and from the usage profile (`cost/profiles/<name>.yaml`); unit prices come from
`cost/prices.yaml`. No AWS; the only I/O is reading the sizes of the page's local files the stack uploads.

Lines are `fixed` (what the stack costs idle, with zero traffic) or `per_request` (driven by usage: requests,
users, stored data, analytics queries). Zero-quantity `per_request` lines are left out; fixed lines are always
listed. Every assumption is in the note of the line it affects.

A price entry's `unit` says what its `usd` buys: a leading count (`1M requests`, `1K tokens`, `10K requests`)
is the divisor, otherwise the price is per one unit (`GB-second`, `GB-month`, `MAU`). An entry may also carry
an explicit numeric `per`.

JSON schema (`aigw plan --cost --json`)::

    {"stack": str, "profile": str, "requests_per_month": float,
     "lines": [{"service", "item", "quantity", "unit", "unit_price_usd", "monthly_usd", "kind", "price_id",
                "note", "billed_quantity", "price_confirmed"}],
     "fixed_usd": float, "per_request_usd_month": float, "total_usd": float, "cost_per_request_usd": float}

`kind` is "fixed" (the idle stack), "per_request" or "storage" (the data requests leave, per GB-month);
`per_request_usd_month` is the usage-driven part: per_request and storage lines together. `quantity` is in the
natural unit (tokens, GB-seconds), `billed_quantity` in the price's (`unit`, e.g. "1M tokens").
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from aigw.mocks import RecordingMocks
from runtime import observability

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PRICES = ROOT / "cost" / "prices.yaml"
PROFILES_DIR = ROOT / "cost" / "profiles"

GB = 1024**3
TB = 1024**4
DAYS_PER_MONTH = 30
SECONDS_PER_MONTH = DAYS_PER_MONTH * 86_400
FIREHOSE_RECORD_ROUNDING = 5 * 1024  # Firehose bills ingestion in 5 KB increments per record
ATHENA_MIN_BYTES = 10 * 1024**2  # Athena bills at least 10 MB per query
CHARS_PER_TOKEN = 4
GUARDRAIL_TEXT_UNIT_CHARS = 1000
EVENTS_PER_PUBLISH = 5  # the worker's coalescer: at most 5 events per publish
CACHED_EVENTS = 3  # a prepared answer: start, one delta, end, in one publish

# EMF metrics (runtime/observability.py): dimension model_id, plus reason / code for Refusals / Errors.
MAIN_METRICS = ("InputTokens", "OutputTokens", "TimeToFirstTokenMs", "ResponseLatencyMs", "CacheHits")
REFUSAL_REASONS = observability.REFUSAL_REASONS  # the usage records' reasons, one Refusals series each
MODEL_ERROR_CODES = ("model_throttled", "model_error", "internal")
UNKNOWN_MODEL_ERROR_CODES = ("invalid_request", "forbidden", "model_not_allowed", "internal")

REQUIRED_PROFILE_FIELDS = (
    "users", "requests_per_user_per_day", "avg_input_tokens", "avg_output_tokens", "model_mix", "cache_hit_rate",
    "streamed_events_per_answer", "connection_minutes_per_user_per_day", "log_bytes_per_request",
    "analytics_queries_per_month", "analytics_bytes_scanned_per_query", "avg_worker_duration_ms",
    "avg_gatekeeper_duration_ms", "avg_subscribe_duration_ms",
)
# Optional profile fields and their defaults (each is an assumption when absent).
PROFILE_DEFAULTS: dict[str, float] = {
    "refused_share": 0.0,  # share of requests refused by the meter (no Bedrock, no worker)
    "connections_per_user_per_day": 1.0,  # one WebSocket connection + one subscription per active user-day
    "usage_record_bytes": 600.0,  # one JSON usage record per request
    "parquet_ratio": 0.2,  # Parquet (Snappy) bytes / JSON bytes
    "avg_cached_worker_duration_ms": 100.0,  # worker run that only publishes a prepared answer
    "avg_processor_duration_ms": 500.0,  # the Firehose usage-processor Lambda per buffer
    "dynamodb_bytes_per_user": 2048.0,  # metering items per user (window + month + reservations)
    "cache_entries": 0.0,  # prepared answers stored
    "cache_entry_bytes": 2048.0,
    "alarm_notifications_per_month": 0.0,  # SNS publishes when alarms change state
    "page_loads_per_connection": 1.0,  # chat page loads per WebSocket connection (the page opens one per load)
}
ASSUMED_OBJECT_BYTES = 16 * 1024
# The answer journal's item: the text (about 4 bytes per output token) plus each event's JSON envelope (type,
# requestId, conversationId, seq: about 120 bytes).
JOURNAL_BYTES_PER_OUTPUT_TOKEN = 4
JOURNAL_BYTES_PER_EVENT = 120  # a page file whose size the inventory does not carry

# fixed: the idle stack; per_request: driven by requests; storage: by the data requests leave behind (grows with
# usage, so counted with it, but billed per GB-month rather than per call).
Kind = Literal["fixed", "per_request", "storage"]


class CostError(ValueError):
    """A cost estimate that cannot be made: bad profile, prices or stack."""


class UnknownModelError(CostError):
    """A profile names a model that neither the stack allows nor the price list prices."""

    def __init__(self, model: str, stack_models: Iterable[str], priced: Iterable[str]) -> None:
        self.model = model
        super().__init__(
            f"unknown model {model!r} in the profile's model_mix: the stack allows {sorted(stack_models)}, "
            f"the price list prices {sorted(priced)}"
        )


class MissingPriceError(CostError, KeyError):
    """A price id the estimate needs is not in the price list."""

    def __init__(self, price_id: str) -> None:
        self.price_id = price_id
        super().__init__(f"missing price {price_id!r} in the price list")

    def __str__(self) -> str:
        return str(self.args[0])


class ProfileError(CostError):
    """A usage profile that is incomplete or inconsistent."""


# ------------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Price:
    id: str
    service: str
    item: str
    unit: str
    usd: float
    per: float = 1.0  # the quantity `usd` buys (1e6 for "per 1M requests")
    region: str = ""
    source: str = ""
    confirmed: Any = None
    note: str = ""
    free_quantity: float | None = None  # free-tier entries: how many units a month are free
    applies_to: str = ""


@dataclass(frozen=True)
class Line:
    service: str
    item: str
    quantity: float
    unit: str
    unit_price_usd: float
    monthly_usd: float
    kind: Kind
    price_id: str
    note: str = ""
    billed_quantity: float = 0.0  # `quantity` in the price's unit (1,944,000 tokens: 1.944 of "1M tokens")
    price_confirmed: bool = False  # the figure was seen in its cited source (cost/prices.yaml `confirmed`)


@dataclass
class CostReport:
    lines: list[Line]
    fixed_usd: float
    per_request_usd_month: float
    total_usd: float
    cost_per_request_usd: float
    requests_per_month: float = 0.0
    stack: str = ""
    profile: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "profile": self.profile,
            "requests_per_month": self.requests_per_month,
            "lines": [asdict(line) for line in self.lines],
            "fixed_usd": self.fixed_usd,
            "per_request_usd_month": self.per_request_usd_month,
            "total_usd": self.total_usd,
            "cost_per_request_usd": self.cost_per_request_usd,
        }


@dataclass(frozen=True)
class Profile:
    name: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key in self.values:
            return self.values[key]
        if key in PROFILE_DEFAULTS:
            return PROFILE_DEFAULTS[key]
        raise ProfileError(f"profile {self.name!r} has no {key!r}")

    @property
    def model_mix(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in (self.values.get("model_mix") or {}).items()}


_SCALE_WORDS = {"k": 1e3, "thousand": 1e3, "m": 1e6, "million": 1e6, "b": 1e9, "billion": 1e9}
_UNIT_COUNT = re.compile(r"^\s*(?:per\s+)?(\d[\d,]*(?:\.\d+)?)?\s*(k|m|b|thousand|million|billion)?\b", re.I)


def unit_scale(unit: str) -> float:
    """The divisor a unit implies: `1M requests` -> 1e6, `1K tokens` -> 1e3, `10K requests` -> 1e4, `GB` -> 1."""
    match = _UNIT_COUNT.match(unit or "")
    if not match or (match[1] is None and match[2] is None):
        return 1.0
    number = float(match[1].replace(",", "")) if match[1] else 1.0
    return number * _SCALE_WORDS.get((match[2] or "").lower(), 1.0)


def parse_prices(document: Any) -> dict[str, Price]:
    entries = document.get("prices", document) if isinstance(document, Mapping) else document
    if not isinstance(entries, list):
        raise CostError("a price list is a YAML list of entries (or a mapping with a `prices` list)")
    prices: dict[str, Price] = {}
    for number, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "id" not in entry or "usd" not in entry:
            raise CostError(f"price entry {number} needs at least `id` and `usd`: {entry!r}")
        unit = str(entry.get("unit", ""))
        per = float(entry["per"]) if entry.get("per") is not None else unit_scale(unit)
        prices[str(entry["id"])] = Price(
            id=str(entry["id"]), service=str(entry.get("service", "")), item=str(entry.get("item", "")), unit=unit,
            usd=float(entry["usd"]), per=per, region=str(entry.get("region", "")),
            source=str(entry.get("source", "")), confirmed=entry.get("confirmed"), note=str(entry.get("note") or ""),
            free_quantity=float(entry["free_quantity"]) if entry.get("free_quantity") is not None else None,
            applies_to=str(entry.get("applies_to") or ""),
        )
    return prices


def catalog_prices(region: str) -> dict[str, Price]:
    """The Bedrock model lines (`bedrock.<model id>.input|output`, per 1M tokens) for every way of calling each
    catalogued model from `region`: its bare id and each inference profile. The catalog is their one source."""
    from components.models import display_name, load_catalog, price_of

    prices: dict[str, Price] = {}
    catalog = load_catalog()
    for model in catalog.models:
        ids = ([model.id] if model.in_region else []) + [f"{geo}.{model.id}" for geo in model.profiles]
        for model_id in ids:
            price = price_of(model_id, region, catalog)
            if price is None:
                continue
            for kind, usd in (("input", price.input), ("output", price.output)):
                prices[f"bedrock.{model_id}.{kind}"] = Price(
                    id=f"bedrock.{model_id}.{kind}", service="bedrock", item=f"{display_name(model_id)} {kind} tokens",
                    unit="1M tokens", usd=usd, per=1e6, region=region, source=price.source,
                    confirmed=price.confirmed, note=f"from the model catalog, taken {catalog.taken}",
                )
    return prices


def load_prices(path: str | Path = DEFAULT_PRICES) -> dict[str, Price]:
    """`cost/prices.yaml`: entries `{id, service, item, unit, usd, region, taken, source, confirmed, note?}`."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as err:
        raise CostError(f"cannot read the price list {path}: {err}") from None
    return parse_prices(document)


def make_profile(values: Mapping[str, Any], name: str = "profile") -> Profile:
    missing = [k for k in REQUIRED_PROFILE_FIELDS if k not in values]
    if missing:
        raise ProfileError(f"profile {name!r} lacks {', '.join(missing)}")
    mix = values["model_mix"]
    if not isinstance(mix, Mapping) or not mix:
        raise ProfileError(f"profile {name!r}: model_mix must map model ids to shares")
    if any(float(v) < 0 for v in mix.values()) or not math.isclose(sum(float(v) for v in mix.values()), 1.0,
                                                                    abs_tol=1e-6):
        raise ProfileError(f"profile {name!r}: model_mix shares must be >= 0 and add up to 1, got {dict(mix)}")
    for key in ("cache_hit_rate", "refused_share"):
        if not 0 <= float(values.get(key, 0)) <= 1:
            raise ProfileError(f"profile {name!r}: {key} must be between 0 and 1")
    if float(values.get("cache_hit_rate", 0)) + float(values.get("refused_share", 0)) > 1:
        raise ProfileError(f"profile {name!r}: cache_hit_rate + refused_share exceed 1")
    return Profile(name=name, values=dict(values))


def load_profile(name_or_path: str | Path) -> Profile:
    """A profile by name (`idle`, `light`, `team` -> `cost/profiles/<name>.yaml`) or by file path."""
    text = str(name_or_path)
    candidate = Path(text)
    path = candidate if (candidate.suffix in (".yaml", ".yml") or candidate.exists()) else PROFILES_DIR / f"{text}.yaml"
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ProfileError(f"cannot read the profile {path}: {err}") from None
    if not isinstance(document, Mapping):
        raise ProfileError(f"profile {path} is not a mapping")
    return make_profile(document, name=path.stem)


# ------------------------------------------------------------------------------------------------ stack facts


@dataclass(frozen=True)
class _Resource:
    type: str
    name: str
    inputs: Mapping[str, Any]


def _resources(mocks_or_inventory: RecordingMocks | Iterable[Any]) -> list[_Resource]:
    """Recorded resources (full inputs) or `aigw.plan.inventory` items (key settings only)."""
    if isinstance(mocks_or_inventory, RecordingMocks):
        return [_Resource(r.type, r.name, r.inputs) for r in mocks_or_inventory.resources if r.type.startswith("aws:")]
    resources = []
    for item in mocks_or_inventory:
        inputs = getattr(item, "inputs", None) or getattr(item, "settings", {})
        resources.append(_Resource(item.type, item.name, inputs))
    return resources


@dataclass
class _Stack:
    functions: dict[str, float]  # role (worker, gatekeeper, subscribe, processor, other name) -> memory MB
    retention_days: list[float]
    pitr_tables: int
    tables: int
    guardrail: bool
    guardrail_pii: bool
    alarm_metrics: list[tuple[str, int, bool]]  # (alarm name, metrics billed, high resolution)
    insights_alarms: int  # Metrics Insights query alarms (billed per metric the query analyses)
    dashboards: int
    kms_keys: int
    sns_topics: int
    dlq: int
    firehose: bool
    buckets: int
    workgroup: bool
    firehose_buffer_s: float
    distributions: int = 0  # CloudFront distributions (the chat page)
    web_objects: int = 0  # S3 objects the stack uploads (the page's files and config.json)
    web_bytes: float = 0.0  # their total size
    web_sizes_assumed: int = 0  # objects whose size was not known (ASSUMED_OBJECT_BYTES each)


_ROLES = ("gatekeeper", "worker", "subscribe", "usage-processor")


def _role(name: str) -> str:
    for role in _ROLES:
        if name.endswith(role):
            return "processor" if role == "usage-processor" else role
    return name


def _object_bytes(inputs: Mapping[str, Any]) -> float | None:
    """Size of an S3 object the stack uploads: its inline `content`, or its `source` file; None if unknown."""
    content = inputs.get("content")
    if isinstance(content, str):
        return float(len(content.encode("utf-8")))
    source = inputs.get("source")
    if isinstance(source, Mapping) and isinstance(source.get("bytes"), int | float):  # a digest (plan --diff's base)
        return float(source["bytes"])
    path = getattr(source, "path", None)
    if isinstance(path, str) and Path(path).is_file():
        return float(Path(path).stat().st_size)
    return None


def _stack_facts(resources: list[_Resource]) -> _Stack:
    by_type: dict[str, list[_Resource]] = {}
    for r in resources:
        by_type.setdefault(r.type, []).append(r)

    def of(type_: str) -> list[_Resource]:
        return by_type.get(type_, [])

    functions = {}
    for fn in of("aws:lambda/function:Function"):
        memory = fn.inputs.get("memorySize")
        functions[_role(str(fn.inputs.get("name", fn.name)))] = float(memory if memory is not None else 128)
    tables = of("aws:dynamodb/table:Table")
    pitr = sum(1 for t in tables if (t.inputs.get("pointInTimeRecovery") or {}).get("enabled"))
    alarms, insights = [], 0
    for alarm in of("aws:cloudwatch/metricAlarm:MetricAlarm"):
        queries = alarm.inputs.get("metricQueries") or []
        if any(str(q.get("expression") or "").lstrip().upper().startswith("SELECT") for q in queries):
            insights += 1
            continue
        periods = [float(alarm.inputs.get("period") or 60)] + [
            float((q.get("metric") or {}).get("period") or q.get("period") or 60) for q in queries
        ]
        metrics = sum(1 for q in queries if q.get("metric")) or 1
        alarms.append((str(alarm.inputs.get("name", alarm.name)), metrics, min(periods) < 60))
    guardrails = of("aws:bedrock/guardrail:Guardrail")
    stream = of("aws:kinesis/firehoseDeliveryStream:FirehoseDeliveryStream")
    buffer_s = float(((stream[0].inputs.get("extendedS3Configuration") or {}).get("bufferingInterval") or 300)
                     if stream else 300)
    objects = of("aws:s3/bucketObjectv2:BucketObjectv2") + of("aws:s3/bucketObject:BucketObject")
    sizes = [_object_bytes(o.inputs) for o in objects]
    return _Stack(
        functions=functions,
        retention_days=[float(g.inputs.get("retentionInDays") or 0) for g in of("aws:cloudwatch/logGroup:LogGroup")],
        pitr_tables=pitr,
        tables=len(tables),
        guardrail=bool(guardrails),
        guardrail_pii=any(g.inputs.get("sensitiveInformationPolicyConfig") for g in guardrails),
        alarm_metrics=alarms,
        insights_alarms=insights,
        dashboards=len(of("aws:cloudwatch/dashboard:Dashboard")),
        kms_keys=len(of("aws:kms/key:Key")),
        sns_topics=len(of("aws:sns/topic:Topic")),
        dlq=len(of("aws:sqs/queue:Queue")),
        firehose=bool(stream),
        buckets=len(of("aws:s3/bucket:Bucket")) + len(of("aws:s3/bucketV2:BucketV2")),
        workgroup=bool(of("aws:athena/workgroup:Workgroup")),
        firehose_buffer_s=buffer_s,
        distributions=len(of("aws:cloudfront/distribution:Distribution")),
        web_objects=len(objects),
        web_bytes=sum(size if size is not None else ASSUMED_OBJECT_BYTES for size in sizes),
        web_sizes_assumed=sum(1 for size in sizes if size is None),
    )


# ------------------------------------------------------------------------------------------------ estimate


class _Lines:
    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = prices
        self.lines: list[Line] = []

    def add(self, service: str, item: str, quantity: float, price_id: str, kind: Kind, note: str = "") -> None:
        price = self.prices.get(price_id)
        if price is None:
            raise MissingPriceError(price_id)
        if kind != "fixed" and quantity <= 0:
            return
        monthly = quantity / price.per * price.usd
        self.lines.append(Line(service, item, quantity, price.unit, price.usd, monthly, kind, price_id, note,
                               billed_quantity=quantity / price.per, price_confirmed=price.confirmed is True))


def estimate(mocks_or_inventory: RecordingMocks | Iterable[Any], settings: Any, profile: Profile | Mapping[str, Any],
             prices: Mapping[str, Price]) -> CostReport:
    """The monthly cost of the stack (`run_stack`'s mocks or `inventory`) under `profile` at `prices`."""
    if not isinstance(profile, Profile):
        profile = make_profile(profile)
    stack = _stack_facts(_resources(mocks_or_inventory))
    p = profile
    prices = {**catalog_prices(settings.region), **prices}  # a price file's own model lines override the catalog's
    out = _Lines(prices)
    models = tuple(settings.model_ids)
    priced = {pid.removeprefix("bedrock.").removesuffix(".input") for pid in prices
              if pid.startswith("bedrock.") and pid.endswith(".input")}
    for model in p.model_mix:
        if model not in models and model not in priced:
            raise UnknownModelError(model, models, priced)

    users = float(p["users"])
    requests = users * float(p["requests_per_user_per_day"]) * DAYS_PER_MONTH
    cached = requests * float(p["cache_hit_rate"])
    refused = requests * float(p["refused_share"])
    admitted = requests - cached - refused  # reaches Bedrock
    active = requests > 0 or float(p["connection_minutes_per_user_per_day"]) > 0
    connections = users * float(p["connections_per_user_per_day"]) * DAYS_PER_MONTH if active else 0.0
    events = float(p["streamed_events_per_answer"])
    in_tokens, out_tokens = float(p["avg_input_tokens"]), float(p["avg_output_tokens"])

    # -- Bedrock
    for model, share in p.model_mix.items():
        n = admitted * share
        warn = "" if model in models else "; NOT allowed by this stack's tiers (the profile expects another stack)"
        out.add("Bedrock", f"{model} input tokens", n * in_tokens, f"bedrock.{model}.input", "per_request",
                f"{share:.0%} of {admitted:,.0f} answered (not cached, not refused) requests × {in_tokens:,.0f}{warn}")
        out.add("Bedrock", f"{model} output tokens", n * out_tokens, f"bedrock.{model}.output", "per_request",
                f"{share:.0%} of {admitted:,.0f} answered requests × {out_tokens:,.0f}{warn}")
    if stack.guardrail:
        units = (math.ceil(in_tokens * CHARS_PER_TOKEN / GUARDRAIL_TEXT_UNIT_CHARS)
                 + math.ceil(out_tokens * CHARS_PER_TOKEN / GUARDRAIL_TEXT_UNIT_CHARS))
        out.add("Bedrock", "guardrail text units", admitted * units, "bedrock.guardrail_text_units", "per_request",
                f"{units} units (1,000 chars, {CHARS_PER_TOKEN} chars/token) per answered request: input + output; "
                "content filters + prompt attack (denied topics priced the same)")
        if stack.guardrail_pii:
            out.add("Bedrock", "guardrail PII text units", admitted * units, "bedrock.guardrail_pii_text_units",
                    "per_request", f"{units} units per answered request: the sensitive-information policy")

    # -- AppSync Events
    worker_publishes = math.ceil(events / EVENTS_PER_PUBLISH) if events > 0 else 0
    operations = (2 * connections + requests + admitted * (worker_publishes + events) + cached * (1 + CACHED_EVENTS)
                  + refused * 2)
    out.add("AppSync Events", "operations", operations, "appsync_events.operations", "per_request",
            f"per connection: connect + subscribe; per request: 1 client publish; per answer: "
            f"{worker_publishes} worker publishes (≤{EVENTS_PER_PUBLISH} events each) + {events:g} deliveries; "
            f"cached: 1 publish + {CACHED_EVENTS} deliveries; refused: 1 error publish + 1 delivery; "
            f"{connections:,.0f} connections (1/user/day assumed)")
    out.add("AppSync Events", "connection minutes",
            users * float(p["connection_minutes_per_user_per_day"]) * DAYS_PER_MONTH,
            "appsync_events.connection_minutes", "per_request", "users × minutes/day × 30")

    # -- Lambda
    runs: dict[str, list[tuple[float, float, str]]] = {
        "gatekeeper": [(requests, float(p["avg_gatekeeper_duration_ms"]), "every request")],
        "worker": [(admitted, float(p["avg_worker_duration_ms"]), "answered requests"),
                   (cached, float(p["avg_cached_worker_duration_ms"]), "prepared answers")],
        "subscribe": [(connections, float(p["avg_subscribe_duration_ms"]), "one subscription per connection")],
    }
    if "processor" in stack.functions and requests > 0:
        buffers = min(requests, SECONDS_PER_MONTH / 60)
        runs["processor"] = [(buffers, float(p["avg_processor_duration_ms"]),
                              "one run per Firehose processing buffer (≤ 1 a minute)")]
    total_invocations = 0.0
    for role, memory in sorted(stack.functions.items()):
        invocations = sum(n for n, _, _ in runs.get(role, []))
        gb_seconds = sum(n * ms / 1000 for n, ms, _ in runs.get(role, [])) * memory / 1024
        total_invocations += invocations
        why = "; ".join(f"{n:,.0f} × {ms:g} ms ({what})" for n, ms, what in runs.get(role, []) if n)
        out.add("Lambda", f"{role} requests", invocations, "lambda.requests", "per_request", why)
        out.add("Lambda", f"{role} GB-seconds", gb_seconds, "lambda.gb_second_arm64", "per_request",
                f"{memory:g} MB arm64; {why}")

    # -- DynamoDB
    wru = admitted * 3 + cached * 1 + refused * 1
    rru = admitted * 1 + cached * 1 + refused * 1
    out.add("DynamoDB", "write request units", wru, "dynamodb.write_request_units", "per_request",
            "on demand; admitted: cache lookup UpdateItem + PutItem + settle UpdateItem = 3 WRU; cached: 1 "
            "(hit-count UpdateItem); refused: 1 (cache lookup); items ≤ 1 KB, no transactions")
    # The answer journal (resume, cancel): one UpdateItem a second while streaming plus the final one, each billed
    # on the whole item; counted at the final size, an upper bound. A prepared answer is journaled once.
    journal_writes = math.floor(float(p["avg_worker_duration_ms"]) / 1000) + 1
    journal_kb = math.ceil((float(p["avg_output_tokens"]) * JOURNAL_BYTES_PER_OUTPUT_TOKEN
                            + float(p["streamed_events_per_answer"]) * JOURNAL_BYTES_PER_EVENT) / 1024)
    out.add("DynamoDB", "answer-journal write units", admitted * journal_writes * journal_kb + cached * journal_kb,
            "dynamodb.write_request_units", "per_request",
            f"{journal_writes} writes per answer (1 a second over {p['avg_worker_duration_ms']:g} ms, plus the "
            f"final one) × {journal_kb} WRU (the item at its final {journal_kb} KB); prepared answers: 1 write")
    out.add("DynamoDB", "read request units", rru, "dynamodb.read_request_units", "per_request",
            "1 strongly consistent GetItem (≤ 4 KB) per admitted, cached or refused request")
    stored_gb = (users * float(p["dynamodb_bytes_per_user"])
                 + float(p["cache_entries"]) * float(p["cache_entry_bytes"])) / GB
    out.add("DynamoDB", "storage", stored_gb, "dynamodb.storage_gb_month", "storage",
            f"{p['dynamodb_bytes_per_user']:g} B of metering items per user + prepared answers; 25 GB free tier "
            "not applied")
    if stack.pitr_tables:
        out.add("DynamoDB", "point-in-time recovery", stored_gb, "dynamodb.pitr_gb_month", "storage",
                f"PITR on {stack.pitr_tables} of {stack.tables} tables; billed on table size")

    # -- CloudWatch
    log_gb = requests * float(p["log_bytes_per_request"]) / GB
    retention = max(stack.retention_days, default=0.0)
    out.add("CloudWatch", "log ingestion", log_gb, "cloudwatch.logs_ingest_gb", "per_request",
            f"{p['log_bytes_per_request']:g} B per request (JSON logs, EMF metrics, usage record)")
    stored_months = (retention / DAYS_PER_MONTH) if retention else 12.0
    out.add("CloudWatch", "log storage", log_gb * stored_months, "cloudwatch.logs_storage_gb_month", "storage",
            f"steady state: a month's logs × {retention:g} days retention / 30 "
            f"({'never expire: 12 months assumed' if not retention else 'uncompressed: an upper bound'})")
    if requests > 0:
        ceiling = settings.stack_monthly_usd is not None
        combos = (len(models) * (len(MAIN_METRICS) + len(REFUSAL_REASONS) + len(MODEL_ERROR_CODES))
                  + len(UNKNOWN_MODEL_ERROR_CODES) + 1 + ceiling)
        out.add("CloudWatch", "custom metrics", combos, "cloudwatch.custom_metric_month", "per_request",
                f"EMF metric × dimension combinations estimated from the stack's {len(models)} model ids: "
                f"{len(MAIN_METRICS)} metrics + {len(REFUSAL_REASONS)} Refusals reasons + "
                f"{len(MODEL_ERROR_CODES)} Errors codes per model, + {len(UNKNOWN_MODEL_ERROR_CODES)} Errors codes "
                "for model 'unknown', + SpendUsd for users in no team (one more per team)"
                + (", + the ceiling's StackBudgetUsedPercent" if ceiling else "")
                + "; an upper bound (only metrics emitted in an hour are billed)")
    out.add("CloudWatch", "dashboards", stack.dashboards, "cloudwatch.dashboard_month", "fixed",
            "account-wide free tiers (here 3 dashboards) not applied: they are shared by the account")
    standard = [(n, m) for n, m, high in stack.alarm_metrics if not high]
    high = [(n, m) for n, m, hi in stack.alarm_metrics if hi]
    out.add("CloudWatch", "alarms (standard)", sum(m for _, m in standard), "cloudwatch.alarm_standard_month", "fixed",
            f"{len(standard)} alarms; metric-math alarms billed per metric they read; free tier not applied")
    if stack.insights_alarms:
        out.add("CloudWatch", "alarms (Metrics Insights)", stack.insights_alarms * len(models),
                "cloudwatch.metrics_insights_alarm_month", "fixed",
                f"{stack.insights_alarms} query alarms; each analyses one metric per model id ({len(models)})")
    if high:
        out.add("CloudWatch", "alarms (high resolution)", sum(m for _, m in high),
                "cloudwatch.alarm_high_resolution_month", "fixed", f"{len(high)} alarms with a period < 60 s")

    # -- analytics: Firehose, S3, Athena
    record_bytes = float(p["usage_record_bytes"])
    if stack.firehose:
        billed = math.ceil(record_bytes / FIREHOSE_RECORD_ROUNDING) * FIREHOSE_RECORD_ROUNDING
        firehose_gb = requests * billed / GB
        note = (f"1 usage record ({record_bytes:g} B) per request, billed in 5 KB increments: an upper bound "
                "(the log subscription batches records)")
        out.add("Firehose", "ingestion", firehose_gb, "firehose.ingest_gb", "per_request", note)
        out.add("Firehose", "format conversion (Parquet)", firehose_gb, "firehose.format_conversion_gb",
                "per_request", note)
    if stack.buckets:
        if stack.firehose:
            expiry = float(settings.analytics.data_expiry_days)
            monthly_gb = requests * record_bytes * float(p["parquet_ratio"]) / GB
            out.add("S3", "storage", monthly_gb * expiry / DAYS_PER_MONTH, "s3.storage_gb_month", "storage",
                    f"Parquet ≈ {p['parquet_ratio']:g} × JSON; steady state over {expiry:g} days expiry "
                    "(Standard class throughout)")
        objects = (min(requests, SECONDS_PER_MONTH / stack.firehose_buffer_s) if stack.firehose else 0.0)
        queries = float(p["analytics_queries_per_month"]) if stack.workgroup else 0.0
        out.add("S3", "PUT requests", objects + queries, "s3.put_per_1k", "per_request",
                f"Firehose objects (≤ 1 per {stack.firehose_buffer_s:g} s buffer) + 1 result per Athena query")
    if stack.workgroup:
        queries = float(p["analytics_queries_per_month"])
        scanned = max(float(p["analytics_bytes_scanned_per_query"]), ATHENA_MIN_BYTES)
        out.add("Athena", "data scanned", queries * scanned / TB, "athena.tb_scanned", "per_request",
                f"{queries:g} queries × {scanned:,.0f} B (10 MB minimum per query)")

    # -- the chat page: CloudFront in front of a private S3 bucket
    if stack.distributions:
        per_connection = float(p["page_loads_per_connection"])
        page_loads = connections * per_connection
        assumed = (f" ({stack.web_sizes_assumed} file sizes unknown: {ASSUMED_OBJECT_BYTES:,} B each assumed)"
                   if stack.web_sizes_assumed else "")
        loads = (f"{page_loads:,.0f} page loads: {per_connection:g} per WebSocket connection (the profiles have no "
                 "page-view field; every connection is assumed to come from the page, an upper bound)")
        file_requests = page_loads * stack.web_objects
        out.add("CloudFront", "HTTPS requests", file_requests, "cloudfront.https_requests",
                "per_request", f"{loads} × {stack.web_objects} files each (config.json included): the files are "
                "served Cache-Control: no-cache, so a browser revalidates every one on every load (a 304 is still a "
                "request); the always-free 10M requests a month not applied")
        out.add("CloudFront", "data transfer out", page_loads * stack.web_bytes / GB, "cloudfront.data_out_gb",
                "per_request", f"{loads} × {stack.web_bytes:,.0f} B{assumed}, full and uncompressed (a 304 "
                "revalidation sends no body, CloudFront compresses): an upper bound; the always-free 1 TB a month "
                "not applied")
        out.add("S3", "web page GET requests", file_requests, "s3.get_per_1k", "per_request",
                "cache hit ratio at the edge assumed 0: every CloudFront request is a (conditional) GET on the "
                "bucket. Nearly so: config.json is never cached (CachingDisabled) and the other files, no-cache, "
                "only for CachingOptimized's 1 s minimum TTL; an upper bound")
        out.add("S3", "web page storage", stack.web_bytes / GB, "s3.storage_gb_month", "fixed",
                f"{stack.web_objects} objects, {stack.web_bytes:,.0f} B{assumed}")

    # -- Cognito
    free = prices.get("cognito.free_mau")
    if free is None:
        raise MissingPriceError("cognito.free_mau")
    free_mau = float(free.free_quantity if free.free_quantity is not None else free.usd)
    out.add("Cognito", "monthly active users", max(0.0, users - free_mau), "cognito.mau_essentials", "per_request",
            f"{users:g} users, first {free_mau:,.0f} MAU free (cognito.free_mau)")

    # -- KMS, SNS, SQS
    out.add("KMS", "customer-managed keys", stack.kms_keys, "kms.key_month", "fixed", "the alarm topic's key")
    notifications = float(p["alarm_notifications_per_month"]) if stack.sns_topics else 0.0
    if stack.sns_topics:
        out.add("SNS", "alarm notifications", notifications, "sns.requests", "fixed",
                f"{stack.sns_topics} topic; alarm_notifications_per_month from the profile (default 0)")
        if stack.kms_keys:
            out.add("KMS", "requests", notifications * 2, "kms.requests", "fixed",
                    "GenerateDataKey + Decrypt per encrypted SNS publish")
    if stack.dlq:
        out.add("SQS", "dead-letter queue requests", 0.0, "sqs.requests", "fixed",
                "only failed asynchronous worker invokes land there; nothing polls it")

    lines = out.lines
    fixed = sum((line.monthly_usd for line in lines if line.kind == "fixed"), 0.0)
    variable = sum((line.monthly_usd for line in lines if line.kind != "fixed"), 0.0)  # requests and their data
    return CostReport(
        lines=lines,
        fixed_usd=fixed,
        per_request_usd_month=variable,
        total_usd=fixed + variable,
        cost_per_request_usd=variable / requests if requests else 0.0,
        requests_per_month=requests,
        profile=p.name,
    )
