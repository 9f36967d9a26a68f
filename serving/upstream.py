"""The forwarding client: a completion sent to an engine, its answer read or streamed back (aiohttp).

Why not the pool's httpx client: a streamed request is the gateway's hottest path, and httpx + httpcore + h11 cost
~1.6 ms of CPU per streamed 32-chunk request against aiohttp's ~0.55 ms (``bench/client_ab.py``), which was most
of the gateway's added latency. The pool's own calls to engines (health, adapter loads, ``/v1/models``,
``/tokenize``) stay on httpx: they are rare, and tests drive them over ``httpx.MockTransport``.

What the proxy relies on (``serving.proxy``):

- ``post`` returns once the engine's status line and headers are in; the body is read by the caller
  (``read_body``, or ``response.content.iter_any()``: one piece per read from the socket, so what arrived together is
  handed on together), and a response ends with ``release()`` (read to the end: the connection is kept for
  the next request) or ``close()`` (not read to the end: the connection is closed, which makes vLLM abort the
  generation);
- no connection made (refused, no such host, ``serving.connect_timeout_seconds`` passed) is ``EngineUnreachable``:
  the request never reached the engine, so another replica may be tried;
- any other failure, before or during the body (the engine died, hung up, or sent nothing for
  ``serving.request_timeout_seconds``), is ``BROKEN``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

from storage.settings import ServingSettings

BROKEN: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError)


class EngineUnreachable(Exception):
    """No connection to the engine could be made; the request was not sent."""


class Upstream:
    """One aiohttp session for every forwarded request, made on first use (inside the running loop) and closed
    with the gateway."""

    def __init__(self, serving: ServingSettings) -> None:
        # sock_read: the longest wait for the engine's next bytes (httpx's read timeout); no total: a long
        # generation may stream for as long as it keeps streaming
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=serving.connect_timeout_seconds, sock_read=serving.request_timeout_seconds
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # no cap on connections: the engine queues, not us; idle ones dropped before the engine's uvicorn drops
            # them (its keep-alive is 5 s), so that a request rarely lands on a connection being closed
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
            # no Accept-Encoding: the SSE relay parses the bytes as they come, so the engine must not compress them
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, skip_auto_headers=("user-agent", "accept-encoding")
            )
        return self._session

    async def post(self, url: str, content: bytes, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        try:
            return await self._open().post(url, data=content, headers=headers)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise EngineUnreachable(repr(exc)) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def read_body(response: aiohttp.ClientResponse) -> bytes:
    """The whole body; the response is released (or, if reading failed, closed)."""
    try:
        payload = await response.read()
    except BaseException:
        response.close()
        raise
    response.release()
    return payload
