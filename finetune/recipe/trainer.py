"""The HF ``Trainer`` plus mean token accuracy (train and eval), logged next to the loss as TRL does."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from transformers import Trainer

from finetune.recipe.data import IGNORE


class SFTTrainer(Trainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._accuracy: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"][:, 1:]
        predicted = outputs.logits[:, :-1].argmax(dim=-1)
        mask = labels != IGNORE
        correct = int(((predicted == labels) & mask).sum())
        self._accuracy["train" if model.training else "eval"].append((correct, int(mask.sum())))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        counts = self._accuracy.pop(mode, [])
        total = sum(n for _, n in counts)
        if total:
            key = "eval_mean_token_accuracy" if mode == "eval" else "mean_token_accuracy"
            logs[key] = sum(c for c, _ in counts) / total
        super().log(logs, start_time)
