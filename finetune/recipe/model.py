"""Base model + tokenizer + LoRA adapter, as the resolved hyperparameters say."""

from __future__ import annotations

from typing import Any

from finetune.hyperparams import Resolved
from finetune.recipe import templates

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def load_tokenizer(path: str, chat_template: str | None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = templates.resolve(chat_template, tokenizer.chat_template)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, hp: Resolved, device: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": getattr(torch, DTYPES[hp.precision])}
    if hp.quantization_bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=hp.quantization_bit == 4, load_in_8bit=hp.quantization_bit == 8,
            bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, DTYPES[hp.precision if hp.precision != "fp32" else "bf16"]),
        )
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if hp.quantization_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    elif device == "cuda":
        model = model.to("cuda")
    model.config.use_cache = False
    return model


def add_lora(model: Any, hp: Resolved) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout, task_type="CAUSAL_LM",
        target_modules="all-linear" if hp.lora_target == "all" else list(hp.lora_target),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. a lora_target module the model does not have
        raise ValueError(f"LoRA could not be applied: {exc}") from None


def loraplus_optimizer(model: Any, hp: Resolved) -> Any:
    """LoRA+: B matrices learn ``loraplus_lr_ratio`` × faster (peft's implementation)."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model=model, optimizer_cls=torch.optim.AdamW, lr=hp.learning_rate, loraplus_lr_ratio=hp.loraplus_lr_ratio,
    )
