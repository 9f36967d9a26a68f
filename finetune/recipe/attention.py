"""Padding-free attention for packed rows: torch's flash-attention varlen kernel behind transformers' interface.

A packed batch is one row of several examples (``data.packing_collator``). transformers' sdpa path turns its
``position_ids`` into a block-diagonal mask and computes attention over the whole row (N² for N tokens);
flash-attention's varlen kernel takes the examples' boundaries (``cu_seq_lens``) and computes each example's
own attention only. transformers reaches that kernel through the ``flash_attn`` package, which is often missing
(and needs a build); ``torch.nn.attention.varlen.varlen_attn`` (PyTorch ≥ 2.10, CUDA) is the same kernel and
ships with torch. This module registers it as the attention implementation ``NAME`` for packed jobs on CUDA.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

NAME = "tunegate_varlen"


def torch_varlen_kernel() -> Callable[..., Any] | None:
    """torch's varlen flash attention, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def make_attention(kernel: Callable[..., Any]) -> Callable[..., Any]:
    """An attention function in transformers' calling convention over ``kernel(q, k, v, cu_q, cu_k, max_q,
    max_k, **options)`` with (tokens, heads, head_dim) tensors, causal within each packed example."""
    params = inspect.signature(kernel).parameters
    options: dict[str, Any] = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    gqa = "enable_gqa" in params

    def attention(
        module: Any,
        query: Any,
        key: Any,
        value: Any,
        attention_mask: Any,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[Any, None]:
        cu_seqlens, max_len = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
        if cu_seqlens is None or query.shape[0] != 1:
            raise ValueError(f"attention {NAME!r} needs packed rows (data.packing_collator with flash kwargs)")
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (1, heads, T, d) → (T, heads, d)
        extra = dict(options)
        if q.shape[1] != k.shape[1]:
            if gqa:
                extra["enable_gqa"] = True
            else:
                k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        if scaling is not None and "scale" in params:
            extra["scale"] = scaling
        out = kernel(
            q,
            k,
            v,
            cu_seqlens,
            kwargs.get("cu_seq_lens_k", cu_seqlens),
            max_len,
            kwargs.get("max_length_k", max_len),
            **extra,
        )
        return out.unsqueeze(0), None  # (1, T, heads, d), as transformers' attention functions return

    return attention


def register(name: str = NAME, kernel: Callable[..., Any] | None = None) -> bool:
    """Register ``kernel`` (default: torch's) as attention ``name``; False where there is no kernel."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    kernel = kernel or torch_varlen_kernel()
    if kernel is None:
        return False
    AttentionInterface.register(name, make_attention(kernel))
    AttentionMaskInterface.register(name, flash_attention_mask)  # packed rows: no mask, the boundaries say it
    return True
