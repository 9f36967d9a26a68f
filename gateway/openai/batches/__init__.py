"""``/v1/batches``: many requests from one file, run by the worker through the engines."""
