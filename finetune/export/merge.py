"""A LoRA adapter merged into its base: a plain HF directory (safetensors, tokenizer, chat template)."""

from __future__ import annotations

from pathlib import Path

from storage.errors import InvalidRequest


def merge(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, *, chat_template: str | None = None) -> Path:
    """Fold the adapter's weights into the base (peft ``merge_and_unload``) and save model + tokenizer.

    The tokenizer keeps (or gets) the chat template the model was trained with, so every later format — GGUF with
    its embedded template, an Ollama Modelfile — renders the prompt the model saw.
    """
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    if config.get("use_dora"):
        raise InvalidRequest("DoRA adapters are merged by peft but not supported by tunegate's export yet.",
                             param="model", code="unsupported_adapter")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if chat_template:
        tokenizer.chat_template = chat_template
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
