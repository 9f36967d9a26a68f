"""Grader throughput on CPU, and an eval run through the engine vs the same items sent one by one.

    .venv/bin/python bench/graders.py [--rows 2000] [--items 1000] [--max-tokens 8] [--skip-run]

1. Items/s of each grader type through ``finetune.graders.engine.GraderEngine`` (what eval runs use), on --rows
   (output, reference) pairs made from alpaca_zh/en outputs: string_check, every text_similarity metric (cosine:
   all-MiniLM-L6-v2 in its helper process), a trivial python grader through the sandbox pool (batched per round trip;
   the issue's target: ≥ 200 items/s on 2 cores), and a multi grader (string_check + fuzzy_match + formula).
2. A --items ``completions`` eval run (text_similarity rouge_l) over SmolLM2-135M-Instruct through `tunegate serve`
   (its vLLM engine batches the run's concurrent requests) vs the same prompts sent one at a time through
   ``client.chat.completions`` and graded one at a time — wall time of each, items/s, and the speedup.
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

from finetune.graders.embeddings import Embedder  # noqa: E402
from finetune.graders.engine import GraderEngine  # noqa: E402
from finetune.graders.sandbox import SandboxPool  # noqa: E402
from finetune.graders.similarity import METRICS  # noqa: E402
from finetune.graders.templates import sample_namespace  # noqa: E402
from finetune.graders.validate import check  # noqa: E402
from tests.support import DATA, LiveGateway  # noqa: E402

REF = {"input": "{{sample.output_text}}", "reference": "{{item.reference}}"}


def pairs(n: int) -> list[tuple[str, str]]:
    outputs = [
        e["output"][:200]
        for name in ("alpaca_zh_demo.json", "alpaca_en_demo.json")
        for e in json.loads((DATA / name).read_text())
    ]
    return [(outputs[i % len(outputs)], outputs[(i * 7 + 1) % len(outputs)]) for i in range(n)]


def graders() -> dict[str, dict]:
    out = {"string_check eq": {"type": "string_check", "name": "s", "operation": "eq", **REF}}
    out |= {
        f"text_similarity {m}": {"type": "text_similarity", "name": m, "evaluation_metric": m, **REF} for m in METRICS
    }
    out["python (trivial, sandboxed)"] = {
        "type": "python",
        "name": "p",
        "source": "def grade(sample, item):\n    return float(sample['output_text'] == item['reference'])\n",
    }
    out["multi (string_check + fuzzy_match)"] = {
        "type": "multi",
        "name": "m",
        "calculate_output": "0.5 * a + 0.5 * b",
        "graders": {"a": out["string_check eq"], "b": out["text_similarity fuzzy_match"]},
    }
    return out


def grader_rates(rows: int) -> dict[str, float]:
    data = [(sample_namespace(o), {"reference": r}) for o, r in pairs(rows)]
    pool, embed = SandboxPool(), Embedder()
    engine = GraderEngine(sandbox=pool, embed=embed)
    rates = {}
    try:
        for name, grader in graders().items():
            grader = check(grader, "grader", lambda model: None)
            engine.grade(grader, data[:8], "bench")  # warm: jieba, the embedding model, a sandbox worker
            start = time.perf_counter()
            for i in range(0, len(data), 32):  # the eval runner's batch
                engine.grade(grader, data[i : i + 32], "bench")
            rates[name] = len(data) / (time.perf_counter() - start)
            print(f"{name:40s} {rates[name]:10.0f} items/s", flush=True)
    finally:
        pool.close()
        embed.close()
    return rates


def run_vs_one_by_one(items: int, max_tokens: int) -> dict[str, float]:
    from finetune.graders.similarity import text_similarity
    from storage.settings import DEFAULT_BASE_MODEL
    from tests.finetune_support import wait_until
    from tests.serving_support import wait_engines_ready

    prompts = [(o[:120], r) for o, r in pairs(items)]
    work = Path(tempfile.mkdtemp(prefix="tunegate-bench-graders-"))
    gw = LiveGateway(
        work,
        f"sqlite:///{work / 'tunegate.db'}",
        TUNEGATE_SERVING__LOCAL_ENGINES="true",
        TUNEGATE_SERVING__MAX_MODEL_LEN="2048",
    )
    gw.start()
    try:
        wait_engines_ready(gw, 1200)
        client = gw.client(gw.new_org_key("bench")[2])
        client.timeout = 600
        evaluation = client.evals.create(
            data_source_config={"type": "custom", "item_schema": {"type": "object"}},
            testing_criteria=[
                {
                    "type": "text_similarity",
                    "name": "rouge",
                    "evaluation_metric": "rouge_l",
                    "pass_threshold": 0.5,
                    **REF,
                }
            ],
        )
        content = [{"item": {"prompt": p, "reference": r}} for p, r in prompts]
        source = {
            "type": "completions",
            "model": DEFAULT_BASE_MODEL,
            "source": {"type": "file_content", "content": content},
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.prompt}}"}]},
            "sampling_params": {"max_completion_tokens": max_tokens, "temperature": 0},
        }
        start = time.perf_counter()
        run = client.evals.runs.create(evaluation.id, data_source=source)
        done = wait_until(
            lambda: (
                (r := client.evals.runs.retrieve(run.id, eval_id=evaluation.id)).status in ("completed", "failed") and r
            ),
            3600,
            "the run",
        )
        run_s = time.perf_counter() - start
        assert done.status == "completed" and done.result_counts.total == items, done
        start = time.perf_counter()
        for prompt, reference in prompts:
            answer = client.chat.completions.create(
                model=DEFAULT_BASE_MODEL,
                max_tokens=max_tokens,
                temperature=0,
                messages=[{"role": "user", "content": prompt}],
            )
            text_similarity("rouge_l", [(answer.choices[0].message.content or "", reference)])
        single_s = time.perf_counter() - start
    finally:
        gw.stop()
    return {
        "items": items,
        "max_tokens": max_tokens,
        "eval_run_s": run_s,
        "one_by_one_s": single_s,
        "eval_run_items_per_s": items / run_s,
        "one_by_one_items_per_s": items / single_s,
        "speedup": single_s / run_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--skip-run", action="store_true", help="only the grader rates (no engine)")
    args = parser.parse_args()
    report: dict[str, object] = {"grader_items_per_s": grader_rates(args.rows)}
    if not args.skip_run:
        report["completions_run"] = run_vs_one_by_one(args.items, args.max_tokens)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
