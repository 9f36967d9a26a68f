"""The CUDA check of the fine-tuning recipe, in one command (``bench/gpu_check.sh``; issue 18).

On the GPU machine (no network: nothing is downloaded), for random-weight models built from the configs in
``bench/configs`` (Qwen2.5-1.5B- and 7B-shaped), the first ``--examples`` rows of ``alpaca_zh_demo.json``, bf16,
LoRA r8 on all linear layers, batch ``--batch-size``, cutoff ``--cutoff-len``, one epoch, each run in its own
process (clean peak memory), through ``finetune/recipe`` itself:

    baseline         plain HF Trainer + PEFT, every batch padded to its longest example (what tutorials do)
    tunegate         the recipe's defaults (length-grouped batches, LM head at labelled positions only,
                     gradient_checkpointing "auto")
    tunegate-packed  + packing: padding-free rows, position ids restarting per example
    tunegate-ckpt-on / tunegate-ckpt-off   (the 7B shape) gradient checkpointing forced on / off

Reported: non-padding tokens/s after ``--warmup-steps``, MFU, peak CUDA memory (``max_memory_allocated``),
mean training loss. MFU = 4·N·tokens/s / the GPU's dense bf16 peak, N = parameters of the base model's linear
layers (attention and MLP projections of every layer plus the LM head; embeddings excluded): a frozen base costs
2N FLOPs per token forward and 2N backward (activation gradients only: no weight gradients). Not counted: LoRA's
own FLOPs (< 1 %), attention's score and value products, recomputation under gradient checkpointing; the LM head
is counted at every token although tunegate computes it only at labelled ones — model FLOPs, not executed ones.

    bench/gpu_check.sh                                   # on the GPU machine
    bench/gpu_check.sh --device cpu --steps 2 --shapes tiny   # the dry-run (tests/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
CARRIED = REPO / ".cache" / "gpu_check"  # what bench/gpu_check.sh --prepare puts there for the GPU machine
PEAK_BF16_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
VARIANTS = ("baseline", "tunegate", "tunegate-packed", "tunegate-ckpt-on", "tunegate-ckpt-off")
CKPT_SHAPES = ("qwen2.5-7b", "tiny")  # shapes that also run checkpointing forced on and off


def linear_parameters(config: dict) -> int:
    """Parameters of every linear layer of a Llama/Qwen2-style decoder plus its LM head (biases included)."""
    h, i, layers, vocab = (
        config["hidden_size"],
        config["intermediate_size"],
        config["num_hidden_layers"],
        config["vocab_size"],
    )
    kv = config.get("num_key_value_heads", config["num_attention_heads"]) * h // config["num_attention_heads"]
    bias = (h + 2 * kv) if config.get("model_type") == "qwen2" else 0
    return layers * (2 * h * h + 2 * h * kv + 3 * h * i + bias) + vocab * h


def build_model(shape: str, tokenizer_dir: str, target: Path, device: str) -> Path:
    """A random-weight model of ``bench/configs/<shape>.json`` with the given tokenizer, saved as an HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = json.loads((REPO / "bench" / "configs" / f"{shape}.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec["vocab_size"] = max(spec["vocab_size"], len(tokenizer))
    config = AutoConfig.for_model(**spec)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def run_variant(args: argparse.Namespace) -> dict:
    """The child: one variant on one model (CUDA memory counted from zero in this process)."""
    import torch
    from stepstats import step_stats

    stats = step_stats(args.warmup_steps)
    with tempfile.TemporaryDirectory() as tmp:
        if args.variant == "baseline":
            from train import run_baseline

            run_baseline(
                args.model,
                Path(args.train_file),
                args.batch_size,
                Path(tmp),
                args.device,
                cutoff_len=args.cutoff_len,
                timer=stats,
                logging_steps=args.log_every,
            )
            extra = {"checkpointing": False}
        else:
            extra = run_tunegate(args, stats, Path(tmp))
    result = {"variant": args.variant, **extra, **stats.result()}
    if args.device == "cuda":
        result["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def run_tunegate(args: argparse.Namespace, stats: object, work: Path) -> dict:
    from finetune import hyperparams
    from finetune.device import model_footprint, native_bf16
    from finetune.recipe.callbacks import SilentReporter
    from finetune.recipe.run import TrainSpec, train

    checkpointing = {"tunegate-ckpt-on": True, "tunegate-ckpt-off": False}.get(args.variant, "auto")
    hp = hyperparams.resolve(
        hyperparams.Hyperparameters(
            n_epochs=1,
            batch_size=args.batch_size,
            cutoff_len=args.cutoff_len,
            packing=args.variant == "tunegate-packed",
            gradient_checkpointing=checkpointing,
        ),
        n_examples=args.examples,
        method="supervised",
        device=args.device,
        bf16_ok=native_bf16(args.device),
        footprint=model_footprint(args.device, args.model),  # as a job's child process resolves them
    )
    train(
        TrainSpec(
            "supervised",
            args.model,
            None,
            hp,
            42,
            Path(args.train_file),
            None,
            work,
            args.device,
            log_every=args.log_every,
            extra_callbacks=(stats,),
        ),
        SilentReporter(),
    )
    return {"checkpointing": hp.gradient_checkpointing, "precision": hp.precision}


def child_command(args: argparse.Namespace, *extra: str) -> list[str]:
    return [
        sys.executable,
        __file__,
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--cutoff-len",
        str(args.cutoff_len),
        "--warmup-steps",
        str(args.warmup_steps),
        "--log-every",
        str(args.log_every),
        "--tokenizer",
        args.tokenizer,
        *extra,
    ]


def child(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode or line is None:
        return {"error": (out.stderr or out.stdout)[-3000:]}
    return json.loads(line[7:])


def table(rows: list[dict], device: str) -> str:
    head = [
        "| shape | variant | tokens/s | vs baseline | MFU | peak CUDA GiB | mean loss | checkpointing |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    base = {r["shape"]: r["tokens_per_s"] for r in rows if r.get("variant") == "baseline" and "tokens_per_s" in r}
    for r in rows:
        if "error" in r:
            head.append(f"| {r['shape']} | {r['variant']} | failed: {r['error'].strip().splitlines()[-1][:120]} |||||")
            continue
        ratio = r["tokens_per_s"] / base[r["shape"]] if r["shape"] in base else float("nan")
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "—"
        head.append(
            f"| {r['shape']} | {r['variant']} | {r['tokens_per_s']:,.0f} | {ratio:.2f}× | {mfu} | "
            f"{r.get('peak_cuda_gib', '—')} | {r['mean_loss']:.4f} | {'on' if r['checkpointing'] else 'off'} |"
        )
    gpu = next((r["gpu"] for r in rows if "gpu" in r), device)
    return f"Device: {gpu}.\n\n" + "\n".join(head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    parser.add_argument("--shapes", default="qwen2.5-1.5b,qwen2.5-7b", help="configs in bench/configs")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--examples", type=int, default=1000, help="rows of alpaca_zh_demo (one epoch)")
    parser.add_argument("--steps", type=int, default=None, help="instead of --examples: steps × batch rows")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cutoff-len", type=int, default=1024)
    parser.add_argument("--warmup-steps", type=int, default=None, help="not timed (default: 5 on CUDA, 0 on CPU)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--tokenizer", default=str(CARRIED / "tokenizer"), help="a tokenizer folder (no hub)")
    parser.add_argument("--data", default=None, help="alpaca_zh_demo.json (default: carried, else ../shared/data)")
    parser.add_argument("--out", default=os.environ.get("OUT") or ".", help="where gpu_check.{md,jsonl} go")
    parser.add_argument("--write-docs", action="store_true", help="replace the gpu section of docs/benchmarks.md")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--train-file", help=argparse.SUPPRESS)
    parser.add_argument("--build", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.warmup_steps is None:
        args.warmup_steps = 5 if args.device == "cuda" else 0
    if args.steps:
        args.examples = args.steps * args.batch_size
        args.warmup_steps = min(args.warmup_steps, args.steps - 1)
        args.log_every = min(args.log_every, args.steps)
    if args.build:  # child: write a random model
        build_model(args.build, args.tokenizer, Path(args.model), args.device)
        return
    if args.variant:  # child: train one variant
        print("RESULT " + json.dumps(run_variant(args)), flush=True)
        return
    orchestrate(args)


def orchestrate(args: argparse.Namespace) -> None:
    from report import replace_section
    from train import DATA, examples_file

    source = Path(args.data) if args.data else (CARRIED / DATA.name if (CARRIED / DATA.name).is_file() else DATA)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        train_file = examples_file(args.examples, Path(tmp), source)
        for shape in args.shapes.split(","):
            model = Path(tmp) / shape
            built = subprocess.run([*child_command(args, "--build", shape, "--model", str(model))])
            if built.returncode:
                sys.exit(f"building {shape} failed")
            config = json.loads((model / "config.json").read_text())
            variants = [v for v in args.variants.split(",") if shape in CKPT_SHAPES or "ckpt" not in v]
            for variant in variants:
                result = {
                    "shape": shape,
                    **child(
                        [
                            *child_command(
                                args,
                                "--variant",
                                variant,
                                "--model",
                                str(model),
                                "--train-file",
                                str(train_file),
                                "--examples",
                                str(args.examples),
                            )
                        ]
                    ),
                }
                peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in result.get("gpu", "")), None)
                if peak and "tokens_per_s" in result:
                    result["mfu"] = round(4 * linear_parameters(config) * result["tokens_per_s"] / peak, 4)
                rows.append(result)
                print(
                    json.dumps(
                        {k: v for k, v in result.items() if k != "error"}
                        | ({"error": result["error"][-400:]} if "error" in result else {})
                    ),
                    flush=True,
                )
                with open(out / "gpu_check.jsonl", "a") as fh:
                    fh.write(json.dumps(result) + "\n")
            subprocess.run(["rm", "-rf", str(model)])
    report = table(rows, args.device)
    (out / "gpu_check.md").write_text(report + "\n")
    print("\n" + report)
    if args.write_docs:
        replace_section(REPO / "docs" / "benchmarks.md", "gpu", report)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
