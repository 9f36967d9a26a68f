"""The README's RFT curve: GRPO on the tiny random test model (tests/tiny_model.py) with a ``python`` grader that
rewards an answer FORMAT — a reply opening as a numbered list item ("1." …: 1.0; a leading digit: 0.5; any digit:
0.25). The hyperparameters of tests/test_rft.py; the recipe run directly (no gateway), the grader sandboxed as in a
job. Prints the metrics of every step.

    flock /tmp/tg-heavy.lock .venv/bin/python bench/rft_format.py [--seed 3] [--lr 2e-2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NUMBERED = """import re
def grade(sample, item):
    out = sample["output_text"].lstrip()
    if re.match(r"\\d+\\.", out):
        return 1.0
    if out[:1].isdigit():
        return 0.5
    return 0.25 if any(c.isdigit() for c in out) else 0.0
"""
GRADER = {"type": "python", "name": "numbered", "source": NUMBERED}


class Printer:
    def event(self, message: str, level: str = "info") -> None:
        print("EVENT", message, flush=True)

    def metrics(self, step: int, total: int, data: dict) -> None:
        print("METRICS", step, total, json.dumps(data), flush=True)

    def checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        print("CKPT", step, flush=True)

    def progress(self, trained: int, estimated: int) -> None:
        pass

    def stop_requested(self) -> None:
        return None


def main() -> None:
    from bench.rft import tiny_model
    from finetune import hyperparams
    from finetune.recipe.run import TrainSpec, train
    from tests.support import DATA

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rft-format-"))
    questions = [e["instruction"] for e in json.loads((DATA / "alpaca_en_demo.json").read_text())]
    train_file, valid_file = work / "train.jsonl", work / "valid.jsonl"
    for path, chosen in ((train_file, questions[:32]), (valid_file, questions[100:108])):
        path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n" for q in chosen))
    raw = {
        "n_epochs": 5,
        "batch_size": 8,
        "learning_rate": args.lr,
        "lr_scheduler_type": "constant",
        "compute_multiplier": 0.5,
        "eval_interval": 5,
        "eval_samples": 8,
        "max_completion_length": 8,
        "lora_rank": 16,
    }
    hp = hyperparams.resolve(
        hyperparams.parse(raw, "reinforcement", "hp"),
        n_examples=32,
        method="reinforcement",
        device="cpu",
        bf16_ok=False,
    )
    spec = TrainSpec(
        method="reinforcement",
        base_path=tiny_model(work),
        chat_template=None,
        hp=hp,
        seed=args.seed,
        train_file=train_file,
        valid_file=valid_file,
        work_dir=work / "job",
        device="cpu",
        log_every=1,
        cpu_threads=2,
        grader=GRADER,
        owner="bench",
    )
    started = time.time()
    outcome = train(spec, Printer())
    print("OUT", outcome, round(time.time() - started, 1), flush=True)


if __name__ == "__main__":
    main()
