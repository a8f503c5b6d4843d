"""What the admin commands do, as plain functions over an explicit `Target`: testable without the CLI.

A `Target` says where to act:
- `Target.from_dev_json(path)` — the local gateway (`aigw dev`): endpoints from `.aigw/dev.json`, tiers from
  `Pulumi.dev.yaml`;
- `Target.from_stack(stack)` — a deployed stack: `pulumi stack output --json --stack <stack>` (needs the
  `pulumi` CLI), tiers from `Pulumi.<stack>.yaml`;
- `Target.from_flags(...)` — a deployed stack named piece by piece (`--region`, `--user-pool-id`, ...).

Users are named by email or `sub`; the meter keys by `sub` (what the gateway sees in tokens), so every
command resolves the user through Cognito first. A user's tier is the strongest of their tier groups, else the
default tier, exactly as `RuntimeConfig.tier_for` decides it for a request.

Errors a person can fix by asking differently raise `AdminError` (the CLI exits 2 with its message).
A command of several AWS calls that fails partway undoes what it did and raises `StepFailedError` (exit 1).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from aigw import local_cognito
from aigw.client import Endpoints, EventsClient, token_sub
from aigw.stream_assembler import StreamAssembler
from components.settings import SettingsError, StackSettings
from runtime.budgets import team_of
from runtime.cache import AnswerCache, CacheEntry, ImportReport
from runtime.config import TierSettings
from runtime.errors import InvalidInputError
from runtime.metering import Limits, Meter, Usage
from runtime.metering.core import overridden

DEFAULT_DEV_JSON = Path(".aigw/dev.json")
DAY_S = 86_400
_SUB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
# Local credentials: moto accepts any; named here so a machine without AWS credentials can still act locally.
_LOCAL_CREDENTIALS = {"aws_access_key_id": "AKIDAIGWLOCAL", "aws_secret_access_key": "local"}


class AdminError(Exception):
    """Something the caller asked for that cannot be done as asked; the message says what to do instead."""


class StepFailedError(Exception):
    """An AWS call failed partway through a command of several calls: the message names the step, what was undone
    so nothing is left half-made, or what is left and how to clear it. AWS trouble, not a bad request: exit 1."""


def aws_words(err: ClientError | BotoCoreError) -> str:
    """An AWS error in the service's own words (its code and message), as the CLI prints it."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', err)}"
    return str(err)


# -- where to act


