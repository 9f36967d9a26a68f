"""Hyperparameters: validation with the offending field named, "auto" resolution, device checks."""

from __future__ import annotations

import pytest

from finetune.hyperparams import BASE_LEARNING_RATE, METHODS, auto_batch_size, auto_epochs, method_of, parse, resolve
from storage.errors import InvalidRequest

P = "method.supervised.hyperparameters"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"n_epochs": 0}, "n_epochs"),
        ({"n_epochs": 51}, "n_epochs"),
        ({"batch_size": 257}, "batch_size"),
        ({"learning_rate_multiplier": 0}, "learning_rate_multiplier"),
        ({"learning_rate_multiplier": "fast"}, "learning_rate_multiplier"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"cutoff_len": 8}, "cutoff_len"),
        ({"lr_scheduler_type": "sawtooth"}, "lr_scheduler_type"),
        ({"precision": "int3"}, "precision"),
        ({"quantization_bit": 3}, "quantization_bit"),
        ({"lora_target": []}, "lora_target"),
        ({"lora_target": ["q proj"]}, ""),
        ({"no_such_knob": 1}, "no_such_knob"),
        ({"beta": 0.1}, "beta"),
    ],
)
def test_bad_values_name_the_field(raw: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(raw, "supervised", P)
    assert err.value.param == (f"{P}.{field}" if field else P) and err.value.code == "invalid_hyperparameter"


def test_auto_resolution_and_echo() -> None:
    resolved = resolve(parse({}, "supervised", P), n_examples=1000, method="supervised", device="cpu")
    assert (resolved.n_epochs, resolved.batch_size, resolved.learning_rate) == (3, 2, BASE_LEARNING_RATE)
    assert (resolved.precision, resolved.lora_alpha, resolved.beta) == ("fp32", 16, None)
    explicit = resolve(
        parse({"n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 2, "lora_rank": 16}, "supervised", P),
        n_examples=20,
        method="supervised",
        device="cuda",
    )
    assert (
        explicit.n_epochs,
        explicit.batch_size,
        explicit.learning_rate,
        explicit.lora_alpha,
        explicit.precision,
    ) == (5, 4, 2 * BASE_LEARNING_RATE, 32, "bf16")
    assert (
        resolve(
            parse({"learning_rate": 3e-4}, "supervised", P), n_examples=20, method="supervised", device="cpu"
        ).learning_rate
        == 3e-4
    )
    assert resolve(parse({}, "dpo", P), n_examples=20, method="dpo", device="cpu").beta == 0.1
    assert (
        resolve(parse({}, "supervised", P), n_examples=20, method="supervised", device="cpu", bf16_ok=True).precision
        == "bf16"
    )
    assert (
        resolve(parse({}, "supervised", P), n_examples=20, method="supervised", device="cuda", bf16_ok=False).precision
        == "fp32"
    )


def test_auto_rules() -> None:
    assert auto_epochs(10) == 10 and auto_epochs(20) == 5 and auto_epochs(1000) == 3 and auto_epochs(20_000) == 1
    assert auto_batch_size(10) == 1 and auto_batch_size(5000) == 10 and auto_batch_size(10**6) == 32


def test_device_checks() -> None:
    with pytest.raises(InvalidRequest) as err:
        resolve(parse({"quantization_bit": 4}, "supervised", P), n_examples=20, method="supervised", device="cpu")
    assert err.value.code == "unsupported_on_device" and err.value.param.endswith("quantization_bit")
    with pytest.raises(InvalidRequest):
        resolve(parse({"precision": "fp16"}, "supervised", P), n_examples=20, method="supervised", device="cpu")
    with pytest.raises(InvalidRequest):
        parse({"packing": True}, "dpo", P)
    assert (
        resolve(
            parse({"quantization_bit": 4}, "supervised", P), n_examples=20, method="supervised", device="cuda"
        ).quantization_bit
        == 4
    )


GIB = 2**30


def smollm2_footprint():  # noqa: ANN201
    from finetune.hyperparams import Footprint

    # SmolLM2-135M-shaped (30 layers, hidden 576, intermediate 1536, 135M parameters), 21 GiB free
    return Footprint(layers=30, hidden=576, intermediate=1536, parameters=135_000_000, free_bytes=21 * GIB)


def qwen7b_footprint():  # noqa: ANN201
    from finetune.hyperparams import Footprint

    # Qwen2.5-7B-shaped on a 141 GB GPU
    return Footprint(layers=28, hidden=3584, intermediate=18944, parameters=7_600_000_000, free_bytes=140 * GIB)


def test_gradient_checkpointing_auto_rule() -> None:
    smollm = smollm2_footprint()
    hp = parse({"batch_size": 4, "cutoff_len": 256}, "supervised", P)
    # 4 × 256 tokens would keep ~1.4 GiB of fp32 activations; a CPU pass keeps at most 256 MiB: far from a third
    # of 21 GiB → off
    assert smollm.activation_bytes(1024, "fp32") == pytest.approx(1.36 * GIB, rel=0.05)
    assert (
        resolve(hp, n_examples=200, method="supervised", device="cpu", footprint=smollm).gradient_checkpointing is False
    )
    # the defaults' 2048-token cutoff at batch 8 would keep ~22 GiB in one pass, but micro-batches hold at most one
    # full-length example (~2.8 GiB) → off; one example of 16 384 tokens keeps ~22 GiB → on
    big = parse({"batch_size": 8}, "supervised", P)
    assert (
        resolve(big, n_examples=200, method="supervised", device="cpu", footprint=smollm).gradient_checkpointing
        is False
    )
    huge = parse({"batch_size": 8, "cutoff_len": 16384}, "supervised", P)
    assert resolve(huge, n_examples=200, method="supervised", device="cpu", footprint=smollm).gradient_checkpointing
    # Qwen2.5-7B-shaped in bf16: batch 4 × 2048 tokens would keep ~48 GiB, over a third of the ~126 GiB the
    # weights leave: micro-batches of ~7 200 tokens instead, no checkpointing; one 8192-token example (~48 GiB) → on
    qwen7b = qwen7b_footprint()
    split = resolve(
        parse({"batch_size": 4}, "supervised", P), n_examples=200, method="supervised", device="cuda", footprint=qwen7b
    )
    assert split.gradient_checkpointing is False and 4096 < split.micro_batch_tokens < 8192
    long = resolve(
        parse({"batch_size": 1, "cutoff_len": 8192}, "supervised", P),
        n_examples=200,
        method="supervised",
        device="cuda",
        footprint=qwen7b,
    )
    assert long.gradient_checkpointing is True
    # explicit values win; without a footprint (the gateway) auto is off until the worker re-resolves
    assert (
        resolve(
            parse({"gradient_checkpointing": True}, "supervised", P),
            n_examples=20,
            method="supervised",
            device="cpu",
            footprint=smollm,
        ).gradient_checkpointing
        is True
    )
    assert resolve(hp, n_examples=20, method="supervised", device="cpu").gradient_checkpointing is False
    with pytest.raises(InvalidRequest):
        parse({"gradient_checkpointing": "sometimes"}, "supervised", P)


def test_micro_batch_tokens_auto_rule() -> None:
    smollm, qwen7b = smollm2_footprint(), qwen7b_footprint()

    def micro(raw: dict, footprint, device: str = "cpu", method: str = "supervised") -> int:  # noqa: ANN001
        hp = parse(raw, method, P)
        return resolve(hp, n_examples=200, method=method, device=device, footprint=footprint).micro_batch_tokens

    # CPU: 256 MiB of activations per pass — SmolLM2 keeps ~1.4 MB per fp32 token → 187 tokens, ~0.7 MB in bf16
    assert micro({"batch_size": 4, "cutoff_len": 256, "precision": "fp32"}, smollm) == 187
    assert micro({"batch_size": 4, "cutoff_len": 256, "precision": "bf16"}, smollm) == 375
    # never more than the batch can hold: 4 × 32 tokens
    assert micro({"batch_size": 4, "cutoff_len": 32, "precision": "fp32"}, smollm) == 128
    # CUDA: a third of the spare memory (~7 200 bf16 tokens of the 7B shape), capped by the batch (4 × 1024)
    assert micro({"batch_size": 4, "cutoff_len": 1024, "precision": "bf16"}, qwen7b, "cuda") == 4096
    assert micro({"batch_size": 8, "cutoff_len": 2048, "precision": "bf16"}, qwen7b, "cuda") == pytest.approx(
        7200, rel=0.02
    )
    # the gateway (no footprint) and the other methods: the whole batch in one pass
    assert micro({"batch_size": 4, "cutoff_len": 256}, None) == 1024
    assert micro({"batch_size": 4, "cutoff_len": 256, "beta": 0.1}, smollm, method="dpo") == 1024
    # explicit values win (capped by the batch), supervised only
    assert micro({"batch_size": 8, "micro_batch_tokens": 512}, smollm) == 512
    with pytest.raises(InvalidRequest) as caught:
        parse({"micro_batch_tokens": 512}, "dpo", "method.dpo.hyperparameters")
    assert caught.value.param == "method.dpo.hyperparameters.micro_batch_tokens"
    with pytest.raises(InvalidRequest) as caught:
        parse({"micro_batch_tokens": 8}, "supervised", P)
    assert caught.value.param == f"{P}.micro_batch_tokens"


def test_a_stored_method_reads_back_as_the_recipe_type() -> None:
    assert [method_of(m) for m in ("supervised", "dpo", "reinforcement")] == list(METHODS)
    with pytest.raises(ValueError, match="unknown fine-tuning method 'sft'"):
        method_of("sft")
