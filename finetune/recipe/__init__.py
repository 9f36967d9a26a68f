"""The LoRA recipe: transformers + peft + the HF ``Trainer`` (TRL's ``DPOTrainer`` for DPO).

Reads top to bottom in ``run.py``; ``templates`` / ``data`` / ``model`` / ``callbacks`` each build one thing.
Imported only inside a job's child process: it loads torch.
"""
