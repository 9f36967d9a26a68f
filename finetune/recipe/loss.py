"""Cross-entropy through a frozen LM head, computed in chunks, with no logits kept for the backward pass.

The LM head (hidden × vocabulary) is the largest matrix multiply of a small model and its logits the largest
activation (tokens × 49 152 or 151 936 values, plus softmax and gradient buffers of the same size). When the head
is frozen (LoRA never trains it), the gradient of the loss with respect to the hidden states is
``(softmax(logits) - onehot(target)) @ W`` and can be computed in the forward pass, one chunk of tokens at a
time: only that gradient (tokens × hidden) is kept. Same FLOPs as forward + backward of the plain head (no
recompute), a fraction of its memory. The idea is Liger-Kernel's fused linear cross-entropy, in plain torch.
Imported by the trainer only (loads torch).
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_VALUES = 2**26  # logits per chunk: 256 MiB in fp32


def frozen_head_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, and the number of argmax hits.

    ``hidden`` (tokens × h) may require grad; ``weight`` (vocab × h) must not. The loss is a 0-d float32 tensor.
    """
    chunk = max(1, CHUNK_VALUES // weight.shape[0])
    return _FrozenHeadCE.apply(hidden, weight, targets, chunk)


class _FrozenHeadCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit below
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            correct = torch.zeros((), dtype=torch.long, device=hidden.device)
            grad = torch.empty_like(hidden) if hidden.requires_grad else None
            for start in range(0, hidden.shape[0], chunk):
                h, t = hidden[start : start + chunk].to(weight.dtype), targets[start : start + chunk]
                logits = (h @ weight.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                correct += (logits.argmax(-1) == t).sum()
                if grad is not None:
                    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    probs[torch.arange(t.shape[0], device=t.device), t] -= 1
                    grad[start : start + chunk] = (probs.to(weight.dtype) @ weight).to(grad.dtype)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: Any) -> tuple[Any, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (None if grad is None else grad * grad_loss.to(grad.dtype)), None, None, None
