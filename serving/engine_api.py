"""The engine's runtime-adapter API, in one place: which adapters an engine holds, load one, unload one.

vLLM's OpenAI server answers these (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``, ``serving.engine_main``):

    GET  /v1/models                 cards; an adapter's card has a ``parent`` (its base), in load order, oldest first
    POST /v1/load_lora_adapter      {lora_name, lora_path}; a second load of a name is a 400 "has already been loaded"
    POST /v1/unload_lora_adapter    {lora_name}; a name it does not hold is a 404 "cannot be found"

Every process that changes what an engine holds goes through ``EngineAPI``: the gateway's pool (its LRU, its locks
and ``max_adapters_per_engine``, ``serving.pool``) and the workers (eval runs, batches, the job-end evaluation:
``finetune.evals.engine_adapters``, which keeps the same limit). Callers choose the policy; this module only speaks
the protocol and turns every failure into one ``EngineAPIError`` — "already loaded" is a success, unloading what is
not there is a no-op. It takes its ``httpx.AsyncClient`` as given (tests pass one over ``httpx.MockTransport``) and
knows nothing of replicas or settings: each call names the engine's URL and the headers it requires.
"""

from __future__ import annotations

from typing import Any

import httpx

MODELS_PATH = "/v1/models"
LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"
ALREADY_LOADED = "already been loaded"  # vLLM's 400 for a second load of a name: the adapter is there


class EngineAPIError(Exception):
    """An adapter call that did not do what it asked: the engine refused it (``status``, its HTTP status) or could
    not be reached (``status`` None); ``message`` is the engine's own error message (or the transport error)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.status = message, status

    @property
    def unreachable(self) -> bool:
        return self.status is None


class EngineAPI:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def adapters(
        self, url: str, auth: dict[str, str], *, timeout: float | httpx.Timeout | None = None
    ) -> list[str]:
        """The adapters the engine holds, oldest load first (the engine's own list, whoever loaded them)."""
        response = await self._send("GET", url + MODELS_PATH, auth, None, timeout)
        if response.status_code != 200:
            raise EngineAPIError(error_message(response), response.status_code)
        try:
            cards = response.json()["data"]
            if isinstance(cards, list):
                return [c["id"] for c in cards if c.get("parent")]
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        raise EngineAPIError(f"not a model list: {response.text[:200]}", response.status_code)

    async def load(
        self, url: str, auth: dict[str, str], name: str, path: str, *, timeout: float | httpx.Timeout | None = None
    ) -> None:
        """Load ``path`` as ``name``; an engine that already holds ``name`` answers "already loaded": done too."""
        response = await self._send("POST", url + LOAD_PATH, auth, {"lora_name": name, "lora_path": path}, timeout)
        if response.status_code != 200 and ALREADY_LOADED not in response.text:
            raise EngineAPIError(error_message(response), response.status_code)

    async def unload(
        self, url: str, auth: dict[str, str], name: str, *, timeout: float | httpx.Timeout | None = None
    ) -> None:
        """Unload ``name``; one the engine does not hold (another process unloaded it, a restart) is no error."""
        response = await self._send("POST", url + UNLOAD_PATH, auth, {"lora_name": name}, timeout)
        if response.status_code not in (200, 404):
            raise EngineAPIError(error_message(response), response.status_code)

    async def _send(
        self,
        method: str,
        url: str,
        auth: dict[str, str],
        body: dict[str, Any] | None,
        timeout: float | httpx.Timeout | None,
    ) -> httpx.Response:
        """``timeout`` None: the client's own."""
        try:
            return await self.http.request(
                method, url, headers=auth, json=body, timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
            )
        except httpx.TransportError as exc:
            raise EngineAPIError(repr(exc)) from exc


def error_message(response: httpx.Response) -> str:
    """The engine's error message (OpenAI's ``{"error": {"message": …}}``), else the start of its body."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500]
