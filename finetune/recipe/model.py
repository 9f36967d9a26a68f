"""Base model + tokenizer + LoRA adapter, as the resolved hyperparameters say."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune.recipe import attention, templates

if TYPE_CHECKING:
    from pathlib import Path

    from finetune.hyperparams import Resolved

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
    if hp.packing and device == "cuda" and attention.register():  # varlen flash attention for packed rows
        kwargs["attn_implementation"] = attention.NAME
    if hp.quantization_bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=hp.quantization_bit == 4,
            load_in_8bit=hp.quantization_bit == 8,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, DTYPES[hp.precision if hp.precision != "fp32" else "bf16"]),
        )
    if device == "cuda":  # straight onto the GPU: no full copy of the weights in host memory first
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if hp.quantization_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.config.use_cache = False
    if hp.gradient_checkpointing:
        enable_checkpointing(model)
    return model


def enable_checkpointing(model: Any) -> None:
    """Recompute each decoder layer in the backward pass instead of keeping its activations.

    Non-reentrant checkpointing (``torch.utils.checkpoint`` with ``use_reentrant=False``): it needs no input that
    requires grad, so the frozen base's embeddings stay frozen under LoRA, and it works when the recipe calls the
    decoder itself (the selective LM head). transformers still hooks the embeddings' output to require grad
    (``enable_input_require_grads``), which PEFT expects; that costs one hidden-sized gradient per token.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def uses_varlen_attention(model: Any) -> bool:
    """Whether the model attends through ``attention.NAME`` (its packed batches then carry the boundaries)."""
    return getattr(model.config, "_attn_implementation", None) == attention.NAME


def add_lora(model: Any, hp: Resolved) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        task_type="CAUSAL_LM",
        target_modules="all-linear" if hp.lora_target == "all" else list(hp.lora_target),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. a lora_target module the model does not have
        raise ValueError(f"LoRA could not be applied: {exc}") from None


def load_lora(model: Any, adapter_dir: Path) -> Any:
    """A trained PEFT adapter on ``model``, trainable: a job continuing a fine-tuned model starts from its weights
    (and keeps its rank, alpha and target modules)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def loraplus_optimizer(model: Any, hp: Resolved) -> Any:
    """LoRA+: B matrices learn ``loraplus_lr_ratio`` × faster (peft's implementation); only for a set ratio."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    if hp.loraplus_lr_ratio is None:
        raise ValueError("LoRA+ needs hyperparameters.loraplus_lr_ratio")
    return create_loraplus_optimizer(
        model=model,
        optimizer_cls=torch.optim.AdamW,
        lr=hp.learning_rate,
        loraplus_lr_ratio=hp.loraplus_lr_ratio,
    )
