"""Rate limits of /v1: requests and tokens per minute and concurrent streams, per API key and per organization.

1. Admission (the /v1 guard, right after authentication): one request from each request bucket of the key and of
   its organization; a completion also takes its estimated tokens — prompt bytes / 4 plus ``n`` × ``max_tokens``
   (``DEFAULT_COMPLETION_TOKENS`` when unset) — and, when it streams, a stream slot. All or nothing; over a limit →
   429 ``rate_limit_exceeded`` naming the limit, with ``Retry-After``.
2. Every answer to an authenticated key carries OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
   of its tightest bucket (key or organization), 429s included.
3. Settlement (once the answer is over): the token buckets are charged the real usage minus the estimate (the
   proxy's usage record reaches ``report_usage``), or given the whole estimate back when no usage came; the
   stream slot is freed. A background response (``/v1/responses`` with ``background: true``) takes a stream slot
   too and keeps its admission past the HTTP answer (``hold``): it settles when its generation ends.

The limits are an organization's effective ``LimitSettings`` (settings defaults, its stored overrides), cached for
``LIMITS_TTL_S``. Counters (``counters.py``) are in the process, or in Redis with ``redis_url`` — spent from a
local reserve taken in blocks (``reserve.py``) unless ``limits.redis_reserve`` is off. Redis failing or
slower than its timeout → fail open: the request passes without limits or headers, a warning is logged (at most
every ``WARN_EVERY_S``), and Redis is not asked again for ``BACKOFF_S``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar.concurrency import sync_to_thread
from litestar.connection import ASGIConnection, Request

from gateway.ratelimit.counters import (
    Bucket,
    Counters,
    MemoryCounters,
    RedisCounters,
    Slot,
    Verdict,
    duration,
    reset_seconds,
)
from gateway.ratelimit.reserve import ReservedCounters
from serving import metrics
from serving.usage import UsageRecorder
from storage.accounts import Accounts, Principal
from storage.errors import RateLimited
from storage.settings import LimitSettings, RequestLimits, Settings

log = logging.getLogger("tunegate.ratelimit")

METERED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})  # the routes whose tokens count
DEFAULT_COMPLETION_TOKENS = 256
LIMITS_TTL_S = 5.0
WARN_EVERY_S = 30.0
BACKOFF_S = 5.0
_current: contextvars.ContextVar[Admission | None] = contextvars.ContextVar("tunegate_admission", default=None)


class _Sizing(msgspec.Struct):
    """The fields of a completion request that size it (the rest is skipped unparsed)."""

    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_output_tokens: int | None = None  # /v1/responses
    n: int | None = None
    stream: bool | None = None
    background: bool | None = None  # /v1/responses: generates after the answer, holds a stream slot meanwhile


@dataclass
class Admission:
    """What one request took, for its headers and its settlement."""

    buckets: list[Bucket]
    slots: list[Slot]
    member: str
    verdict: Verdict
    estimate: int = 0
    used: int | None = None  # tokens really used, once the proxy recorded them
    headers: list[tuple[str, str]] = field(default_factory=list)
    held: bool = False  # kept past the answer (a background response): settled by the release ``hold`` returned
    settled: bool = False  # once: by ``settle_now`` before a stream's last message, else by ``finish``


def estimate_tokens(body: bytes, caps: RequestLimits) -> tuple[int, bool]:
    """(tokens a completion request may use at most, by a cheap heuristic; whether it streams). ``n`` and
    ``max_tokens`` are taken at most at their caps: above those, the handler's 400 says what is wrong, not a 429."""
    try:
        sizing = msgspec.json.decode(body, type=_Sizing)
    except Exception:  # malformed or hostile: the handler answers its 400; size it by its bytes
        sizing = _Sizing()
    completion = (
        sizing.max_completion_tokens or sizing.max_tokens or sizing.max_output_tokens or DEFAULT_COMPLETION_TOKENS
    )
    n = min(max(1, sizing.n or 1), caps.max_n)
    streams = sizing.stream is True or sizing.background is True
    return math.ceil(len(body) / 4) + n * min(max(0, completion), caps.max_tokens), streams


def report_usage(usage: Any) -> None:
    """The proxy recorded a request's usage: remember its tokens for the settlement."""
    admission = _current.get()
    if admission is not None and isinstance(usage, dict):
        admission.used = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)


