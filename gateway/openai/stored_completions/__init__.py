"""Stored chat completions (``store: true``): list, retrieve, update, delete, messages, and distillation."""