@dataclass(frozen=True)
class Target:
    """One gateway (local or deployed): its endpoints, tables and tiers."""

    region: str
    user_pool_id: str | None = None
    client_id: str | None = None
    metering_table: str | None = None
    cache_table: str | None = None
    http: str | None = None
    realtime: str | None = None
    aws_endpoint: str | None = None  # moto's URL locally (Cognito and DynamoDB); None on AWS
    demo_user: tuple[str, str] | None = None
    tiers: tuple[TierSettings, ...] = ()
    default_tier: str | None = None
    cache_namespace: str = "default"
    cache_ttl_days: int = 30
    # The stack ceiling's starting value from the stack file; None: the gateway does not check a stack ceiling.
    stack_monthly_usd: float | None = None
    description: str = ""

    @property
    def local(self) -> bool:
        return self.aws_endpoint is not None

    # -- constructors

    @classmethod
    def from_dev_json(cls, path: str | Path = DEFAULT_DEV_JSON, stack_file: str | Path | None = None) -> Target:
        """The local gateway `aigw dev` recorded in `path`; tiers from `stack_file` (found next to it by default)."""
        path = Path(path)
        try:
            info = json.loads(path.read_text())
            cognito, tables = info["cognito"], info["tables"]
            demo = info.get("demo_user")
            target = cls(
                region=info["region"],
                user_pool_id=cognito["user_pool_id"],
                client_id=cognito["client_id"],
                metering_table=tables["metering"],
                cache_table=tables["cache"],
                http=info["http"],
                realtime=info["realtime"],
                aws_endpoint=cognito["endpoint"],
                demo_user=(demo["username"], demo["password"]) if demo else None,
                description=f"local gateway ({path})",
            )
        except FileNotFoundError:
            raise AdminError(
                f"{path} not found: start the local gateway with `aigw dev` (or pass --dev-json, or --stack)"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise AdminError(f"{path} is not a dev.json written by `aigw dev`: {err!r}") from None
        found = stack_file or _first_existing([path.resolve().parent.parent / "Pulumi.dev.yaml", "Pulumi.dev.yaml"])
        return target.with_settings(found) if found else target

    @classmethod
    def from_stack(
        cls,
        stack: str,
        stack_file: str | Path | None = None,
        *,
        which: Callable[[str], str | None] = shutil.which,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> Target:
        """A deployed stack, from its Pulumi outputs; tiers from `stack_file` (`Pulumi.<stack>.yaml` by default)."""
        pulumi = which("pulumi")
        if pulumi is None:
            raise AdminError(
                f"cannot read the outputs of stack {stack!r}: the `pulumi` CLI is not on PATH. Pass the stack's "
                "pieces instead: --region, --user-pool-id, --metering-table, --cache-table (and --stack-file for "
                "the tiers)"
            )
        try:
            done = run(
                [pulumi, "stack", "output", "--json", "--stack", stack],
                capture_output=True, text=True, timeout=120, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise AdminError(f"`pulumi stack output --stack {stack}` failed: {err}") from None
        if done.returncode != 0:
            detail = (done.stderr or done.stdout or "").strip().splitlines()
            raise AdminError(
                f"`pulumi stack output --stack {stack}` failed: {detail[-1] if detail else done.returncode}"
            )
        try:
            outputs = json.loads(done.stdout)
            if not isinstance(outputs, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            raise AdminError(f"`pulumi stack output --stack {stack}` did not print JSON outputs: {err}") from None
        if not outputs.get("region"):
            raise AdminError(f"stack {stack!r} has no `region` output: has it been deployed (`pulumi up`)?")
        target = cls(
            region=outputs["region"],
            user_pool_id=outputs.get("user_pool_id"),
            client_id=outputs.get("web_client_id"),
            metering_table=outputs.get("metering_table"),
            cache_table=outputs.get("cache_table"),
            http=outputs.get("http_endpoint"),
            realtime=outputs.get("realtime_endpoint"),
            description=f"stack {stack}",
        )
        found = stack_file or _first_existing([f"Pulumi.{stack}.yaml"])
        return target.with_settings(found) if found else target

    @classmethod
    def from_flags(
        cls,
        *,
        region: str,
        user_pool_id: str | None = None,
        client_id: str | None = None,
        metering_table: str | None = None,
        cache_table: str | None = None,
        stack_file: str | Path | None = None,
    ) -> Target:
        """A deployed gateway named piece by piece; tiers from `stack_file` when given."""
        target = cls(
            region=region, user_pool_id=user_pool_id, client_id=client_id, metering_table=metering_table,
            cache_table=cache_table, description=f"AWS {region}",
        )
        return target.with_settings(stack_file) if stack_file else target

    def with_settings(self, stack_file: str | Path) -> Target:
        """The tiers and cache settings of a stack file."""
        try:
            settings = StackSettings.from_stack_file(stack_file)
        except FileNotFoundError:
            raise AdminError(f"stack file {stack_file} not found") from None
        except (SettingsError, OSError, ValueError) as err:
            raise AdminError(f"{stack_file}: {err}") from None
        return replace(
            self,
            tiers=settings.tiers,
            default_tier=settings.default_tier,
            cache_namespace=settings.cache_namespace,
            cache_ttl_days=settings.cache_ttl_days,
            stack_monthly_usd=settings.stack_monthly_usd,
        )

    def with_flags(self, **flags: str | None) -> Target:
        """This target with the explicitly given fields replaced (None leaves a field as it is)."""
        return replace(self, **{k: v for k, v in flags.items() if v is not None})

    # -- requirements

    def require(self, *names: str) -> None:
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            flags = ", ".join("--" + n.replace("_", "-") for n in missing)
            raise AdminError(f"{self.description or 'this target'} does not say which {', '.join(missing)}: "
                             f"pass {flags}")

    def tier(self, name: str) -> TierSettings:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        if not self.tiers:
            raise AdminError("the tiers come from the stack file: pass --stack-file Pulumi.<stack>.yaml")
        raise AdminError(f"unknown tier {name!r}: the tiers are {', '.join(t.name for t in self.tiers)}")

    def tier_for(self, groups: Sequence[str]) -> TierSettings:
        """As the gateway decides: the strongest (lowest precedence) tier group, else the default tier."""
        member = [t for t in self.tiers if t.name in groups]
        if member:
            return min(member, key=lambda t: t.precedence)
        if self.default_tier is None:
            raise AdminError("the tiers come from the stack file: pass --stack-file Pulumi.<stack>.yaml")
        return self.tier(self.default_tier)

    # -- clients

    def _client(self, service: str) -> Any:
        config = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=5, read_timeout=30)
        extra: dict[str, Any] = {}
        if self.aws_endpoint is not None:
            extra = {"endpoint_url": self.aws_endpoint, **_LOCAL_CREDENTIALS}
        return boto3.client(service, region_name=self.region, config=config, **extra)

    def cognito(self) -> Any:
        return self._client("cognito-idp")

    def dynamodb(self) -> Any:
        return self._client("dynamodb")

    def pool(self, cognito: Any | None = None) -> local_cognito.LocalPool:
        """The user pool, with its tier names strongest first (from the stack file, else the pool's groups)."""
        self.require("user_pool_id")
        assert self.user_pool_id is not None
        if self.tiers:
            tiers = tuple(t.name for t in sorted(self.tiers, key=lambda t: t.precedence))
        else:
            client = cognito or self.cognito()
            groups = client.list_groups(UserPoolId=self.user_pool_id)["Groups"]
            tiers = tuple(g["GroupName"] for g in sorted(groups, key=lambda g: g.get("Precedence", 1 << 30)))
        return local_cognito.LocalPool(
            user_pool_id=self.user_pool_id,
            client_id=self.client_id or "",
            region=self.region,
            endpoint=self.aws_endpoint or "",
            issuer=local_cognito.issuer_for(self.region, self.user_pool_id),
            jwks_url="",
            tiers=tiers,
        )

    def meter(self) -> Meter:
        self.require("metering_table")
        assert self.metering_table is not None
        return Meter(self.metering_table, self.dynamodb())

    def cache(self) -> AnswerCache:
        self.require("cache_table")
        assert self.cache_table is not None
        return AnswerCache(
            self.cache_table, self.dynamodb(), namespace=self.cache_namespace,
            default_ttl_s=self.cache_ttl_days * DAY_S,
        )

    def endpoints(self) -> Endpoints:
        self.require("http", "realtime", "user_pool_id", "client_id")
        assert self.http and self.realtime and self.user_pool_id and self.client_id
        return Endpoints(self.http, self.realtime, self.region, self.aws_endpoint, self.user_pool_id, self.client_id)


def _first_existing(paths: Iterable[str | Path]) -> Path | None:
    return next((Path(p) for p in paths if Path(p).is_file()), None)


# -- users


@dataclass(frozen=True)
class User:
    username: str  # Cognito's Username (what the admin APIs take)
    email: str
    sub: str
    groups: tuple[str, ...]


def resolve_user(cognito: Any, target: Target, user: str) -> User:
    """The user named by email or `sub`, with their groups; `AdminError` when there is none."""
    target.require("user_pool_id")
    user = user.strip()
    if "@" in user:
        try:
            found = cognito.admin_get_user(UserPoolId=target.user_pool_id, Username=user)
        except cognito.exceptions.UserNotFoundException:
            raise AdminError(f"unknown user {user!r}: no such email in the user pool") from None
        username, attributes = found["Username"], found.get("UserAttributes", [])
    else:
        if not _SUB.match(user):
            raise AdminError(f"{user!r} is neither an email address nor a user id (sub)")
        users = cognito.list_users(UserPoolId=target.user_pool_id, Filter=f'sub = "{user}"', Limit=2)["Users"]
        if not users:
            raise AdminError(f"unknown user {user!r}: no user in the pool has this sub")
        username, attributes = users[0]["Username"], users[0].get("Attributes", [])
    values = {a["Name"]: a["Value"] for a in attributes}
    groups = cognito.admin_list_groups_for_user(UserPoolId=target.user_pool_id, Username=username)["Groups"]
    return User(
        username=username,
        email=values.get("email", username),
        sub=values.get("sub", username),
        groups=tuple(g["GroupName"] for g in groups),
    )


def add_user(
    cognito: Any, target: Target, email: str, *, tier: str | None = None, password: str | None = None
) -> tuple[str, str, str]:
    """Create a confirmed user in `tier` (default tier when None); returns (email, sub, password)."""
    if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", email):
        raise AdminError(f"{email!r} is not an email address (the pool signs in by email)")
    pool = target.pool(cognito)
    tier = tier or target.default_tier
    if tier is not None and tier not in pool.tiers:
        raise AdminError(f"unknown tier {tier!r}: the tiers are {', '.join(pool.tiers)}")
    password = password or local_cognito.generate_password()
    try:
        sub = local_cognito.add_user(cognito, pool, email, password, tier=tier)
    except cognito.exceptions.UsernameExistsException:
        raise AdminError(f"user {email!r} already exists (change its tier with `aigw users set-tier`)") from None
    except cognito.exceptions.InvalidPasswordException as err:
        # The user was created before the password was refused: do not leave a half-made user behind.
        cognito.admin_delete_user(UserPoolId=pool.user_pool_id, Username=email)
        raise AdminError(f"password refused: {err.response['Error'].get('Message', 'see the pool policy')}") from None
    return email, sub, password


def list_users(cognito: Any, target: Target) -> list[dict[str, Any]]:
    """Every user as `{username, sub, tiers, tier, team}`; `tier` is the one the gateway applies."""
    pool = target.pool(cognito)
    users = local_cognito.list_users(cognito, pool)
    for user in users:
        user["tier"] = user["tiers"][0] if user["tiers"] else (target.default_tier or "")
    return users


def set_tier(cognito: Any, target: Target, user: str, tier: str) -> User:
    pool = target.pool(cognito)
    if tier not in pool.tiers:
        raise AdminError(f"unknown tier {tier!r}: the tiers are {', '.join(pool.tiers)}")
    found = resolve_user(cognito, target, user)
    local_cognito.set_tier(cognito, pool, found.username, tier)
    return resolve_user(cognito, target, found.sub)


# -- limits and usage


@dataclass(frozen=True)
class LimitsView:
    user: User
    tier: TierSettings
    override: Limits | None

    @property
    def effective(self) -> Limits:
        return overridden(self.override, self.tier.limits)


@dataclass(frozen=True)
class UsageView:
    user: User
    tier: TierSettings
    overridden: bool
    usage: Usage
    team: str | None = None


def show_limits(cognito: Any, meter: Meter, target: Target, user: str) -> LimitsView:
    found = resolve_user(cognito, target, user)
    return LimitsView(found, target.tier_for(found.groups), meter.get_override(found.sub))


def set_limits(
    cognito: Any,
    meter: Meter,
    target: Target,
    user: str,
    *,
    window_tokens: int,
    monthly_tokens: int,
    window_seconds: int | None = None,
    min_output_tokens: int | None = None,
    monthly_usd: float | None = None,
) -> LimitsView:
    """Store a per-user override; window length and minimum output default to the user's tier's, and without a
    USD month of its own the tier's applies (the gatekeeper fills it in)."""
    found = resolve_user(cognito, target, user)
    tier = target.tier_for(found.groups)
    try:
        limits = Limits(
            window_tokens,
            monthly_tokens,
            tier.window_seconds if window_seconds is None else window_seconds,
            tier.min_output_tokens if min_output_tokens is None else min_output_tokens,
            monthly_usd,
        )
    except InvalidInputError as err:
        raise AdminError(str(err)) from None
    if limits.min_output_tokens > limits.window_tokens:
        raise AdminError(
            f"min output tokens ({limits.min_output_tokens}) above the window ({limits.window_tokens}) "
            "would refuse every request"
        )
    meter.set_override(found.sub, limits)
    return LimitsView(found, tier, limits)


def clear_limits(cognito: Any, meter: Meter, target: Target, user: str) -> LimitsView:
    found = resolve_user(cognito, target, user)
    meter.clear_override(found.sub)
    return LimitsView(found, target.tier_for(found.groups), None)


def usage(cognito: Any, meter: Meter, target: Target, user: str) -> UsageView:
    found = resolve_user(cognito, target, user)
    tier = target.tier_for(found.groups)
    overridden = meter.get_override(found.sub) is not None
    return UsageView(found, tier, overridden, meter.usage(found.sub, tier.limits), team_of(list(found.groups)))


def usage_report(view: UsageView) -> dict[str, Any]:
    """A user's own meter as JSON: tokens used, remaining and the limit, in the window and this month. (The meter
    counts tokens only; what a user's requests cost in USD is counted at their own USD month, when they have one,
    and at their team's and the stack's level.)"""
    u, limits = view.usage, view.usage.limits
    return {
        "email": view.user.email,
        "sub": view.user.sub,
        "tier": view.tier.name,
        "limits_from": "override" if view.overridden else "tier",
        "team_name": view.team,
        "window": {"seconds": limits.window_seconds, "used": u.window_used, "remaining": u.window_remaining,
                   "limit": limits.window_tokens},
        "month": {"used": u.month_used, "remaining": u.month_remaining, "limit": limits.monthly_tokens},
        "reserved": u.reserved,
    }


# -- answer cache


def _ttl_s(ttl_days: int | None) -> int | None:
    if ttl_days is None:
        return None
    if ttl_days <= 0:
        raise AdminError(f"--ttl-days must be a positive number of days, got {ttl_days}")
    return ttl_days * DAY_S


def cache_put(cache: AnswerCache, question: str, answer: str, model: str, ttl_days: int | None = None) -> CacheEntry:
    try:
        return cache.put(question, model, answer, _ttl_s(ttl_days))
    except InvalidInputError as err:
        raise AdminError(str(err)) from None


def cache_get(cache: AnswerCache, question: str, model: str) -> CacheEntry | None:
    try:
        return cache.get(question, model)
    except InvalidInputError as err:
        raise AdminError(str(err)) from None


def cache_delete(cache: AnswerCache, question: str, model: str) -> bool:
    try:
        return cache.delete(question, model)
    except InvalidInputError as err:
        raise AdminError(str(err)) from None


def cache_import(cache: AnswerCache, path: str | Path) -> ImportReport:
    try:
        with open(path, encoding="utf-8") as lines:
            return cache.import_jsonl(line.rstrip("\r\n") for line in lines)
    except FileNotFoundError:
        raise AdminError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise AdminError(f"{path} is not UTF-8 text: {err}") from None
    except IsADirectoryError:
        raise AdminError(f"{path} is a directory, not a JSONL file") from None


# -- chat


@dataclass
class ChatSession:
    """One conversation over one connection: the responses channel is subscribed once, each turn publishes the
    whole history and yields its events (`start`, `delta`..., `end` | `error`) in seq order, once each.

    A dropped socket is reconnected and the answer resumed from the last event had (`action: resume`); a hole in
    the seqs that the live stream does not fill within `gap_wait_s` is resumed too. `cancel` stops the answer
    being streamed (`action: cancel`): it then ends with `end` `stopReason: cancelled`.

    The history only keeps answered turns: a refused, failed or cancelled prompt is dropped, so the next request
    still alternates user and assistant messages and ends with the user's.
    """

    client: EventsClient
    model: str | None = None
    conversation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    messages: list[dict[str, Any]] = field(default_factory=list)
    timeout_s: float = 120.0
    gap_wait_s: float = 1.5  # the journal lags the live stream by up to a second
    poll_s: float = 0.25
    resumes: int = 0  # resumes published (after a reconnect or a hole), for tests and figures
    _queue: asyncio.Queue[dict[str, Any]] | None = None
    _request_id: str | None = None

    async def open(self) -> ChatSession:
        sub = token_sub(self.client.token)
        self._queue = await self.client.subscribe(f"/responses/{sub}/{self.conversation_id}")
        return self

    def new_conversation(self) -> None:
        """Forget the history; the next turn starts a fresh conversation (on the same subscription)."""
        self.messages = []

    @property
    def channel(self) -> str:
        return f"/chat/{token_sub(self.client.token)}/{self.conversation_id}"

    async def cancel(self) -> None:
        """Ask the gateway to stop the answer being streamed (no-op between turns)."""
        if self._request_id is not None:
            await self._action({"action": "cancel", "requestId": self._request_id})

    async def finish_cancelled(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """After `cancel` (the turn's reading was interrupted): the request's final event, `end` with
        `stopReason: cancelled` (or its end, had it finished first); the turn is not kept in the history."""
        request_id, self._request_id = self._request_id, None
        if request_id is None:
            return {}
        return await self._wait_for(
            lambda e: e.get("requestId") == request_id and e.get("type") in ("end", "error"),
            timeout_s, "the end of the cancelled answer",
        )

    async def usage(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The caller's own limits and what remains (`action: usage`): the `usage` event."""
        request_id = uuid.uuid4().hex
        await self._action({"action": "usage", "requestId": request_id})
        return await self._wait_for(lambda e: e.get("requestId") == request_id, timeout_s, "usage answer")

    async def _wait_for(self, wanted: Callable[[dict[str, Any]], bool], timeout_s: float, what: str) -> dict[str, Any]:
        """The next event `wanted` accepts, skipping others (late events of earlier turns) until the deadline."""
        assert self._queue is not None, "open() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (left := deadline - loop.time()) > 0:
            try:
                event = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                break
            if wanted(event):
                return event
        raise TimeoutError(f"no {what} within {timeout_s:.0f} s")

    async def _action(self, action: dict[str, Any]) -> None:
        if not self.client.connected:
            await self.client.reconnect()
        await self.client.publish(self.channel, [action])

    async def turn(self, prompt: str) -> AsyncIterator[dict[str, Any]]:
        """Send the history plus `prompt`; yield the answer's events; keep the turn only if it completed."""
        assert self._queue is not None, "open() first"
        request_id = uuid.uuid4().hex
        messages = [*self.messages, {"role": "user", "content": [{"text": prompt}]}]
        request: dict[str, Any] = {"requestId": request_id, "conversationId": self.conversation_id,
                                   "messages": messages}
        if self.model:
            request["modelId"] = self.model
        answer = await self.client.publish(self.channel, [request])
        refused = answer.get("failed") or []
        self._request_id = None if refused else request_id
        # A refusal's typed error event follows on the responses channel; if it never comes, say what we know.
        wait_s = 10.0 if refused else self.timeout_s
        assembler = StreamAssembler()
        loop = asyncio.get_running_loop()
        quiet_since = gap_since = loop.time()
        try:
            while not assembler.finished:
                try:
                    event = await asyncio.wait_for(self._queue.get(), self.poll_s)
                except TimeoutError:
                    now = loop.time()
                    if now - quiet_since > wait_s:
                        self._request_id = None
                        yield _fallback_error(refused, wait_s)
                        return
                    # A drop is resumed at once (`_action` reconnects); a hole once the live stream had its chance.
                    dropped = not self.client.connected
                    if not refused and (dropped or (assembler.has_gap and now - gap_since > self.gap_wait_s)):
                        await self._resume(request_id, assembler.last_seq)
                        gap_since = now
                    continue
                if event.get("requestId") != request_id:
                    continue  # a late event of an earlier, interrupted turn
                quiet_since = loop.time()
                had_gap = assembler.has_gap
                for ready in assembler.offer(event):
                    yield ready
                    if ready.get("type") == "end" and ready.get("stopReason") != "cancelled":
                        text = assembler.text
                        self.messages = [*messages, {"role": "assistant", "content": [{"text": text or " "}]}]
                if assembler.has_gap and not had_gap:
                    gap_since = loop.time()
            self._request_id = None  # answered: nothing left to cancel (an interrupted turn keeps it for cancel)
        except TimeoutError:
            self._request_id = None
            raise

    async def _resume(self, request_id: str, after_seq: int) -> None:
        self.resumes += 1
        await self._action({"action": "resume", "requestId": request_id, "afterSeq": after_seq})


def _fallback_error(refused: list[dict[str, Any]], waited_s: float) -> dict[str, Any]:
    if refused:
        code, _, message = str(refused[0].get("errorMessage", "")).partition(": ")
        return {"type": "error", "code": code or "internal", "message": message or "the gateway refused the request"}
    return {"type": "error", "code": "timeout", "message": f"no answer within {waited_s:.0f} s"}