class Limiter:
    def __init__(self, settings: Settings, accounts: Accounts) -> None:
        self.defaults, self.accounts, self.caps = settings.limits, accounts, settings.requests
        self.prefix = settings.limits.redis_prefix
        self.counters: Counters = MemoryCounters()
        if settings.redis_url:
            redis = RedisCounters(settings.redis_url)
            self.counters = ReservedCounters(redis) if settings.limits.redis_reserve else redis
        self._limits: dict[str, tuple[float, LimitSettings]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._down_until = self._warned_at = 0.0

    # --- the organization's limits -----------------------------------------------------------------------
    async def limits_of(self, org_id: str) -> LimitSettings:
        cached = self._limits.get(org_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        limits = await sync_to_thread(self.accounts.effective_limits, org_id, self.defaults)
        self._limits[org_id] = (time.monotonic() + LIMITS_TTL_S, limits)
        return limits

    def forget(self, org_id: str) -> None:
        """The organization's overrides changed (admin API): use them from the next request on."""
        self._limits.pop(org_id, None)

    # --- 1. admission ------------------------------------------------------------------------------------
    async def admit(self, connection: ASGIConnection, principal: Principal) -> None:
        limits = await self.limits_of(principal.organization_id)
        estimate, streams = 0, False
        metered = connection.scope.get("method") == "POST" and connection.scope["path"] in METERED_PATHS
        if metered and isinstance(connection, Request):  # a guard's connection is the route's Request
            estimate, streams = estimate_tokens(await connection.body(), self.caps)
        buckets, slots = self._buckets(principal, limits, estimate, streams)
        if not buckets and not slots:
            return
        member = uuid.uuid4().hex  # never the client's x-request-id: two streams under one id would hold one slot
        verdict = await self._ask(self.counters.admit, buckets, slots, member)
        if verdict is None:
            return  # fail open
        admission = Admission(buckets, slots, member, verdict, estimate)
        admission.headers = _headers(buckets, verdict)
        connection.scope["state"]["rate_limit"] = admission
        if verdict.refused is not None:
            admission.slots = []  # nothing was taken: nothing to give back
            refused = (buckets + slots)[verdict.refused].key
            metrics.RATE_LIMITED.labels("key" if ":key:" in refused else "org", refused.rsplit(":", 1)[1]).inc()
            raise RateLimited(
                _refusal(principal, buckets, slots, verdict),
                retry_after=max(1.0, verdict.retry_after),
                code="rate_limit_exceeded",
            )
        if estimate or slots:
            _current.set(admission)

    def _buckets(
        self, who: Principal, limits: LimitSettings, estimate: int, streams: bool
    ) -> tuple[list[Bucket], list[Slot]]:
        org = f"{self.prefix}:{{{who.organization_id}}}"
        scopes = (
            (f"{org}:org", limits.requests_per_minute, limits.tokens_per_minute, limits.concurrent_streams),
            (
                f"{org}:key:{who.key_id}",
                limits.key_requests_per_minute,
                limits.key_tokens_per_minute,
                limits.key_concurrent_streams,
            ),
        )
        buckets, slots = [], []
        for name, rpm, tpm, concurrent in scopes:
            if rpm is not None:
                buckets.append(Bucket(f"{name}:requests", rpm, 1))
            if tpm is not None:
                buckets.append(Bucket(f"{name}:tokens", tpm, estimate))
            if streams and concurrent is not None:
                slots.append(Slot(f"{name}:streams", concurrent))
        return buckets, slots

    # --- 3. settlement -----------------------------------------------------------------------------------
    def hold(self, admission: Admission | None) -> Callable[[], None]:
        """Keep ``admission`` (its estimate and stream slot) past the answer; the returned release settles it (call
        it once, in the event loop, when the work ends). The usage reported meanwhile in the caller's context
        (``report_usage``: tasks copy it) counts."""
        if admission is None or admission.verdict.refused is not None:
            return lambda: None
        admission.held = True

        def release() -> None:
            admission.held = False
            self.finish(admission)

        return release

    def finish(self, admission: Admission | None) -> None:
        """The answer is over: settle off the request path (a held admission: when its holder releases it)."""
        settlement = self._settlement(admission)
        if settlement is None:
            return
        task = asyncio.get_running_loop().create_task(self._settle(*settlement))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle_now(self, admission: Admission | None) -> None:
        """Settle a stream before its last message is sent: a client that opens its next stream as soon as it
        sees this one end finds the slot free (``finish`` afterwards does nothing)."""
        settlement = self._settlement(admission) if admission is not None and admission.slots else None
        if settlement is not None:
            await self._settle(*settlement)

    def _settlement(self, admission: Admission | None) -> tuple[list[Bucket], list[Slot], str] | None:
        """What settling ``admission`` gives back — once; None when there is nothing (more) to settle."""
        if admission is None or admission.verdict.refused is not None or admission.held or admission.settled:
            return None
        admission.settled = True
        used = admission.used if admission.used is not None else 0
        tokens = [
            Bucket(b.key, b.capacity, used - admission.estimate)
            for b in admission.buckets
            if b.key.endswith(":tokens") and used != admission.estimate
        ]
        if not tokens and not admission.slots:
            return None
        return tokens, admission.slots, admission.member

    async def _settle(self, buckets: list[Bucket], slots: list[Slot], member: str) -> None:
        await self._ask(self.counters.settle, buckets, slots, member)

    async def _ask(self, call: Any, *args: Any) -> Any:
        """The counters' answer, or None when Redis is failing (fail open, warned at most every WARN_EVERY_S)."""
        if self._down_until > time.monotonic():
            return None
        try:
            return await call(*args)
        except Exception as exc:  # noqa: BLE001 - Redis errors of every kind: fail open
            now = time.monotonic()
            self._down_until = now + BACKOFF_S
            if now - self._warned_at > WARN_EVERY_S:
                self._warned_at = now
                log.warning("rate-limit counters unavailable (%r): requests pass unlimited for now", exc)
            return None

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.counters.close()


def _tightest(buckets: list[Bucket], levels: list[float], kind: str) -> tuple[Bucket, float] | None:
    pairs = [(b, level) for b, level in zip(buckets, levels, strict=False) if b.key.endswith(kind)]  # levels as given
    return min(pairs, key=lambda p: p[1]) if pairs else None


def _headers(buckets: list[Bucket], verdict: Verdict) -> list[tuple[str, str]]:
    headers = []
    for kind in ("requests", "tokens"):
        tight = _tightest(buckets, verdict.levels, kind)
        if tight is None:
            continue
        bucket, level = tight  # after this request's cost, or (refused) untouched
        for name, value in (
            ("limit", str(bucket.capacity)),
            ("remaining", str(max(0, math.floor(level)))),
            ("reset", duration(reset_seconds(level, bucket.capacity))),
        ):
            headers.append((f"x-ratelimit-{name}-{kind}", value))
    return headers


def _refusal(who: Principal, buckets: list[Bucket], slots: list[Slot], verdict: Verdict) -> str:
    assert verdict.refused is not None
    if verdict.refused >= len(buckets):
        slot = slots[verdict.refused - len(buckets)]
        return f"Too many concurrent streams for {_whose(who, slot.key)}: limit {slot.limit}. Retry when one ends."
    bucket, level = buckets[verdict.refused], verdict.levels[verdict.refused]
    kind = "requests per min (RPM)" if bucket.key.endswith(":requests") else "tokens per min (TPM)"
    used = max(0, bucket.capacity - math.floor(level))
    if bucket.cost > bucket.capacity:
        return (
            f"Request too large for {_whose(who, bucket.key)} on {kind}: Limit {bucket.capacity}, "
            f"Requested {math.ceil(bucket.cost)}. Lower max_tokens or the prompt."
        )
    return (
        f"Rate limit reached for {_whose(who, bucket.key)} on {kind}: Limit {bucket.capacity}, Used {used}, "
        f"Requested {math.ceil(bucket.cost)}. Please try again in {duration(verdict.retry_after)}."
    )


def _whose(who: Principal, key: str) -> str:
    return f"API key {who.key_id}" if ":key:" in key else f"organization {who.organization_id}"


class MeteredUsage(UsageRecorder):
    """The proxy's usage recorder, which also tells the limiter what the request really used."""

    def add(self, principal: Principal, model: str, endpoint: str, usage: dict | None, *args: Any, **kw: Any) -> None:
        super().add(principal, model, endpoint, usage, *args, **kw)
        report_usage(usage)
