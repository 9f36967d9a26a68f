"""Batch execution: a batch file's requests sent through the engines under a lease, results stored once."""
