"""The training-loop measurement every bench run shares (tunegate's venv and LLaMA-Factory's: transformers only).

``step_stats(warmup_steps)`` is a TrainerCallback: wall time and non-padding tokens (the Trainer's
``num_input_tokens_seen`` with ``include_num_input_tokens_seen="non_padding"``) from the end of the warm-up
steps to the end of training, and the per-step training losses.
"""

from __future__ import annotations

import time
from typing import Any


def step_stats(warmup_steps: int = 0) -> Any:
    from transformers import TrainerCallback

    class StepStats(TrainerCallback):
        def __init__(self) -> None:
            self.start, self.start_tokens = 0.0, 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if warmup_steps == 0:
                self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if warmup_steps and state.global_step == warmup_steps:
                _sync()
                self.start, self.start_tokens = time.perf_counter(), int(state.num_input_tokens_seen)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            _sync()
            self.seconds = time.perf_counter() - self.start
            self.tokens = int(state.num_input_tokens_seen) - self.start_tokens
            self.steps = state.global_step - warmup_steps
            self.losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
            self.losses = self.losses or [entry["train_loss"] for entry in state.log_history if "train_loss" in entry]

        def result(self) -> dict[str, Any]:
            return {
                "steps": self.steps,
                "tokens": self.tokens,
                "seconds": round(self.seconds, 2),
                "tokens_per_s": round(self.tokens / self.seconds, 1),
                "final_loss": round(self.losses[-1], 4),
                "mean_loss": round(sum(self.losses) / len(self.losses), 4),
            }

    return StepStats()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
