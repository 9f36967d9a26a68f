"""The recipe's pieces on a tiny model: assistant-only labels, the selective LM-head loss, packing."""

from __future__ import annotations

import pytest

from finetune.recipe.data import IGNORE, ChatEncoder, PadCollator, TemplateError, packing_collator
from finetune.recipe.templates import CHATML


@pytest.fixture(scope="module")
def tokenizer(tiny_model: str):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def trained_text(tokenizer, encoded) -> str:  # noqa: ANN001
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE])


def test_labels_cover_assistant_turns_only(tokenizer) -> None:  # noqa: ANN001
    example = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>greet</think>Hello", "weight": 0},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "<think>read it</think>Sunny."},
    ]}
    encoded = ChatEncoder(tokenizer, CHATML, 4096).encode(example)
    full = tokenizer.decode(encoded.input_ids)
    assert full == tokenizer.apply_chat_template(example["messages"], tokenize=False, chat_template=CHATML)
    assert trained_text(tokenizer, encoded) == (
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<think>read it</think>Sunny.<|im_end|>\n"
    )
    short = ChatEncoder(tokenizer, CHATML, 10).encode(example)
    assert short.truncated and len(short.input_ids) == 10


def test_template_that_rewrites_history_is_refused(tokenizer) -> None:  # noqa: ANN001
    drops_old_thinking = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{{ m.content.split('</think>')[-1] if (m.role == 'assistant' and not loop.last) else m.content }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    example = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think>b"},
                            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    with pytest.raises(TemplateError, match="prefix-stable"):
        ChatEncoder(tokenizer, drops_old_thinking, 4096).encode(example)


def test_selective_head_loss_equals_full_loss(tiny_model: str, tokenizer, tmp_path) -> None:  # noqa: ANN001
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from finetune.recipe.trainer import SFTTrainer

    encoder = ChatEncoder(tokenizer, CHATML, 512)
    rows = [encoder.encode({"messages": [{"role": "user", "content": q * (i + 1)}, {"role": "assistant", "content": a}]})
            for i, (q, a) in enumerate([("Why? ", "Because."), ("Name a colour. ", "Blue, or green.")])]
    features = [{"input_ids": r.input_ids, "labels": r.labels} for r in rows]
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer = SFTTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    padded = PadCollator(tokenizer.pad_token_id)(features)
    packed = packing_collator()(features)
    with torch.no_grad():
        reference = model(**padded).loss
        fast = trainer.compute_loss(model, padded)
        standard = trainer._standard_loss(model, padded, False, None)
        fast_packed = trainer.compute_loss(model, packed)
    assert fast.item() == pytest.approx(reference.item(), rel=1e-5)
    assert standard.item() == pytest.approx(reference.item(), rel=1e-5)
    assert fast_packed.item() == pytest.approx(reference.item(), rel=1e-4)  # packing: no attention across examples
