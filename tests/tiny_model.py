"""A tiny causal LM built offline: a byte-level BPE tokenizer trained here, a ChatML template, random weights.

head_dim is 64 (vLLM's CPU attention needs ≥ 64). Weights are drawn with std 0.2 (not 0.02): a random model that
flat needs far more steps before LoRA can memorize anything (docs/NOTES.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune.recipe.templates import CHATML

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus(data_dir: Path) -> list[str]:
    """Text to train the tokenizer on: the shared datasets (Chinese and English) plus chat markup."""
    texts = []
    for path in sorted(data_dir.glob("*.json*")):
        raw = path.read_text(encoding="utf-8")
        texts.append(raw[:400_000])
    texts.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")
    return texts


def build_tiny_model(
    target: Path,
    data_dir: Path,
    *,
    vocab_size: int = 2048,
    hidden: int = 256,
    layers: int = 2,
    initializer_range: float = 0.2,
    seed: int = 0,
) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus(data_dir),
        trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(target)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    (target / "generation_config.json").write_text(json.dumps({"eos_token_id": tokenizer.eos_token_id}))
    return target
