"""A/B: what one streamed upstream request costs the gateway's HTTP client — httpx (as serving/pool.py builds it)
vs aiohttp — against bench/stub_engine.py (32 chunks), one at a time, interleaved, CPU time of this process.

    python bench/stub_engine.py PORT &  python bench/client_ab.py PORT [N]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import httpx


async def main(port: int, n: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = json.dumps({"model": "stub", "messages": [], "max_tokens": 32, "stream": True}).encode()
    headers = {"content-type": "application/json"}
    hx = httpx.AsyncClient(
        timeout=httpx.Timeout(600, connect=3), limits=httpx.Limits(max_connections=None, max_keepalive_connections=256)
    )
    ah = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=600),
    )

    async def via_httpx() -> None:
        response = await hx.send(hx.build_request("POST", url, content=body, headers=headers), stream=True)
        async for _ in response.aiter_raw():
            pass
        await response.aclose()

    async def via_aiohttp() -> None:
        async with ah.post(url, data=body, headers=headers) as response:
            async for _ in response.content.iter_any():
                pass

    clients = {"httpx": via_httpx, "aiohttp": via_aiohttp}
    cpu: dict[str, float] = dict.fromkeys(clients, 0.0)
    wall: dict[str, list[float]] = {name: [] for name in clients}
    for call in clients.values():  # warm-up
        for _ in range(50):
            await call()
    for _ in range(n):
        for name, call in clients.items():
            c, w = time.process_time(), time.perf_counter()
            await call()
            cpu[name] += time.process_time() - c
            wall[name].append(time.perf_counter() - w)
    for name in clients:
        p50 = sorted(wall[name])[n // 2]
        print(f"{name} cpu/request {cpu[name] / n * 1e3:.3f} ms wall p50 {p50 * 1e3:.3f} ms")
    await hx.aclose()
    await ah.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1000))
