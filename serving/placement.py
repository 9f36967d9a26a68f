"""Where an adapter lives: rendezvous (highest-random-weight) hashing over the ready replicas of its base model.

Every gateway ranks the replicas for an adapter by ``sha256(replica url, adapter name)`` — the same numbers in
every process, with no coordination — and sends the adapter to the first ``homes`` of that ranking (its home
replicas). So N gateways load an adapter on its homes only, not on every replica. When a replica goes, only the
adapters whose home it was move (each to the next in its own ranking); when one comes back they move home again.

Under load an adapter spills: a home with ``spill_at`` requests in flight (this gateway's count) hands the
request to the next replica of the ranking that has room, which then holds the adapter too. With every replica
at the limit the least busy one takes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

R = TypeVar("R")


def weight(adapter: str, replica: str) -> int:
    """The adapter's weight on one replica (64 bits of sha256: stable across processes, hosts and Python runs)."""
    return int.from_bytes(hashlib.sha256(f"{replica}\x00{adapter}".encode()).digest()[:8], "big")


def ranking(adapter: str, replicas: Sequence[R], ident: Callable[[R], str]) -> list[R]:
    """The replicas for ``adapter``, best first (ties — never in practice — broken by the replica's id)."""
    return sorted(replicas, key=lambda r: (weight(adapter, ident(r)), ident(r)), reverse=True)


def choose(
    adapter: str,
    ready: Sequence[R],
    ident: Callable[[R], str],
    in_flight: Callable[[R], int],
    *,
    homes: int = 1,
    spill_at: int | None = None,
) -> R:
    """The replica a request for ``adapter`` goes to: the least busy of its homes below ``spill_at``, else the
    next replica of its ranking below it, else the least busy of all."""
    ranked = ranking(adapter, ready, ident)
    if not ranked:
        raise ValueError("no ready replica")
    home = ranked[: max(1, homes)]
    if spill_at is None:
        return min(home, key=in_flight)
    roomy = [r for r in home if in_flight(r) < spill_at]
    if roomy:
        return min(roomy, key=in_flight)
    for replica in ranked[len(home) :]:
        if in_flight(replica) < spill_at:
            return replica
    return min(ranked, key=in_flight)


def homes_of(adapter: str, ready: Sequence[R], ident: Callable[[R], str], homes: int = 1) -> list[R]:
    return ranking(adapter, ready, ident)[: max(1, homes)]


def engine_for(name: str, engines: Sequence[R], ident: Callable[[R], str]) -> R:
    """The engine a worker uses for ``name`` (an adapter's engine-side name, or a base model's work): the first of
    its ranking, so a worker's load of an adapter lands on the replica every gateway sends it to — workers see no
    traffic, so they do not spill. ValueError when ``engines`` is empty."""
    ranked = ranking(name, engines, ident)
    if not ranked:
        raise ValueError("no ready engine")
    return ranked[0]
