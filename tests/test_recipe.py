"""The recipe's pieces on a tiny model: assistant-only labels, the selective LM-head loss, packing."""

from __future__ import annotations

import pytest

from finetune.recipe.data import IGNORE, ChatEncoder, PadCollator, TemplateError, micro_batches, packing_collator
from finetune.recipe.templates import CHATML


@pytest.fixture(scope="module")
def tokenizer(tiny_model: str):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def trained_text(tokenizer, encoded) -> str:  # noqa: ANN001
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE])


def test_labels_cover_assistant_turns_only(tokenizer) -> None:  # noqa: ANN001
    example = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<think>greet</think>Hello", "weight": 0},
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "<think>read it</think>Sunny."},
        ]
    }
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
    example = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "<think>x</think>b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    }
    with pytest.raises(TemplateError, match="prefix-stable"):
        ChatEncoder(tokenizer, drops_old_thinking, 4096).encode(example)


def test_selective_head_loss_equals_full_loss(tiny_model: str, tokenizer, tmp_path) -> None:  # noqa: ANN001
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from finetune.recipe.trainer import SFTTrainer

    encoder = ChatEncoder(tokenizer, CHATML, 512)
    rows = [
        encoder.encode({"messages": [{"role": "user", "content": q * (i + 1)}, {"role": "assistant", "content": a}]})
        for i, (q, a) in enumerate([("Why? ", "Because."), ("Name a colour. ", "Blue, or green.")])
    ]
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


