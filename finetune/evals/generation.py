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


def load_adapter(url: str, name: str, path: str, timeout: float = 120) -> None:
    response = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}, timeout=timeout)
    if response.status_code != 200 and "already been loaded" not in response.text:
        raise RuntimeError(f"the engine refused the adapter: {response.text[:300]}")


def generate(urls: list[str], model: str, samples: list[Sample], *, max_tokens: int = 512,
             timeout: float = 600) -> list[str]:
    """Greedy answers, each with a budget of min(max_tokens, 16 + 2 × its reference's length)."""
    if not urls:
        raise NoEngine("no serving engine for this base model is running")
    params = [{"max_tokens": min(max_tokens, 16 + 2 * len(s.reference)), "temperature": 0} for s in samples]
    answers = chat_all(urls[0], model, [s.messages for s in samples], params, timeout)
    failed = next((a["error"]["message"] for a in answers if "error" in a), None)
    if failed is not None:
        raise RuntimeError(f"generation failed: {failed}")
    return [a["choices"][0]["message"]["content"] or "" for a in answers]


async def _chat_all(url: str, model: str, conversations: list[list[dict]], params: list[dict],
                    timeout: float) -> list[dict]:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        async def one(messages: list[dict], extra: dict) -> dict:
            async with limit:
                try:
                    response = await http.post("/v1/chat/completions", json={"model": model, "messages": messages, **extra})
                except httpx.HTTPError as exc:
                    return {"error": {"code": "engine_error", "message": f"{type(exc).__name__}: {exc}"}}
            if response.status_code != 200:
                try:
                    message = response.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = response.text[:300]
                return {"error": {"code": "generation_failed", "message": str(message)}}
            return response.json()

        return list(await asyncio.gather(*(one(m, p) for m, p in zip(conversations, params, strict=True))))


def chat_all(url: str, model: str, conversations: list[list[dict]], params: dict | list[dict],
             timeout: float = 600) -> list[dict]:
    """The engine's chat.completion (or ``{"error": …}``) for each conversation, sent concurrently; ``params`` are
    sampling parameters for all of them, or one dict per conversation."""
    per = params if isinstance(params, list) else [params] * len(conversations)
    return asyncio.run(_chat_all(url, model, conversations, per, timeout))
