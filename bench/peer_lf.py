"""One LLaMA-Factory training run for ``bench/peer.py``, inside LLaMA-Factory's own venv (no tunegate imports).

    <llamafactory venv>/bin/python bench/peer_lf.py --model DIR --data alpaca.json --precision fp32 ...

Measured with ``bench/stepstats.py``, the callback tunegate's runs use too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from stepstats import step_stats  # bench/ is this script's directory, so on sys.path

# SmolLM2's own template's default system prompt (LLaMA-Factory's "smollm2" template ends it with a period)
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def text_only_torchaudio() -> None:
    """LLaMA-Factory 0.9.5 imports torchaudio unconditionally (data/mm_plugin.py) but text SFT never calls it;
    the torchaudio builds that match a CPU torch break ``import transformers`` (docs/NOTES.md), so an empty
    module stands in for it in this process."""
    import importlib.machinery
    import types

    if "torchaudio" not in sys.modules:
        module = types.ModuleType("torchaudio")
        module.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="alpaca-format JSON array")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cutoff-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    text_only_torchaudio()
    import torch
    from llamafactory.train.tuner import run_exp

    if args.threads:
        torch.set_num_threads(args.threads)
    stats = step_stats()
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(tmp) / "data"
        dataset_dir.mkdir()
        (dataset_dir / "peer.json").write_bytes(Path(args.data).read_bytes())
        (dataset_dir / "dataset_info.json").write_text(json.dumps({"peer": {"file_name": "peer.json"}}))
        run_exp(
            {
                "model_name_or_path": args.model,
                "stage": "sft",
                "do_train": True,
                "finetuning_type": "lora",
                "lora_rank": 8,
                "lora_alpha": 16,
                "lora_dropout": 0.0,
                "lora_target": "all",
                "dataset": "peer",
                "dataset_dir": str(dataset_dir),
                "template": "smollm2",
                "default_system": SMOLLM2_SYSTEM,
                "cutoff_len": args.cutoff_len,
                "overwrite_cache": True,
                "output_dir": str(Path(tmp) / "out"),
                "logging_steps": 1,
                "save_strategy": "no",
                "plot_loss": False,
                "per_device_train_batch_size": args.batch_size,
                "gradient_accumulation_steps": 1,
                "learning_rate": 1e-4,
                "num_train_epochs": 1.0,
                "lr_scheduler_type": "cosine",
                "warmup_ratio": 0.0,
                "bf16": args.precision == "bf16",
                "use_cpu": not torch.cuda.is_available(),  # bf16 on CPU needs it
                "seed": 42,
                "report_to": "none",
                "disable_tqdm": True,
                "include_num_input_tokens_seen": "non_padding",
            },
            callbacks=[stats],
        )
    print("RESULT " + json.dumps({"stack": "llamafactory", "precision": args.precision, **stats.result()}), flush=True)


if __name__ == "__main__":
    main()