class Recorder:
    """A Reporter that keeps the metrics events (the recipe's only output besides the adapter)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def event(self, message: str, level: str = "info") -> None: ...
    def checkpoint(self, step, directory, metrics) -> None: ...  # noqa: ANN001
    def progress(self, trained_tokens: int, estimated_finish: int | None) -> None: ...
    def stop_requested(self) -> None:
        return None

    def metrics(self, step: int, total_steps: int, data: dict[str, float]) -> None:
        self.losses.append(data["train_loss"])


def train_losses(tiny_model: str, tmp_path, callbacks=(), **hyperparameters) -> list[float]:  # noqa: ANN001
    import json

    from finetune import hyperparams
    from finetune.recipe.run import TrainSpec, train
    from tests.finetune_support import chat_jsonl, qa_pairs

    data = tmp_path / "train.jsonl"
    data.write_bytes(chat_jsonl(qa_pairs(12)))
    hp = hyperparams.resolve(
        hyperparams.Hyperparameters(
            **{"n_epochs": 1, "batch_size": 4, "learning_rate": 5e-3, "lora_rank": 16, "precision": "fp32"}
            | hyperparameters
        ),
        n_examples=12,
        method="supervised",
        device="cpu",
    )
    recorder = Recorder()
    train(
        TrainSpec(
            "supervised",
            tiny_model,
            None,
            hp,
            7,
            data,
            None,
            tmp_path / json.dumps(hyperparameters),
            "cpu",
            log_every=1,
            cpu_threads=2,
            extra_callbacks=tuple(callbacks),
        ),
        recorder,
    )
    return recorder.losses


def test_bf16_runs_the_lora_matmuls_under_autocast_on_the_input_as_it_is(tiny_model: str, tmp_path) -> None:  # noqa: ANN001
    # the selective head calls the decoder itself, outside accelerate's autocast of model.forward: the trainer
    # enters it, and PEFT does not copy each LoRA input to the adapters' fp32 (which would compute LoRA in fp32)
    import torch
    from transformers import TrainerCallback

    seen: set[tuple[torch.dtype, bool, torch.dtype]] = set()

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:  # noqa: ANN001
            for name, module in model.named_modules():
                if name.endswith("lora_A.default"):
                    module.register_forward_hook(
                        lambda mod, inputs, out: seen.add(
                            (inputs[0].dtype, torch.is_autocast_enabled("cpu"), out.dtype)
                        )
                    )

    losses = train_losses(tiny_model, tmp_path, callbacks=[Spy()], precision="bf16")
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # trained, no NaN
    assert seen == {(torch.bfloat16, True, torch.bfloat16)}, seen


@pytest.mark.parametrize("packing", [False, True])
def test_checkpointing_trains_the_same_losses(tiny_model: str, tmp_path, packing: bool) -> None:  # noqa: ANN001
    plain = train_losses(tiny_model, tmp_path, packing=packing, gradient_checkpointing=False)
    checkpointed = train_losses(tiny_model, tmp_path, packing=packing, gradient_checkpointing=True)
    assert len(plain) == 3 and plain[-1] < plain[0]  # three steps, and LoRA learned something
    assert checkpointed == pytest.approx(plain, rel=1e-4)


def test_micro_batches_split_a_padded_batch_into_whole_examples() -> None:
    batch = PadCollator(0)([{"input_ids": [7] * n, "labels": [5] * n} for n in (10, 7, 3, 9)])
    shapes = lambda tokens: [tuple(p["input_ids"].shape) for p in micro_batches(batch, tokens)]  # noqa: E731
    assert shapes(40) == [(4, 10)]  # fits: whole
    assert shapes(20) == [(2, 10), (2, 9)]  # each micro-batch trimmed to its own longest example
    assert shapes(5) == [(1, 10), (1, 7), (1, 3), (1, 9)]  # an example longer than the limit is one on its own
    parts = micro_batches(batch, 20)
    for key in ("input_ids", "labels", "attention_mask"):  # nothing but padding is dropped
        kept = sum(int((p["attention_mask"] * (p[key] != 0)).sum()) for p in parts)
        assert kept == int((batch["attention_mask"] * (batch[key] != 0)).sum())
    packed = packing_collator()([{"input_ids": [7] * 4, "labels": [5] * 4}] * 2)
    assert micro_batches(packed, 2) == [packed]


@pytest.mark.parametrize("packing", [False, True])
def test_micro_batches_train_the_same_losses(tiny_model: str, tmp_path, packing: bool, monkeypatch) -> None:  # noqa: ANN001
    # a batch of 4 as one pass, as micro-batches of a few examples, and one example per pass (gradients accumulated,
    # the loss normalised over the whole batch): the same optimizer steps (packed batches: one row, never split)
    from finetune.hyperparams import MAX_MICRO_BATCH_TOKENS
    from finetune.recipe import trainer

    passes: list[int] = []

    def counted(batch, tokens):  # noqa: ANN001, ANN202
        parts = micro_batches(batch, tokens)
        passes.append(len(parts))
        return parts

    monkeypatch.setattr(trainer, "micro_batches", counted)
    whole = train_losses(tiny_model, tmp_path, packing=packing, micro_batch_tokens=MAX_MICRO_BATCH_TOKENS)
    assert len(whole) == 3 and whole[-1] < whole[0] and passes == [1, 1, 1]
    for tokens, split in ((100, lambda n: 1 < n < 4), (16, lambda n: n == 4)):
        passes.clear()
        assert train_losses(tiny_model, tmp_path, packing=packing, micro_batch_tokens=tokens) == pytest.approx(
            whole, rel=1e-4
        )
        assert all(n == 1 for n in passes) if packing else any(split(n) for n in passes), passes


def saved_activation_bytes(model, batch) -> int:  # noqa: ANN001
    """Bytes autograd keeps for the backward pass (distinct storages), through the recipe's loss."""
    import torch
    from transformers import TrainingArguments

    from finetune.recipe.trainer import SFTTrainer

    storages: dict[int, int] = {}

    def pack(t):  # noqa: ANN001, ANN202
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    trainer = SFTTrainer(model=model, args=TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to=[]))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = trainer.compute_loss(model, batch)
    loss.backward()
    return sum(n for ptr, n in storages.items() if ptr not in params)


