"""One LoRA fine-tune, top to bottom: setup → data → trainer → train (or resume) → save.

Supervised jobs use ``SFTTrainer`` (the HF Trainer + token accuracy) on tokenized, assistant-masked examples,
padded per batch or packed padding-free. DPO jobs use TRL's ``DPOTrainer`` with the LoRA-disabled model as
the reference. Reinforcement jobs use TRL's ``GRPOTrainer`` with the job's grader as the reward (``rft``). All
report through the same ``JobCallback``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from finetune.recipe.callbacks import JobCallback, Reporter

if TYPE_CHECKING:
    from finetune.hyperparams import Resolved


@dataclass
class TrainSpec:
    method: Literal["supervised", "dpo", "reinforcement"]
    base_path: str
    chat_template: str | None
    hp: Resolved
    seed: int
    train_file: Path
    valid_file: Path | None
    work_dir: Path  # trainer checkpoints (resume points) go to work_dir/trainer
    device: Literal["cuda", "cpu"]
    resume_from: Path | None = None  # a trainer checkpoint (see last_checkpoint) to continue from
    log_every: int | None = None
    cpu_threads: int | None = None
    extra_callbacks: tuple[Any, ...] = ()  # e.g. the benchmark's timer
    grader: dict[str, Any] | None = None  # reinforcement: the reward
    owner: str = ""  # reinforcement: the organization (its Python graders get their own sandboxes)
    reasoning: bool = False  # reinforcement: grade the answer after a reasoning model's </think>
    judge: Any = None  # reinforcement: model graders' judge (graders.engine.Judge), None: they score 0
    rollouts: Any = None  # reinforcement: a rollout_func (recipe.rollouts.EngineRollouts), None: HF generate
    response_format: dict[str, Any] | None = None  # reinforcement: json_schema/json_object constrain the rollouts
    init_adapter: Path | None = None  # a fine-tuned model's adapter to continue training (its LoRA shape is kept)


@dataclass
class Outcome:
    stopped: Literal["cancel", "pause"] | None
    adapter_dir: Path | None
    global_step: int
    trained_tokens: int


def train(spec: TrainSpec, reporter: Reporter) -> Outcome:
    _setup_process(spec)
    tokenizer, model = _setup_model(spec)
    train_set, valid_set, n_rows = _setup_data(spec, tokenizer, reporter)
    steps = _total_steps(n_rows, spec.hp)
    callback = _setup_callback(spec, reporter)
    with _setup_graders(spec) as engine:
        trainer = _setup_trainer(spec, model, tokenizer, train_set, valid_set, steps, callback, engine)
        for extra in spec.extra_callbacks:
            trainer.add_callback(extra)
        try:
            trainer.train(resume_from_checkpoint=str(spec.resume_from) if spec.resume_from else None)
        finally:
            if spec.rollouts is not None:
                spec.rollouts.close()  # the policy's last version leaves the engine
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    if callback.stopped:
        return Outcome(callback.stopped, None, trainer.state.global_step, tokens)
    final = spec.work_dir / "final"
    trainer.model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    return Outcome(None, final, trainer.state.global_step, tokens)


def _setup_process(spec: TrainSpec) -> None:
    import torch
    from transformers import set_seed

    if spec.cpu_threads:
        torch.set_num_threads(spec.cpu_threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_seed(spec.seed)


def _setup_model(spec: TrainSpec) -> tuple[Any, Any]:
    from finetune.recipe import model as m

    tokenizer = m.load_tokenizer(spec.base_path, spec.chat_template)
    base = m.load_model(spec.base_path, spec.hp, spec.device)
    model = m.load_lora(base, spec.init_adapter) if spec.init_adapter else m.add_lora(base, spec.hp)
    return tokenizer, model


def _setup_callback(spec: TrainSpec, reporter: Reporter) -> JobCallback:
    if spec.method == "reinforcement":
        from finetune.recipe.rft import RewardCallback

        return RewardCallback(reporter)
    return JobCallback(reporter)


@contextmanager
def _setup_graders(spec: TrainSpec) -> Iterator[Any]:
    """Reinforcement: the grader engine with its Python sandbox pool (stopped when training ends)."""
    if spec.method != "reinforcement":
        yield None
        return
    from finetune.graders.embeddings import Embedder
    from finetune.graders.engine import GraderEngine
    from finetune.graders.sandbox import SandboxPool

    sandbox, embed = SandboxPool(), Embedder()  # both start on first use
    try:
        yield GraderEngine(sandbox=sandbox, embed=embed, judge=spec.judge)
    finally:
        sandbox.close()
        embed.close()


def _setup_data(spec: TrainSpec, tokenizer: Any, reporter: Reporter) -> tuple[Any, Any, int]:
    from finetune.recipe import data

    if spec.method == "reinforcement":
        from datasets import Dataset

        from finetune.recipe.rft import prompt_rows

        rows = prompt_rows(spec.train_file)
        valid = prompt_rows(spec.valid_file, spec.hp.eval_samples) if spec.valid_file else None
        reporter.event(
            f"{len(rows)} training prompt(s); {spec.hp.num_generations} completions sampled per prompt"
            + (f", {len(valid)} validation prompt(s) graded every {spec.hp.eval_interval} steps" if valid else "")
        )
        return Dataset.from_list(rows), Dataset.from_list(valid) if valid else None, len(rows)

    if spec.method == "dpo":
        from datasets import Dataset

        rows = data.preference_rows(spec.train_file)
        valid = Dataset.from_list(data.preference_rows(spec.valid_file)) if spec.valid_file else None
        return Dataset.from_list(rows), valid, len(rows)
    encoder = data.ChatEncoder(tokenizer, tokenizer.chat_template, spec.hp.cutoff_len)
    rows, stats = data.encode_file(encoder, spec.train_file)
    if stats.truncated:
        shown = ", ".join(map(str, stats.truncated[:10])) + (" …" if len(stats.truncated) > 10 else "")
        reporter.event(
            f"{len(stats.truncated)} training example(s) exceed cutoff_len={spec.hp.cutoff_len} tokens "
            f"and were truncated (examples {shown}).",
            level="warn",
        )
    if stats.empty:
        reporter.event(
            f"{len(stats.empty)} training example(s) have no assistant tokens left after truncation and were skipped.",
            level="warn",
        )
    if not rows:
        raise ValueError("No training example has assistant tokens left within cutoff_len.")
    valid = data.encode_file(encoder, spec.valid_file)[0] if spec.valid_file else None
    reporter.event(f"Tokenized {len(rows)} training example(s): {stats.tokens} tokens.")
    return rows, valid, len(rows)


def _total_steps(n_rows: int, hp: Resolved) -> int:
    per_epoch = math.ceil(math.ceil(n_rows / hp.batch_size) / hp.gradient_accumulation_steps)
    return per_epoch * hp.n_epochs


def _setup_trainer(
    spec: TrainSpec,
    model: Any,
    tokenizer: Any,
    train_set: Any,
    valid_set: Any,
    steps: int,
    callback: JobCallback,
    engine: Any = None,
) -> Any:
    hp = spec.hp
    common: dict[str, Any] = dict(
        output_dir=str(spec.work_dir / "trainer"),
        num_train_epochs=hp.n_epochs,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler_type,
        warmup_steps=hp.warmup_ratio,
        max_grad_norm=hp.max_grad_norm,
        logging_steps=spec.log_every or max(1, steps // 100),
        save_strategy="epoch",
        save_total_limit=3,
        eval_strategy="epoch" if valid_set is not None else "no",
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=hp.precision == "bf16",
        fp16=hp.precision == "fp16",
        use_cpu=spec.device == "cpu",
        report_to=[],
        disable_tqdm=True,
        dataloader_pin_memory=spec.device == "cuda",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        save_only_model=False,
    )
    optimizers = (None, None)
    if hp.loraplus_lr_ratio:
        from finetune.recipe.model import loraplus_optimizer

        optimizers = (loraplus_optimizer(model, hp), None)
    if spec.method == "reinforcement":
        from finetune.recipe.rft import setup_trainer

        return setup_trainer(spec, model, tokenizer, train_set, valid_set, callback, engine, common, optimizers)
    if spec.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        assert hp.beta is not None  # resolve() sets it for DPO
        config = DPOConfig(beta=hp.beta, max_length=hp.cutoff_len, **common)
        return DPOTrainer(
            model=model,
            args=config,
            train_dataset=train_set,
            eval_dataset=valid_set,
            processing_class=tokenizer,
            callbacks=[callback],
            optimizers=optimizers,
        )
    from transformers import TrainingArguments

    from finetune.recipe.data import PadCollator, packing_collator
    from finetune.recipe.model import uses_varlen_attention
    from finetune.recipe.trainer import SFTTrainer

    sampling = "group_by_length" if hp.group_by_length else "random"
    args = TrainingArguments(**common, train_sampling_strategy=sampling, prediction_loss_only=True)
    collator = packing_collator(uses_varlen_attention(model)) if hp.packing else PadCollator(tokenizer.pad_token_id)
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=valid_set,
        data_collator=collator,
        callbacks=[callback],
        optimizers=optimizers,
        micro_batch_tokens=hp.micro_batch_tokens,
    )


def last_checkpoint(work_dir: Path, upto: int | None = None) -> tuple[Path | None, int]:
    """The newest complete trainer checkpoint under ``work_dir`` (at step ``upto`` or before, if given) and its
    global step (``(None, 0)`` if none)."""
    found = [
        p
        for p in (work_dir / "trainer").glob("checkpoint-*")
        if (p / "trainer_state.json").is_file() and (upto is None or _step_of(p) <= upto)
    ]
    newest = max(found, key=_step_of, default=None)
    return newest, _step_of(newest) if newest else 0


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])
