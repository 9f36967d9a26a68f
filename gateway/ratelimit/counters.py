"""Rate-limit counters: token buckets and concurrency slots, in the process or in Redis — the same semantics.

A bucket of capacity ``C`` (a per-minute limit) refills continuously at ``C / 60`` per second up to ``C``. Taking
``cost`` from it succeeds when its level is at least ``cost``; a settlement may push the level below zero (a request
that used more than it was estimated at), which delays the next ones. A bucket whose limit changed (an admin's
override) moves its level by the difference: a raised limit applies at once. A slot set holds the members (request ids)
using a concurrency slot; a member expires after ``SLOT_TTL_S`` so that a crashed gateway cannot leak slots.

An admission is all-or-nothing over several buckets and slots (key and organization): a refused request takes
nothing. In Redis it is one Lua script, with Redis's clock, so gateways on several hosts agree; keys expire once
their bucket would be full again, and carry the organization as hash tag (``{org}``) for Redis Cluster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

SLOT_TTL_S = 600.0  # a stream open longer than this stops counting against the concurrency limit


@dataclass(frozen=True)
class Bucket:
    key: str
    capacity: int  # per minute
    cost: float  # taken at admission; at settlement, the correction (negative: given back)


@dataclass(frozen=True)
class Slot:
    key: str
    limit: int


@dataclass(frozen=True)
class Verdict:
    """The outcome of an admission: ``refused`` is the index of the first bucket (then slot) that said no, or None;
    ``levels`` are the buckets' levels afterwards, ``retry_after`` how long until the refusal would pass."""

    refused: int | None
    retry_after: float
    levels: list[float]


class Counters(Protocol):
    async def admit(self, buckets: list[Bucket], slots: list[Slot], member: str) -> Verdict: ...
    async def settle(self, buckets: list[Bucket], slots: list[Slot], member: str) -> None: ...
    async def close(self) -> None: ...


def refill(state: tuple[float, float, int] | None, capacity: int, now: float) -> float:
    """A bucket's level now, from its stored (level, when, capacity then)."""
    if state is None:
        return float(capacity)
    level, at, was = state
    return min(float(capacity), level + capacity - was + max(0.0, now - at) * capacity / 60.0)


def wait_for(level: float, cost: float, capacity: int) -> float:
    return (cost - level) * 60.0 / capacity if capacity > 0 else 60.0


class MemoryCounters:
    """Counters of this process only (the embedded default): one gateway, forgotten on restart."""

    def __init__(self) -> None:
        self.buckets: dict[str, tuple[float, float, int]] = {}  # key → (level, when, capacity)
        self.slots: dict[str, dict[str, float]] = {}  # key → member → expires

    async def admit(self, buckets: list[Bucket], slots: list[Slot], member: str) -> Verdict:
        now = time.monotonic()
        levels = [refill(self.buckets.get(b.key), b.capacity, now) for b in buckets]
        for i, (b, level) in enumerate(zip(buckets, levels, strict=True)):
            if b.cost > 0 and level < b.cost:
                return Verdict(i, wait_for(level, b.cost, b.capacity), levels)
        for j, slot in enumerate(slots):
            held = {m: t for m, t in self.slots.get(slot.key, {}).items() if t > now}
            self.slots[slot.key] = held
            if len(held) >= slot.limit:
                return Verdict(len(buckets) + j, 1.0, levels)
        levels = [level - b.cost for b, level in zip(buckets, levels, strict=True)]
        for b, level in zip(buckets, levels, strict=True):
            self.buckets[b.key] = (level, now, b.capacity)
        for slot in slots:
            self.slots[slot.key][member] = now + SLOT_TTL_S
        return Verdict(None, 0.0, levels)

    async def settle(self, buckets: list[Bucket], slots: list[Slot], member: str) -> None:
        now = time.monotonic()
        for b in buckets:
            level = refill(self.buckets.get(b.key), b.capacity, now)
            self.buckets[b.key] = (min(float(b.capacity), level - b.cost), now, b.capacity)
        for slot in slots:
            self.slots.get(slot.key, {}).pop(member, None)

    async def close(self) -> None:
        pass


