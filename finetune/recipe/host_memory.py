"""Host memory for training on CPU: activations straight from mmap, handed straight back when freed.

glibc's malloc serves a block from its heap (brk and arenas) unless it is over the mmap threshold, and that
threshold is dynamic: each time a mmapped block is freed it rises to that block's size, up to 32 MiB. A training
step allocates and frees activations of a different size every (micro-)batch — a batch is as wide as its longest
example — so after the first steps most of them come from the heap, whose free gaps are reused only by what fits
in them: the process's RSS creeps up over the epoch, and reusing scattered heap pages cost more time than
faulting in fresh ones. A fixed threshold (``mallopt(M_MMAP_THRESHOLD)``, which also stops the adjustment)
keeps every block over it on mmap: its pages go back to the system when it is freed.

Measured on SmolLM2-135M, LoRA r8 on all linear layers, batch 4 × ≤ 256 tokens, 2 CPU cores (docs/benchmarks.md,
issue 18): fp32 145.8 → 163.7 tokens/s with peak RSS flat at ~1.85 GiB; bf16 222 → 262 tokens/s.

``TUNEGATE_MMAP_THRESHOLD`` (bytes) overrides the threshold; ``0`` leaves glibc's default (the benchmark's A/B).
Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 2**20  # 1 MiB: a SmolLM2 activation of one token row is 2.3 KiB, of a 200-token pass ~0.5 MiB+
ENV = "TUNEGATE_MMAP_THRESHOLD"


def fix_mmap_threshold() -> int | None:
    """Set glibc's mmap threshold for this process (``ENV`` or ``MMAP_THRESHOLD``); the value set, or None where
    nothing was set (not glibc, or ``ENV=0``)."""
    threshold = int(os.environ.get(ENV, MMAP_THRESHOLD))
    if threshold <= 0:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return None
    return threshold if mallopt(M_MMAP_THRESHOLD, threshold) == 1 else None
