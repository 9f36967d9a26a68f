"""The README's RFT curves: GRPO with a ``python`` grader that rewards an answer FORMAT; the recipe run directly
(no gateway), the grader sandboxed as in a job. Prints the metrics of every step.

``--task numbered`` (default) on the tiny random test model (tests/tiny_model.py): a reply opening as a numbered
list item ("1." …: 1.0; a leading digit: 0.5; any digit: 0.25), the hyperparameters of tests/test_rft.py.

``--task label --model smollm2`` on SmolLM2-135M-Instruct: a sentiment CATEGORY LABEL as the whole answer — 1.0
for a reply that is just the right label ("Positive."), 0.25 for the right label inside a longer reply (and not
the other one), 0 otherwise — over short reviews (32 for training, 8 for validation, written below: no download).

    flock /tmp/tg-heavy.lock .venv/bin/python bench/rft_format.py [--seed 3] [--lr 2e-2]
    flock /tmp/tg-heavy.lock .venv/bin/python bench/rft_format.py --task label --model smollm2 --lr 5e-4 --epochs 3 \\
        --batch-size 4 --completion-tokens 8 --eval-interval 6
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
LABEL = """import re
def grade(sample, item):
    words = re.findall(r"[a-z]+", sample["output_text"].lower())
    if words == [item["label"]]:
        return 1.0
    other = "negative" if item["label"] == "positive" else "positive"
    return 0.25 if item["label"] in words and other not in words else 0.0
"""
GRADERS = {
    "numbered": {"type": "python", "name": "numbered", "source": NUMBERED},
    "label": {"type": "python", "name": "label", "source": LABEL},
}
LABEL_PROMPT = "Is the sentiment of this review positive or negative? Answer with one word.\n\nReview: {review}"
# Short reviews, alternating positive / negative; the last 8 are the validation set.
REVIEWS = [
    ("The pasta was perfect and the staff were lovely.", "positive"),
    ("Cold food, rude waiter, never again.", "negative"),
    ("This phone's battery lasts two full days. Great buy.", "positive"),
    ("The screen cracked within a week.", "negative"),
    ("A warm, funny film that I would watch again tomorrow.", "positive"),
    ("Two hours of my life I will not get back.", "negative"),
    ("The hotel room was spotless and the view was stunning.", "positive"),
    ("The shower was broken and nobody came to fix it.", "negative"),
    ("Fast delivery, and the shoes fit beautifully.", "positive"),
    ("The package arrived late and half of it was missing.", "negative"),
    ("My kids loved this game and so did I.", "positive"),
    ("The instructions made no sense and the parts did not fit.", "negative"),
    ("Best coffee in town, friendly baristas too.", "positive"),
    ("The coffee tasted burnt and the cup leaked.", "negative"),
    ("The course was clear, practical and worth every cent.", "positive"),
    ("The lectures were boring and the teacher never answered questions.", "negative"),
    ("A beautiful garden, calm and well looked after.", "positive"),
    ("The park was dirty and full of broken glass.", "negative"),
    ("This blender is powerful and easy to clean.", "positive"),
    ("The blender stopped working after three uses.", "negative"),
    ("The concert was amazing, the band played for three hours.", "positive"),
    ("The sound was awful and we could not see the stage.", "negative"),
    ("Comfortable seats and a smooth, quiet train ride.", "positive"),
    ("The train was two hours late and the heating was off.", "negative"),
    ("The book kept me up all night; a wonderful story.", "positive"),
    ("The plot was dull and the ending made no sense.", "negative"),
    ("Our guide was knowledgeable and made the tour fun.", "positive"),
    ("The tour was overpriced and rushed.", "negative"),
    ("Soft towels, a great breakfast, and helpful staff.", "positive"),
    ("The room smelled of smoke and the bed was hard.", "negative"),
    ("The app is simple, quick and does exactly what I need.", "positive"),
    ("The app crashes every time I open it.", "negative"),
    ("Delicious cake and lovely service, highly recommended.", "positive"),
    ("The soup was salty and the bread was stale.", "negative"),
    ("The headphones sound rich and feel light.", "positive"),
    ("One earbud died after a month.", "negative"),
    ("A friendly gym with clean showers and good equipment.", "positive"),
    ("The gym was crowded and half the machines were broken.", "negative"),
    ("The repair was quick and the price was fair.", "positive"),
    ("They charged me twice and never fixed the problem.", "negative"),
]


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
    from bench.rft import default_model, tiny_model
    from finetune import hyperparams
    from finetune.recipe.run import TrainSpec, train
    from tests.support import DATA

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-2)
    parser.add_argument("--task", choices=tuple(GRADERS), default="numbered")
    parser.add_argument("--model", default="tiny", help="'tiny' (default), 'smollm2', or an HF model directory")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of 32 prompts (32 / --batch-size steps each)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    parser.add_argument("--eval-interval", type=int, default=5, help="steps between validation rewards")
    parser.add_argument("--completion-tokens", type=int, default=None, help="default: 8 (numbered), 16 (label)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rft-format-"))
    train_file, valid_file = work / "train.jsonl", work / "valid.jsonl"
    if args.task == "label":
        rows = [
            {"messages": [{"role": "user", "content": LABEL_PROMPT.format(review=r)}], "label": label}
            for r, label in REVIEWS
        ]
        splits = ((train_file, rows[:32]), (valid_file, rows[32:40]))
    else:
        questions = [e["instruction"] for e in json.loads((DATA / "alpaca_en_demo.json").read_text())]
        rows = [{"messages": [{"role": "user", "content": q}]} for q in questions]
        splits = ((train_file, rows[:32]), (valid_file, rows[100:108]))
    for path, chosen in splits:
        path.write_text("".join(json.dumps(row) + "\n" for row in chosen))
    raw = {
        "n_epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "lr_scheduler_type": "constant",
        "compute_multiplier": 0.5,
        "eval_interval": args.eval_interval,
        "eval_samples": 8,
        "max_completion_length": args.completion_tokens or (16 if args.task == "label" else 8),
        "lora_rank": 16,
    }
    hp = hyperparams.resolve(
        hyperparams.parse(raw, "reinforcement", "hp"),
        n_examples=32,
        method="reinforcement",
        device="cpu",
        bf16_ok=False,
    )
    model = {"tiny": lambda: tiny_model(work), "smollm2": default_model}.get(args.model, lambda: args.model)()
    spec = TrainSpec(
        method="reinforcement",
        base_path=model,
        chat_template=None,
        hp=hp,
        seed=args.seed,
        train_file=train_file,
        valid_file=valid_file,
        work_dir=work / "job",
        device="cpu",
        log_every=1,
        cpu_threads=2,
        grader=GRADERS[args.task],
        owner="bench",
    )
    started = time.time()
    outcome = train(spec, Printer())
    print("OUT", outcome, round(time.time() - started, 1), flush=True)


if __name__ == "__main__":
    main()