_REFILL = """
local function refill(key, cap, now)
  local v = redis.call('HMGET', key, 'l', 't', 'c')
  local level, at, was = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  if level == nil or at == nil or was == nil then return cap end
  return math.min(cap, level + cap - was + math.max(0, now - at) * cap / 60)
end
local function store(key, cap, level, now)
  redis.call('HSET', key, 'l', tostring(level), 't', tostring(now), 'c', tostring(cap))
  local full_in = cap > 0 and (cap - level) * 60 / cap or 0
  redis.call('PEXPIRE', key, math.ceil(full_in * 1000) + 1000)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local nb, member = tonumber(ARGV[1]), ARGV[2]
"""

# KEYS: buckets, then slots. ARGV: n buckets, member, (capacity, correction) per bucket.
_SETTLE = (
    _REFILL
    + """
for i = 1, nb do
  local cap, delta = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  store(KEYS[i], cap, math.min(cap, refill(KEYS[i], cap, now) - delta), now)
end
for j = nb + 1, #KEYS do redis.call('ZREM', KEYS[j], member) end
return 1
"""
)

# The admission (all or nothing). When the request passes, each bucket also grants its block (zero for the exact
# ``admit``; only while at least two blocks are left: never the last of a budget) and each slot set its wanted
# members (named ``prefix:j:k``), all under one clock. KEYS: buckets, then slots. ARGV: n buckets, member, member
# ttl, grant prefix, (capacity, cost, block) per bucket, (limit, wanted) per slot. Returns refused, wait, the
# levels, then (passed) the grant of each bucket and slot.
_ADMIT_RESERVING = (
    _REFILL
    + """
local ttl, prefix, base = tonumber(ARGV[3]), ARGV[4], 4
local levels, grants, cards, refused, wait = {}, {}, {}, 0, 0
local ns = #KEYS - nb
for i = 1, nb do
  local cap, cost = tonumber(ARGV[base + 3 * i - 2]), tonumber(ARGV[base + 3 * i - 1])
  levels[i] = refill(KEYS[i], cap, now)
  if refused == 0 and cost > 0 and levels[i] < cost then
    refused = i
    wait = cap > 0 and (cost - levels[i]) * 60 / cap or 60
  end
end
for j = 1, ns do
  local key, limit = KEYS[nb + j], tonumber(ARGV[base + 3 * nb + 2 * j - 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  cards[j] = redis.call('ZCARD', key)
  if refused == 0 and cards[j] >= limit then refused, wait = nb + j, 1 end
end
if refused == 0 then
  for i = 1, nb do
    local cap, cost = tonumber(ARGV[base + 3 * i - 2]), tonumber(ARGV[base + 3 * i - 1])
    local block = tonumber(ARGV[base + 3 * i])
    local level = levels[i] - cost
    grants[i] = (block > 0 and level >= 2 * block) and block or 0
    levels[i] = level - grants[i]
    store(KEYS[i], cap, levels[i], now)
  end
  for j = 1, ns do
    local key = KEYS[nb + j]
    local limit, want = tonumber(ARGV[base + 3 * nb + 2 * j - 1]), tonumber(ARGV[base + 3 * nb + 2 * j])
    redis.call('ZADD', key, now + ttl, member)
    grants[nb + j] = (want > 0 and limit - cards[j] - 1 >= 2 * want) and want or 0
    for k = 1, grants[nb + j] do redis.call('ZADD', key, now + ttl, prefix .. ':' .. j .. ':' .. k) end
    redis.call('EXPIRE', key, math.ceil(ttl) + 1)
  end
end
local out = {refused, tostring(wait)}
for i = 1, nb do out[#out + 1] = tostring(levels[i]) end
if refused == 0 then for k = 1, nb + ns do out[#out + 1] = tostring(grants[k]) end end
return out
"""
)

# Giving reserves back and keeping held slot members alive. KEYS: buckets, then slots. ARGV: n buckets, '', (capacity,
# correction) per bucket, member ttl, then per slot: n removed, n kept, the removed members, the kept members.
_GIVE_BACK = (
    _REFILL
    + """
for i = 1, nb do
  local cap, delta = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  if delta ~= 0 then store(KEYS[i], cap, math.min(cap, refill(KEYS[i], cap, now) - delta), now) end
end
local ttl, c = tonumber(ARGV[3 + 2 * nb]), 4 + 2 * nb
for j = nb + 1, #KEYS do
  local nrem, nkeep = tonumber(ARGV[c]), tonumber(ARGV[c + 1])
  c = c + 2
  for k = 1, nrem do redis.call('ZREM', KEYS[j], ARGV[c]); c = c + 1 end
  for k = 1, nkeep do redis.call('ZADD', KEYS[j], now + ttl, ARGV[c]); c = c + 1 end
  if nkeep > 0 then redis.call('EXPIRE', KEYS[j], math.ceil(ttl) + 1) end
end
return 1
"""
)


