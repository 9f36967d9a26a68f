"""The Redis limiter's local reserve (gateway/ratelimit/reserve.py) against a real Redis: two "gateways" (two
ReservedCounters on one Redis) never admit more than a limit between them, most admissions need no round trip,
and what a gateway holds goes back to Redis when it is idle or closes."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest

from gateway.ratelimit import reserve
from gateway.ratelimit.counters import Bucket, RedisCounters, Slot
from gateway.ratelimit.reserve import ReservedCounters

REDIS_URL = os.environ.get("TUNEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def prefix() -> Iterator[str]:
    import redis

    name = f"tgtest-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    if keys := list(client.scan_iter(f"{name}:*")):
        client.delete(*keys)
    client.close()


def two_gateways(scenario: Callable[[ReservedCounters, ReservedCounters, RedisCounters], Awaitable[None]]) -> None:
    async def main() -> None:
        a, b, plain = (
            ReservedCounters(RedisCounters(REDIS_URL)),
            ReservedCounters(RedisCounters(REDIS_URL)),
            RedisCounters(REDIS_URL),
        )
        try:
            await scenario(a, b, plain)
        finally:
            for made in (a, b, plain):
                await made.close()

    asyncio.run(main())


def test_two_gateways_never_admit_more_than_the_limit_and_mostly_stay_local(prefix: str) -> None:
    async def scenario(a: ReservedCounters, b: ReservedCounters, plain: RedisCounters) -> None:
        bucket = Bucket(f"{prefix}:requests", 200, 1)  # block 10
        admitted, trips_at_150 = {id(a): 0, id(b): 0}, 0
        for i in range(600):
            gateway = (a, b)[i % 2]
            if (await gateway.admit([bucket], [], f"m{i}")).refused is None:
                admitted[id(gateway)] += 1
            if sum(admitted.values()) == 150 and not trips_at_150:
                trips_at_150 = a.round_trips + b.round_trips
        total = sum(admitted.values())
        assert 195 <= total <= 203, admitted  # 200, and what refilled at 200/min while the loop ran
        assert min(admitted.values()) >= 80, "neither gateway is starved by the other's blocks"
        assert 0 < trips_at_150 <= 20, "blocks of 10: about one round trip in ten admissions (refusals always ask)"
        # the plain Redis view agrees: nothing is left over to admit
        assert (await plain.admit([bucket], [], "x")).refused == 0

    two_gateways(scenario)


def test_an_idle_reserve_goes_back_to_redis(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reserve, "IDLE_S", 0.0)

    async def scenario(a: ReservedCounters, b: ReservedCounters, plain: RedisCounters) -> None:
        bucket = Bucket(f"{prefix}:tokens", 1000, 100)  # block 50
        assert (await a.admit([bucket], [], "m")).refused is None
        held = a.reserves[bucket.key].held
        assert held == 50
        peek = await plain.admit([Bucket(bucket.key, 1000, 0)], [], "peek")
        assert 849 <= peek.levels[0] <= 851, "the block is taken from the bucket in Redis"
        await a.settle([Bucket(bucket.key, 1000, -60)], [], "m")  # used 40 of an estimate of 100
        assert a.reserves[bucket.key].held == 110, "a give-back lands in the local reserve"
        await a.flush()
        assert bucket.key not in a.reserves
        peek = await plain.admit([Bucket(bucket.key, 1000, 0)], [], "peek")
        assert 959 <= peek.levels[0] <= 961, "1000 − 40 used: the reserve and the give-back are back in Redis"

    two_gateways(scenario)


def test_stream_slots_are_shared_exactly_and_released_on_close(prefix: str) -> None:
    async def scenario(a: ReservedCounters, b: ReservedCounters, plain: RedisCounters) -> None:
        slot = Slot(f"{prefix}:streams", 60)  # block 3
        held: list[tuple[ReservedCounters, str]] = []
        trips_at_full = 0
        for i in range(100):
            gateway = (a, b)[i % 2]
            if (await gateway.admit([], [slot], f"s{i}")).refused is None:
                held.append((gateway, f"s{i}"))
                trips_at_full = a.round_trips + b.round_trips
        assert len(held) == 60, "never more streams than the limit, whichever gateway holds them"
        assert trips_at_full < 35, "blocks of 3 slots: most streams are admitted without a round trip"
        for gateway, member in held:
            await gateway.settle([], [slot], member)
        assert (await plain.admit([], [slot], "x")).refused == 0, "settled locally: still held by the gateways"
        await a.flush(everything=True)
        await b.flush(everything=True)
        assert (await plain.admit([], [Slot(slot.key, 1)], "y")).refused is None, "closed: every member is back"
        assert (await plain.admit([], [Slot(slot.key, 1)], "z")).refused == 0

    two_gateways(scenario)


def test_small_limits_have_no_block_and_stay_exact(prefix: str) -> None:
    async def scenario(a: ReservedCounters, b: ReservedCounters, plain: RedisCounters) -> None:
        bucket = Bucket(f"{prefix}:requests", 4, 1)
        seen = []
        for gateway in (a, b, a, b, a):
            verdict = await gateway.admit([bucket], [], "m")
            seen.append(None if verdict.refused is not None else int(verdict.levels[0]))
        assert seen == [3, 2, 1, 0, None]
        assert a.round_trips == 3 and b.round_trips == 2

    two_gateways(scenario)