def test_checkpointing_keeps_less_activation_memory(tiny_model: str, tokenizer) -> None:  # noqa: ANN001
    from finetune import hyperparams
    from finetune.device import model_footprint
    from finetune.recipe.model import add_lora, load_model

    encoder = ChatEncoder(tokenizer, CHATML, 512)
    rows = [
        encoder.encode(
            {
                "messages": [
                    {"role": "user", "content": "Tell me about rivers. " * 12},
                    {"role": "assistant", "content": "Rivers flow to the sea. " * 8},
                ]
            }
        )
    ] * 4
    batch = PadCollator(tokenizer.pad_token_id)([{"input_ids": r.input_ids, "labels": r.labels} for r in rows])
    saved = {}
    for on in (False, True):
        hp = hyperparams.resolve(
            hyperparams.Hyperparameters(precision="fp32", gradient_checkpointing=on),
            n_examples=20,
            method="supervised",
            device="cpu",
        )
        saved[on] = saved_activation_bytes(add_lora(load_model(tiny_model, hp, "cpu"), hp), batch)
    assert saved[True] < saved[False] / 2
    # the estimate behind gradient_checkpointing="auto" is within a factor of two of what autograd keeps
    estimate = model_footprint("cpu", tiny_model).activation_bytes(batch["input_ids"].numel(), "fp32")
    assert estimate / 2 < saved[False] < estimate * 2


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), scale=None, enable_gqa=False):  # noqa: ANN001, ANN201
    """torch's varlen_attn (CUDA only) computed per example with sdpa: the kernel contract on CPU."""
    import itertools

    import torch
    import torch.nn.functional as F

    assert tuple(window_size) == (-1, 0)  # causal
    bounds = cu_q.tolist()
    return torch.cat(
        [
            F.scaled_dot_product_attention(
                *(t[s:e].transpose(0, 1) for t in (q, k, v)), is_causal=True, scale=scale, enable_gqa=enable_gqa
            ).transpose(0, 1)
            for s, e in itertools.pairwise(bounds)
        ]
    )


def reference_varlen_no_gqa(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False):  # noqa: ANN001, ANN201
    """The older signature (is_causal, no enable_gqa / scale): the wrapper repeats the KV heads itself."""
    assert is_causal and q.shape[1] == k.shape[1]
    return reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, window_size=(-1, 0))


@pytest.mark.parametrize("kernel", [reference_varlen, reference_varlen_no_gqa])
def test_varlen_attention_packed_loss_equals_padded(tokenizer, tmp_path, kernel) -> None:  # noqa: ANN001
    import json
    from pathlib import Path

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments

    from finetune.recipe import attention
    from finetune.recipe.trainer import SFTTrainer

    # a Qwen2 shape with grouped KV heads (2 query heads, 1 KV head)
    spec = json.loads((Path(__file__).parents[1] / "bench/configs/tiny.json").read_text())
    name = f"test_varlen_{kernel.__name__}"
    assert attention.register(name, kernel)
    torch.manual_seed(0)
    shape = {**spec, "vocab_size": len(tokenizer)}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**shape), attn_implementation=name)
    reference = AutoModelForCausalLM.from_config(AutoConfig.for_model(**shape), attn_implementation="sdpa")
    reference.load_state_dict(model.state_dict())
    encoder = ChatEncoder(tokenizer, CHATML, 512)
    features = [
        {"input_ids": r.input_ids, "labels": r.labels}
        for r in (
            encoder.encode({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            for q, a in [("Why? " * 3, "Because."), ("Name a colour. ", "Blue, or green. " * 4), ("Hi", "Hello!")]
        )
    ]
    trainer = SFTTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    with torch.no_grad():
        packed = trainer.compute_loss(model, packing_collator(boundaries=True)(features))
        padded = reference(**PadCollator(tokenizer.pad_token_id)(features)).loss
    assert packed.item() == pytest.approx(padded.item(), rel=1e-5)
    with pytest.raises(ValueError, match="packed rows"):  # a padded batch never reaches the varlen kernel
        trainer.compute_loss(model, PadCollator(tokenizer.pad_token_id)(features))
