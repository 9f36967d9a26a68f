"""The HF ``Trainer`` with two changes: the LM head runs only where there is a label, and mean token accuracy
(train and eval) is logged next to the loss, as TRL does.

Skipping the LM head on prompt and padding positions is exact (those positions carry no loss) and saves the
largest matrix multiply of a small model (hidden × vocabulary) plus its logits' memory. It is used for decoder
families whose head is a plain linear layer (no logit soft-capping or scaling); others take the standard path.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from transformers import Trainer

from finetune.recipe.data import IGNORE

PLAIN_HEAD_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "phi3", "olmo2", "smollm3"}


class SFTTrainer(Trainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._accuracy: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        if causal.config.model_type not in PLAIN_HEAD_FAMILIES:
            return self._standard_loss(model, inputs, return_outputs, num_items_in_batch)
        import torch.nn.functional as F

        inputs = dict(inputs)
        labels = inputs.pop("labels")[:, 1:]
        hidden = causal.get_decoder()(**inputs).last_hidden_state[:, :-1]
        mask = labels != IGNORE
        logits = causal.get_output_embeddings()(hidden[mask]).float()
        targets = labels[mask]
        loss = F.cross_entropy(logits, targets, reduction="sum")
        loss = loss / num_items_in_batch if num_items_in_batch is not None else loss / max(1, targets.numel())
        self._record(model, int((logits.argmax(-1) == targets).sum()), targets.numel())
        return (loss, {}) if return_outputs else loss  # eval with prediction_loss_only needs no logits

    def _standard_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool, num_items_in_batch: Any) -> Any:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"][:, 1:]
        mask = labels != IGNORE
        correct = int(((outputs.logits[:, :-1].argmax(dim=-1) == labels) & mask).sum())
        self._record(model, correct, int(mask.sum()))
        return (loss, outputs) if return_outputs else loss

    def _record(self, model: Any, correct: int, total: int) -> None:
        self._accuracy["train" if model.training else "eval"].append((correct, total))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        counts = self._accuracy.pop(mode, [])
        total = sum(n for _, n in counts)
        if total:
            key = "eval_mean_token_accuracy" if mode == "eval" else "mean_token_accuracy"
            logs[key] = sum(c for c, _ in counts) / total
        super().log(logs, start_time)
