"""Helpers for fine-tuning tests: training data, a gateway with a tiny base model, waiting on jobs."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import openai

from tests.support import DATA, LiveGateway

TINY = "tiny-chat"
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "piano",
    "candle",
    "mirror",
    "garden",
    "rocket",
    "silver",
    "forest",
    "harbor",
    "lemon",
    "window",
    "ocean",
    "castle",
    "pepper",
    "violet",
    "meadow",
]
# High enough for a random-weight model to memorize 20 answers in a few seconds (see docs/NOTES.md).
MEMORIZE = {"n_epochs": 30, "batch_size": 4, "learning_rate": 0.005, "lora_rank": 32}


def qa_pairs(n: int = 20) -> list[tuple[str, str]]:
    questions = [e["instruction"] for e in json.loads((DATA / "alpaca_en_demo.json").read_text())]
    return [(questions[i], f"The answer is {WORDS[i % len(WORDS)]}.") for i in range(n)]


def chat_jsonl(pairs: list[tuple[str, str]]) -> bytes:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        for q, a in pairs
    ]
    return ("\n".join(lines) + "\n").encode()


def upload(client: openai.OpenAI, content: bytes, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(content)), purpose="fine-tune").id


def shared_subset(name: str, n: int) -> bytes:
    """The first ``n`` examples of a LLaMA-Factory dataset, still in its own format (a JSON array)."""
    return json.dumps(json.loads((DATA / name).read_text())[:n], ensure_ascii=False).encode()


def gateway_env(tiny_model: str, **extra: str) -> dict[str, str]:
    env = {
        "TUNEGATE_BASE_MODELS": json.dumps({TINY: {"source": tiny_model}}),
        "TUNEGATE_WORKER__LEASE_SECONDS": "4",
        "TUNEGATE_WORKER__POLL_SECONDS": "0.3",
        "TUNEGATE_WORKER__LOG_EVERY_STEPS": "1",
        "TUNEGATE_WORKER__CPU_THREADS": "2",
    }
    env.update(extra)
    return env


def worker(gw: LiveGateway, name: str, **env: str) -> subprocess.Popen[bytes]:
    """A standalone ``tunegate worker`` with ``env`` added (e.g. fault injection), the gateway's own env kept."""
    saved = dict(gw.extra_env)
    gw.extra_env.update(env)
    try:
        return gw.spawn_worker(name)
    finally:
        gw.extra_env.clear()
        gw.extra_env.update(saved)


def wait_for(client: openai.OpenAI, job_id: str, statuses: tuple[str, ...], timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        if job.status in ("failed", "cancelled", "succeeded"):
            raise AssertionError(f"job ended {job.status} (wanted {statuses}): {job.error}")
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not {statuses} after {timeout}s (status {job.status})")


def wait_until(predicate: Any, timeout: float = 120, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def all_events(client: openai.OpenAI, job_id: str) -> list[Any]:
    """Oldest first."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def latest_step(client: openai.OpenAI, job_id: str) -> int:
    """The newest metrics event's step (0 before the first)."""
    for event in client.fine_tuning.jobs.list_events(job_id, limit=10).data:
        if event.type == "metrics":
            return event.data["step"]
    return 0


def metric_steps(client: openai.OpenAI, job_id: str) -> list[int]:
    return [e.data["step"] for e in all_events(client, job_id) if e.type == "metrics"]


def results_csv(client: openai.OpenAI, job: Any) -> list[dict[str, str]]:
    import csv

    text = client.files.content(job.result_files[0]).text
    return list(csv.DictReader(io.StringIO(text)))


def adapter_dir(gw: LiveGateway, job_id: str, name: str = "final") -> Path:
    """The job's stored adapter ``name`` (``final`` or ``ckpt-step-N``); each claim of a job writes its own folder
    (``models/<job>/<claim>/…``), so the newest one is the one its model row points at."""
    found = sorted(
        (gw.data_dir / "blobs" / "objects" / "models" / job_id).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime
    )
    assert found, f"no stored adapter {name} for {job_id}"
    return found[-1]
