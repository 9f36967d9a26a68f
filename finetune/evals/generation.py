"""Generation for evaluations, through a serving engine (vLLM): batched by the engine, concurrent from here.

The worker finds a ready engine of the base model in the engine registry the gateways publish (its address and
key: ``storage.engines.EngineAddress``), loads the adapter there (``finetune.evals.engine_adapters``: the gateway's
engine calls and its ``max_adapters_per_engine``) and sends the prompts concurrently, greedy. No engine running →
``NoEngine`` (the caller reports that the scores were skipped). Each body is built by ``serving.request_body`` from
the same allow-list as a caller's chat request: sampling parameters cannot choose the model (``model``,
``lora_request``, … are refused before anything is sent). A ``UsageSink`` records the tokens against the organization
that asked.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from serving import request_body
from serving.placement import engine_for
from storage.db import Database
from storage.engines import EngineAddress, engine_url
from storage.ids import now
from storage.settings import RequestLimits
from storage.tables import UsageRecord
from storage.usage import UsageStore

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


@dataclass(frozen=True)
class UsageSink:
    """Where generation done for an organization is accounted: one ``usage_records`` row per answer, under
    ``endpoint`` (``evals.runs``, ``fine_tuning.jobs``) and the run's or job's id; ``api_key_id`` names the source,
    as no API key made these requests."""

    db: Database
    organization_id: str
    model: str  # the caller's id (a fine-tuned model's ft:… name, or a base model)
    endpoint: str
    reference: str  # the eval run's or job's id

    def __call__(self, answers: list[dict]) -> None:
        rows = [
            UsageRecord(
                organization_id=self.organization_id,
                api_key_id=self.endpoint,
                model=self.model,
                endpoint=self.endpoint,
                prompt_tokens=int(u.get("prompt_tokens") or 0),
                completion_tokens=int(u.get("completion_tokens") or 0),
                request_id=self.reference,
                created_at=now(),
            )
            for a in answers
            if isinstance(u := a.get("usage"), dict)
        ]
        UsageStore(self.db).add_many(rows)


def generate(
    engines: list[EngineAddress],
    model: str,
    samples: list[Sample],
    *,
    max_tokens: int = 512,
    timeout: float = 600,
    usage: UsageSink | None = None,
) -> list[str]:
    """Greedy answers, each with a budget of min(max_tokens, 16 + 2 × its reference's length)."""
    if not engines:
        raise NoEngine("no serving engine for this base model is running")
    params = [{"max_tokens": min(max_tokens, 16 + 2 * len(s.reference)), "temperature": 0} for s in samples]
    engine = engine_for(model, engines, engine_url)  # an adapter's home replica (where it was loaded)
    answers = chat_all(engine, model, [s.messages for s in samples], params, timeout, usage=usage)
    failed = next((a["error"]["message"] for a in answers if "error" in a), None)
    if failed is not None:
        raise RuntimeError(f"generation failed: {failed}")
    return [a["choices"][0]["message"]["content"] or "" for a in answers]


async def post(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[int | None, dict]:
    """One request to an engine (``http`` has its address and key): (its status, its JSON answer), or an
    ``{"error": {code, message}}`` of tunegate's (status None: the engine could not be reached). Eval runs and
    batches send every request through here."""
    try:
        response = await http.post(path, json=body)
    except httpx.HTTPError as exc:
        return None, {"error": {"code": "engine_error", "message": f"{type(exc).__name__}: {exc}"}}
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        return response.status_code, {"error": {"code": "generation_failed", "message": str(message)}}
    return 200, response.json()


def engine_client(engine: EngineAddress, timeout: float, connections: int = CONCURRENCY) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=engine.url, headers=engine.auth, timeout=timeout, limits=httpx.Limits(max_connections=connections)
    )


async def _chat_all(engine: EngineAddress, bodies: list[dict[str, Any]], timeout: float) -> list[dict]:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with engine_client(engine, timeout) as http:

        async def one(body: dict[str, Any]) -> dict:
            async with limit:
                return (await post(http, "/v1/chat/completions", body))[1]

        return list(await asyncio.gather(*(one(body) for body in bodies)))


def chat_all(
    engine: EngineAddress,
    model: str,
    conversations: list[list[dict]],
    params: dict | list[dict],
    timeout: float = 600,
    *,
    usage: UsageSink | None = None,
    limits: RequestLimits | None = None,
    param_prefix: str = "sampling_params",
) -> list[dict]:
    """The engine's chat.completion (or ``{"error": …}``) for each conversation, sent concurrently; ``params`` are
    sampling parameters for all of them, or one dict per conversation, checked first (a field outside the allow-list
    raises ``InvalidRequest`` naming ``<param_prefix>.<field>``, and nothing is sent). ``model`` is the engine-side
    name; ``usage`` (optional) records what the answers used."""
    per = params if isinstance(params, list) else [params] * len(conversations)
    limits = limits or RequestLimits()
    bodies = [
        request_body.generation(messages, extra, limits, param_prefix).body(model)
        for messages, extra in zip(conversations, per, strict=True)
    ]
    answers = asyncio.run(_chat_all(engine, bodies, timeout))
    if usage is not None:
        usage(answers)
    return answers