@dataclass(frozen=True)
class Grant:
    """What a reserving admission handed this gateway besides the request's own costs."""

    buckets: list[float]  # per bucket: budget now held locally
    members: list[list[str]]  # per slot: slot members now held locally


class RedisCounters:
    """Counters in Redis (``redis_url``): shared by every gateway process using it, kept across restarts."""

    def __init__(self, url: str, timeout_s: float = 0.25) -> None:
        import redis.asyncio as aioredis  # only when configured

        self.client: Any = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._settle = self.client.register_script(_SETTLE)
        self._admit_reserving = self.client.register_script(_ADMIT_RESERVING)
        self._give_back = self.client.register_script(_GIVE_BACK)

    async def admit(self, buckets: list[Bucket], slots: list[Slot], member: str) -> Verdict:
        """The exact admission: the reserving one with nothing reserved."""
        verdict, _ = await self.admit_reserving(
            buckets, slots, member, [0] * len(buckets), [0] * len(slots), "", SLOT_TTL_S
        )
        return verdict

    async def settle(self, buckets: list[Bucket], slots: list[Slot], member: str) -> None:
        args: list[Any] = [len(buckets), member]
        for b in buckets:
            args += [b.capacity, b.cost]
        await self._settle(keys=[b.key for b in buckets] + [s.key for s in slots], args=args)

    async def admit_reserving(
        self,
        buckets: list[Bucket],
        slots: list[Slot],
        member: str,
        blocks: Sequence[float],
        wanted: list[int],
        prefix: str,
        ttl_s: float,
    ) -> tuple[Verdict, Grant | None]:
        """``admit``, and on success take ``blocks[i]`` more from each bucket and ``wanted[j]`` members of each slot
        set for this gateway to hand out (each only while two such blocks are left). Members expire after ``ttl_s``
        unless kept alive by ``give_back``."""
        args: list[Any] = [len(buckets), member, ttl_s, prefix]
        for b, block in zip(buckets, blocks, strict=True):
            args += [b.capacity, b.cost, block]
        for s, want in zip(slots, wanted, strict=True):
            args += [s.limit, want]
        out = await self._admit_reserving(keys=[b.key for b in buckets] + [s.key for s in slots], args=args)
        refused, nb = int(out[0]), len(buckets)
        verdict = Verdict(refused - 1 if refused else None, float(out[1]), [float(v) for v in out[2 : 2 + nb]])
        if refused:
            return verdict, None
        granted = [float(v) for v in out[2 + nb :]]
        members = [[f"{prefix}:{j + 1}:{k + 1}" for k in range(int(n))] for j, n in enumerate(granted[nb:])]
        return verdict, Grant(granted[:nb], members)

    async def give_back(
        self, buckets: list[Bucket], slots: list[tuple[str, list[str], list[str]]], ttl_s: float
    ) -> None:
        """Settle ``buckets`` (their cost is the correction: negative gives back) and, per slot set
        ``(key, removed members, kept members)``, remove the first and extend the second's lease by ``ttl_s``."""
        args: list[Any] = [len(buckets), ""]
        for b in buckets:
            args += [b.capacity, b.cost]
        args.append(ttl_s)
        for _, removed, kept in slots:
            args += [len(removed), len(kept), *removed, *kept]
        await self._give_back(keys=[b.key for b in buckets] + [key for key, _, _ in slots], args=args)

    async def close(self) -> None:
        await self.client.aclose()


def reset_seconds(level: float, capacity: int) -> float:
    """How long until a bucket is full again (OpenAI's ``x-ratelimit-reset-*``)."""
    return max(0.0, (capacity - level) * 60.0 / capacity) if capacity > 0 else 0.0


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``17ms``, ``1s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text
