"""Training throughput: tunegate's recipe vs a plain HF Trainer + PEFT baseline that pads every batch.

    .venv/bin/python bench/train.py [--model DIR] [--examples 256] [--batch-size 8] [--threads N]

Same model, same examples (the first --examples of ../shared/data/alpaca_zh_demo.json), same LoRA (r=8,
all linear layers), same batch size, one epoch each, each variant in its own process (clean peak memory).
Reported: trained (non-padding) tokens per second of the training loop, the ratio, peak memory, and on CUDA
the model FLOPs utilization (4 · linear-layer parameters · tokens/s over the GPU's peak bf16 FLOPs: a frozen base
computes no weight gradients; bench/gpu_check.py states the convention in full).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
DATA = REPO.parent / "shared" / "data" / "alpaca_zh_demo.json"
VARIANTS = ("baseline", "tunegate", "tunegate-packed", "tunegate-fp32")


def default_model() -> str:
    from storage.model_sources import local_dir
    from storage.settings import DEFAULT_BASE_MODEL, Settings

    settings = Settings(data_dir=REPO / "data")
    return local_dir(DEFAULT_BASE_MODEL, settings.base_models[DEFAULT_BASE_MODEL], settings)


def examples_file(n: int, folder: Path, source: Path = DATA) -> Path:
    """The first n alpaca_zh examples, normalized to OpenAI chat JSONL as tunegate stores them."""
    from finetune.formats import normalize

    out = folder / "train.jsonl"
    with open(out, "wb") as fh:
        result = normalize(source, fh.write)
    lines = out.read_bytes().splitlines(keepends=True)[:n]
    out.write_bytes(b"".join(lines))
    assert not result.problems
    return out


def run_tunegate(
    model: str, data: Path, batch: int, work: Path, device: str, packing: bool = False, precision: str = "auto"
) -> object:
    """tunegate's defaults (length-grouped batches, LM head on labelled tokens only, bf16 where native), or
    with packing, or forced to fp32."""
    from finetune import hyperparams
    from finetune.device import native_bf16
    from finetune.recipe.callbacks import SilentReporter
    from finetune.recipe.run import TrainSpec, train

    hp = hyperparams.resolve(
        hyperparams.Hyperparameters(
            n_epochs=1, batch_size=batch, packing=packing, cutoff_len=1024, precision=precision
        ),
        n_examples=1000,
        method="supervised",
        device=device,
        bf16_ok=native_bf16(device),  # as a job's child does
    )
    from stepstats import step_stats

    timer = step_stats()
    train(
        TrainSpec("supervised", model, None, hp, 42, data, None, work, device, extra_callbacks=(timer,)),
        SilentReporter(),
    )
    return timer


def run_baseline(
    model_dir: str,
    data: Path,
    batch: int,
    work: Path,
    device: str,
    cutoff_len: int = 1024,
    timer: object | None = None,
    logging_steps: int = 10,
) -> object:
    """What the tutorials do: tokenize the rendered chat, mask the prompt, pad every batch, HF Trainer + PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for line in data.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:cutoff_len]
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": ([-100] * len(p_ids) + ids[len(p_ids) :])[: len(ids)],
            }
        )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, device_map={"": 0} if device == "cuda" else None
    )
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    from stepstats import step_stats

    timer = timer or step_stats()
    args = TrainingArguments(
        output_dir=str(work),
        num_train_epochs=1,
        per_device_train_batch_size=batch,
        learning_rate=1e-4,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to=[],
        seed=42,
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        callbacks=[timer],
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    ).train()
    return timer


def child(args: argparse.Namespace) -> None:
    import torch
    from gpu_check import PEAK_BF16_FLOPS, linear_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        if args.variant == "baseline":
            timer = run_baseline(args.model, Path(args.data), args.batch_size, Path(tmp), device)
        else:
            timer = run_tunegate(
                args.model,
                Path(args.data),
                args.batch_size,
                Path(tmp),
                device,
                packing=args.variant == "tunegate-packed",
                precision="fp32" if args.variant == "tunegate-fp32" else "auto",
            )
    result = {
        "variant": args.variant,
        "device": device,
        "steps": timer.steps,
        "tokens": timer.tokens,
        "seconds": round(timer.seconds, 2),
        "tokens_per_s": round(timer.tokens / timer.seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if device == "cuda":
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        n_params = linear_parameters(json.loads((Path(args.model) / "config.json").read_text()))
        if peak:
            result["mfu"] = round(4 * n_params * result["tokens_per_s"] / peak, 4)  # bench/gpu_check.py's convention
        result["gpu"] = name
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF model directory (default: SmolLM2-135M-Instruct from its wheel)")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset to run")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return child(args)
    model = args.model or default_model()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = examples_file(args.examples, Path(tmp))
        for variant in [v for v in VARIANTS if v in args.variants.split(",")]:
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--model",
                model,
                "--data",
                str(data),
                "--batch-size",
                str(args.batch_size),
            ] + (["--threads", str(args.threads)] if args.threads else [])
            out = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            )
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
            results[variant] = json.loads(line[7:])
            print(json.dumps(results[variant]), flush=True)
    device = next(iter(results.values()))["device"]
    print(f"\nmodel {model}\nexamples {args.examples}, batch size {args.batch_size}, device {device}")
    base = results.get("baseline", {}).get("tokens_per_s", float("nan"))
    extra = " mfu" if any("mfu" in r for r in results.values()) else ""
    print(f"{'variant':<16} {'tokens/s':>10} {'vs baseline':>12} {'seconds':>8} {'peak RSS MiB':>13}{extra}")
    for name, r in results.items():
        mfu = f" {r['mfu']:.3f}" if "mfu" in r else ""
        print(
            f"{name:<16} {r['tokens_per_s']:>10} {r['tokens_per_s'] / base:>11.2f}x {r['seconds']:>8} "
            f"{r['peak_rss_mib']:>13}{mfu}"
        )


if __name__ == "__main__":
    main()
