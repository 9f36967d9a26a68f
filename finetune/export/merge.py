"""A LoRA adapter merged into its base: a plain HF directory (safetensors, tokenizer, chat template)."""

from __future__ import annotations

from pathlib import Path


def merge(
    base_dir: str | Path, adapter_dir: str | Path | None, out_dir: str | Path, *, chat_template: str | None = None
) -> Path:
    """Fold the adapter's weights into the base (peft ``merge_and_unload``: exact for LoRA, rsLoRA, DoRA and
    ``modules_to_save``) and save model + tokenizer; without an adapter, the base as it is served.

    The tokenizer gets the chat template the model was trained with (``chat_template``: a name from
    ``finetune.recipe.templates`` or Jinja, else the tokenizer's own), so every later format — GGUF with its embedded
    template, an Ollama Modelfile — renders the prompt the model saw.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.recipe import templates

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.chat_template = templates.resolve(chat_template, tokenizer.chat_template)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    if adapter_dir is not None:
        from peft import PeftModel

        # in the model's own dtype: one copy of the weights in memory (a bf16 7B model merges in ~15 GB, not 30);
        # peft computes each B·A delta in fp32 on CPU for fp16/bf16 weights and rounds once when adding it
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
