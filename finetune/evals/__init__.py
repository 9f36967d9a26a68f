"""Evaluation: text-similarity metrics (LLaMA-Factory's `predict_*`), eval runs."""
