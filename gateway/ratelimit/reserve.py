"""Redis counters with a local reserve: most admissions never leave the process.

Each gateway takes budget from Redis in blocks and spends it without a round trip (the pattern of token-bucket
"leases" in distributed limiters: Envoy's global rate limit with local quota, Vitess's throttler):

1. A request is admitted locally when this gateway already holds enough of every bucket it costs (its ``reserve``)
   and a free member of every slot set it needs. Nothing is awaited.
2. Otherwise it goes to Redis as before (one Lua script), and the same script grants this gateway a block of each
   bucket (``BLOCK_FRACTION`` of the limit) and of each slot set (the same, at most ``MAX_SLOT_BLOCK``) — only while at
   least two blocks are left, so the last of a budget is never parked in one gateway. A request that cannot be admitted
   locally is therefore exact.
3. Settlement is local: a token correction moves the reserve (a give-back grows it; usage above the estimate is
   a debt it owes), a stream slot goes back to the local free list. No round trip after the answer either.
4. Every ``FLUSH_S`` a background task gives back what is idle (``IDLE_S`` without a local admission) or more than
   two blocks, and extends the lease of the slot members still held (``MEMBER_TTL_S``): a gateway that dies leaks
   at most its blocks, refilled within the minute, and its slot members, expired within ``MEMBER_TTL_S``.

What it costs: exactness across gateways. The total admitted never exceeds a limit (a block is taken from the bucket
before it is spent), but a gateway may be refused while another holds an idle block — at most one block per other
gateway, for at most ``IDLE_S`` plus a flush. Limits under ``1 / BLOCK_FRACTION`` have no block and stay exact.
``x-ratelimit-remaining-*`` reads the Redis level at this gateway's last exchange, refilled since, plus its reserve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass, field

from gateway.ratelimit.counters import Bucket, RedisCounters, Slot, Verdict, refill

log = logging.getLogger("tunegate.ratelimit")

BLOCK_FRACTION = 0.05  # a block is 1/20 of a limit: 20 gateways can hold one each and still leave room
MAX_SLOT_BLOCK = 8  # slot members are Redis set entries: a handful per grant covers a gateway's burst of streams
FLUSH_S = 1.0
IDLE_S = 1.0
MEMBER_TTL_S = 30.0
KEEP_ALIVE_S = MEMBER_TTL_S / 3  # how often held slot members have their lease extended


def block_of(capacity: int) -> int:
    return math.floor(capacity * BLOCK_FRACTION)


def slot_block_of(limit: int) -> int:
    return min(block_of(limit), MAX_SLOT_BLOCK)


@dataclass
class _Reserve:
    """A bucket's budget held by this gateway, and what Redis said of the bucket at the last exchange."""

    capacity: int
    held: float = 0.0
    level: float | None = None  # the bucket in Redis after the last exchange (None: not known, never local)
    at: float = 0.0
    used_at: float = 0.0

    def level_now(self, now: float) -> float:
        assert self.level is not None
        return min(float(self.capacity), refill((self.level, self.at, self.capacity), self.capacity, now) + self.held)


@dataclass
class _Pool:
    """Slot members of one set held by this gateway: free ones and those lent to running requests."""

    limit: int
    free: list[str] = field(default_factory=list)
    busy: dict[str, str] = field(default_factory=dict)  # request member → slot member
    used_at: float = 0.0


