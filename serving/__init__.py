"""Engines and routing: model name → (base, adapter) → replica; adapter hot-load; engine supervision; health."""
