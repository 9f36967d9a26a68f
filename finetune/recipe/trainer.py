"""The HF ``Trainer`` with three changes: the LM head runs only where there is a label, a batch larger than
``micro_batch_tokens`` trains as micro-batches (the same step, less memory), and mean token accuracy (train and
eval) is logged next to the loss, as TRL does.

Mixed precision (bf16/fp16): the base weights are in that dtype and the LoRA weights in fp32 (PEFT's default, so
the optimizer updates full-precision values). transformers leaves autocast to accelerate, which wraps only
``model.forward``; the selective head calls the decoder itself, so ``compute_loss`` enters the accelerator's
autocast, and PEFT's casting of each LoRA input to the adapter's fp32 is turned off — under autocast the LoRA
matmuls run in the low precision on the input as it is, instead of on an fp32 copy of it per adapted layer (on
SmolLM2-135M bf16, CPU, 512 tokens per pass: 264.5 → 309.7 tokens/s, 1 934 → 1 454 MiB; docs/NOTES.md).

Skipping the LM head on prompt and padding positions is exact (those positions carry no loss) and saves the
largest matrix multiply of a small model (hidden × vocabulary) plus its logits' memory. It is used for decoder
families whose head is a plain linear layer (no logit soft-capping or scaling); others take the standard path.
A frozen head (always, under LoRA, unless ``lora_target`` names it) goes through ``loss.frozen_head_cross_entropy``:
chunked, no logits kept for the backward pass. Accuracy counts stay on the device until a log line needs them
(no host sync per step on CUDA).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from finetune.recipe.data import IGNORE, micro_batches
from finetune.recipe.loss import frozen_head_cross_entropy

PLAIN_HEAD_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "phi3", "olmo2", "smollm3"}


class SFTTrainer(Trainer):
    def __init__(self, *args: Any, micro_batch_tokens: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._accuracy: dict[str, list[tuple[torch.Tensor, int]]] = defaultdict(list)
        self.micro_batch_tokens = micro_batch_tokens
        if self.accelerator.native_amp:  # every forward pass runs under its autocast (see the module docstring)
            from peft.tuners.tuners_utils import BaseTunerLayer

            model: Any = self.model
            for module in model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.cast_input_dtype_enabled = False  # type: ignore[attr-defined]  # PEFT's, set per layer

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """A batch over ``micro_batch_tokens`` as micro-batches, one forward/backward pass each: their losses are
        normalised by the whole batch's label count (``num_items_in_batch``), so the gradients they accumulate are
        the batch's — the same optimizer step, with one micro-batch's activations alive at a time."""
        parts = (
            micro_batches(inputs, self.micro_batch_tokens)
            if self.micro_batch_tokens and num_items_in_batch is not None
            else [inputs]
        )
        loss = super().training_step(model, parts[0], num_items_in_batch)
        for part in parts[1:]:
            loss = loss + super().training_step(model, part, num_items_in_batch)
        return loss

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        if causal.config.model_type not in PLAIN_HEAD_FAMILIES:
            return self._standard_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")[:, 1:]
        with self.accelerator.autocast():  # a no-op in fp32
            hidden = causal.get_decoder()(**inputs).last_hidden_state[:, :-1]
            mask = labels != IGNORE
            hidden, targets = hidden[mask], labels[mask]
            head = causal.get_output_embeddings()
            if type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad:
                loss, correct = frozen_head_cross_entropy(hidden, head.weight, targets)
            else:  # a trained head (e.g. lora_target names lm_head): autograd through the logits
                logits = head(hidden).float()
                loss = F.cross_entropy(logits, targets, reduction="sum")
                correct = (logits.argmax(-1) == targets).sum()
        loss = loss / num_items_in_batch if num_items_in_batch is not None else loss / max(1, targets.numel())
        self._record(model, correct.detach(), targets.numel())
        return (loss, {}) if return_outputs else loss  # eval with prediction_loss_only needs no logits

    def _standard_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool, num_items_in_batch: Any) -> Any:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"][:, 1:]
        mask = labels != IGNORE
        correct = ((outputs.logits[:, :-1].argmax(dim=-1) == labels) & mask).sum()
        self._record(model, correct.detach(), int(mask.sum()))
        return (loss, outputs) if return_outputs else loss

    def _record(self, model: Any, correct: Any, total: int) -> None:  # correct: a 0-d tensor on the device
        self._accuracy["train" if model.training else "eval"].append((correct, total))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        counts = self._accuracy.pop(mode, [])
        total = sum(n for _, n in counts)
        if total:
            key = "eval_mean_token_accuracy" if mode == "eval" else "mean_token_accuracy"
            logs[key] = int(sum(c for c, _ in counts)) / total
        super().log(logs, start_time)