class ReservedCounters:
    """``Counters`` over ``RedisCounters`` that admit from a local reserve when they can (module docstring)."""

    def __init__(self, redis: RedisCounters) -> None:
        self.redis = redis
        self.reserves: dict[str, _Reserve] = {}
        self.pools: dict[str, _Pool] = {}
        self.round_trips = 0  # admissions that went to Redis (the benchmark and tests read it)
        self._flusher: asyncio.Task[None] | None = None
        self._kept_alive_at = 0.0

    # --- admission -------------------------------------------------------------------------------------------
    async def admit(self, buckets: list[Bucket], slots: list[Slot], member: str) -> Verdict:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())
        now = time.monotonic()
        local = self._admit_locally(buckets, slots, member, now)
        if local is not None:
            return local
        self.round_trips += 1
        spent = self._spend_held(buckets)  # what is held counts first: Redis is asked only for the rest
        remote = [Bucket(b.key, b.capacity, b.cost - use) for b, use in zip(buckets, spent, strict=True)]
        blocks = [block_of(b.capacity) if b.cost > 0 else 0 for b in buckets]
        wanted = [slot_block_of(s.limit) for s in slots]
        try:
            verdict, grant = await self.redis.admit_reserving(
                remote, slots, member, blocks, wanted, uuid.uuid4().hex, MEMBER_TTL_S
            )
        except BaseException:
            self._unspend(buckets, spent)
            raise
        if grant is None:
            self._unspend(buckets, spent)
        now = time.monotonic()
        for b, level, taken in zip(
            buckets, verdict.levels, grant.buckets if grant else [0.0] * len(buckets), strict=True
        ):
            reserve = self.reserves.setdefault(b.key, _Reserve(b.capacity))
            reserve.capacity, reserve.level, reserve.at = b.capacity, level, now
            reserve.held += taken
            reserve.used_at = now
        if grant is not None:
            for s, members in zip(slots, grant.members, strict=True):
                pool = self.pools.setdefault(s.key, _Pool(s.limit))
                pool.limit, pool.used_at = s.limit, now
                pool.free += members
                pool.busy[member] = member  # the request's own member: back to the free list when it ends
        return Verdict(verdict.refused, verdict.retry_after, [self.reserves[b.key].level_now(now) for b in buckets])

    def _spend_held(self, buckets: list[Bucket]) -> list[float]:
        spent = []
        for b in buckets:
            r = self.reserves.get(b.key)
            use = min(max(0.0, r.held), b.cost) if r is not None and r.capacity == b.capacity and b.cost > 0 else 0.0
            if r is not None:
                r.held -= use
            spent.append(use)
        return spent

    def _unspend(self, buckets: list[Bucket], spent: list[float]) -> None:
        for b, use in zip(buckets, spent, strict=True):
            if use:
                self.reserves.setdefault(b.key, _Reserve(b.capacity)).held += use

    def _admit_locally(self, buckets: list[Bucket], slots: list[Slot], member: str, now: float) -> Verdict | None:
        reserves = [self.reserves.get(b.key) for b in buckets]
        pools = [self.pools.get(s.key) for s in slots]
        for b, r in zip(buckets, reserves, strict=True):
            if r is None or r.level is None or r.capacity != b.capacity or r.held < b.cost:
                return None
        for s, p in zip(slots, pools, strict=True):
            if p is None or p.limit != s.limit or not p.free:
                return None
        levels = []
        for b, r in zip(buckets, reserves, strict=True):
            assert r is not None
            r.held -= b.cost
            r.used_at = now
            levels.append(r.level_now(now))
        for p in pools:
            assert p is not None
            p.busy[member] = p.free.pop()
            p.used_at = now
        return Verdict(None, 0.0, levels)

    # --- settlement: local ---------------------------------------------------------------------------------------
    async def settle(self, buckets: list[Bucket], slots: list[Slot], member: str) -> None:
        for b in buckets:
            self.reserves.setdefault(b.key, _Reserve(b.capacity)).held -= b.cost
        for s in slots:
            pool = self.pools.get(s.key)
            if pool is not None and member in pool.busy:
                pool.free.append(pool.busy.pop(member))

    # --- giving back ---------------------------------------------------------------------------------------------
    async def flush(self, everything: bool = False) -> None:
        """Give back idle or surplus reserves and free slot members; extend the lease of the members kept."""
        now = time.monotonic()
        buckets: list[Bucket] = []
        for key, r in list(self.reserves.items()):
            idle = everything or now - r.used_at >= IDLE_S
            back = r.held if idle else max(0.0, r.held - 2 * block_of(r.capacity))
            if back:
                buckets.append(Bucket(key, r.capacity, -back))
                r.held -= back
            if idle:
                del self.reserves[key]
        keep_alive = now - self._kept_alive_at >= KEEP_ALIVE_S
        slots: list[tuple[str, list[str], list[str]]] = []
        for key, p in list(self.pools.items()):
            idle = everything or now - p.used_at >= IDLE_S
            keep = 0 if idle else 2 * slot_block_of(p.limit)
            removed, p.free = p.free[keep:], p.free[:keep]
            kept = [*p.free, *p.busy.values()] if keep_alive else []
            if removed or kept:
                slots.append((key, removed, kept))
            if idle and not p.busy:
                del self.pools[key]
        if keep_alive:
            self._kept_alive_at = now
        if buckets or slots:
            await self.redis.give_back(buckets, slots, MEMBER_TTL_S)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - Redis failing: what was held refills or expires on its own
                log.warning("rate-limit reserve could not be given back (%r); it refills or expires in Redis", exc)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        with contextlib.suppress(Exception):  # closing: a failing Redis keeps nothing of ours for long
            await self.flush(everything=True)
        await self.redis.close()
