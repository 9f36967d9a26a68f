"""Generation for evaluations, through a serving engine (vLLM): batched by the engine, concurrent from here.

The worker finds a ready engine of the base model in the engine registry the gateways publish, loads the adapter
there (the same runtime-LoRA call the gateway makes; "already loaded" is fine) and sends the prompts concurrently,
greedy. No engine running → ``NoEngine`` (the caller reports that the scores were skipped).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import httpx

CONCURRENCY = 32


class NoEngine(RuntimeError):
    pass


@dataclass(frozen=True)
class Sample:
    messages: list[dict]  # the conversation up to the answer
    reference: str  # the answer to compare with


def samples_from(normalized_jsonl: Path, limit: int) -> list[Sample]:
    """Each chat example's last assistant turn is the reference; what precedes it is the prompt."""
    out: list[Sample] = []
    with open(normalized_jsonl, encoding="utf-8") as fh:
        for line in fh:
            if len(out) >= limit:
                break
            messages = json.loads(line).get("messages") or []
            last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
            if last is None or not isinstance(messages[last].get("content"), str):
                continue
            out.append(Sample(messages[:last], messages[last]["content"]))
    return out


async def _complete_all(url: str, model: str, samples: list[Sample], max_tokens: int, timeout: float) -> list[str]:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        async def one(sample: Sample) -> str:
            budget = min(max_tokens, 16 + 2 * len(sample.reference))
            async with limit:
                response = await http.post("/v1/chat/completions", json={
                    "model": model, "messages": sample.messages, "max_tokens": budget, "temperature": 0})
            response.raise_for_status()
            return response.json()["choices"][0]["message"]["content"] or ""

        return list(await asyncio.gather(*(one(s) for s in samples)))


def load_adapter(url: str, name: str, path: str, timeout: float = 120) -> None:
    response = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}, timeout=timeout)
    if response.status_code != 200 and "already been loaded" not in response.text:
        raise RuntimeError(f"the engine refused the adapter: {response.text[:300]}")


def generate(urls: list[str], model: str, samples: list[Sample], *, max_tokens: int = 512,
             timeout: float = 600) -> list[str]:
    if not urls:
        raise NoEngine("no serving engine for this base model is running")
    return asyncio.run(_complete_all(urls[0], model, samples, max_tokens, timeout))


async def _chat_all(url: str, model: str, conversations: list[list[dict]], params: dict, timeout: float) -> list[dict]:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        async def one(messages: list[dict]) -> dict:
            async with limit:
                try:
                    response = await http.post("/v1/chat/completions", json={"model": model, "messages": messages, **params})
                except httpx.HTTPError as exc:
                    return {"error": {"code": "engine_error", "message": f"{type(exc).__name__}: {exc}"}}
            if response.status_code != 200:
                try:
                    message = response.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = response.text[:300]
                return {"error": {"code": "generation_failed", "message": str(message)}}
            return response.json()

        return list(await asyncio.gather(*(one(m) for m in conversations)))


def chat_all(url: str, model: str, conversations: list[list[dict]], params: dict, timeout: float = 600) -> list[dict]:
    """The engine's chat.completion (or ``{"error": …}``) for each conversation, sent concurrently."""
    return asyncio.run(_chat_all(url, model, conversations, params, timeout))
