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


def test_gradient_checkpointing_auto_rule() -> None:
    from finetune.hyperparams import Footprint

    gib = 2**30
    # SmolLM2-135M-shaped (30 layers, hidden 576, intermediate 1536, 135M parameters)
    smollm = Footprint(layers=30, hidden=576, intermediate=1536, parameters=135_000_000, free_bytes=21 * gib)
    hp = parse({"batch_size": 4, "cutoff_len": 256}, "supervised", P)
    # 4 × 256 tokens keep ~1.4 GiB of fp32 activations: far from a third of 21 GiB → off
    assert smollm.activation_bytes(1024, "fp32") == pytest.approx(1.36 * gib, rel=0.05)
    assert (
        resolve(hp, n_examples=200, method="supervised", device="cpu", footprint=smollm).gradient_checkpointing is False
    )
    # the defaults' 2048-token cutoff at batch 8: ~22 GiB → on
    big = parse({"batch_size": 8}, "supervised", P)
    assert (
        resolve(big, n_examples=200, method="supervised", device="cpu", footprint=smollm).gradient_checkpointing is True
    )
    # Qwen2.5-7B-shaped on a 141 GB GPU in bf16: batch 4 × 2048 tokens keep ~48 GiB, over a third of the
    # ~126 GiB the weights leave; at cutoff 1024, ~24 GiB → off
    qwen7b = Footprint(layers=28, hidden=3584, intermediate=18944, parameters=7_600_000_000, free_bytes=140 * gib)
    on = resolve(
        parse({"batch_size": 4}, "supervised", P), n_examples=200, method="supervised", device="cuda", footprint=qwen7b
    )
    assert on.gradient_checkpointing is True
    short = resolve(
        parse({"batch_size": 4, "cutoff_len": 1024}, "supervised", P),
        n_examples=200,
        method="supervised",
        device="cuda",
        footprint=qwen7b,
    )
    assert short.gradient_checkpointing is False
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


def test_a_stored_method_reads_back_as_the_recipe_type() -> None:
    assert [method_of(m) for m in ("supervised", "dpo", "reinforcement")] == list(METHODS)
    with pytest.raises(ValueError, match="unknown fine-tuning method 'sft'"):
        method_of("sft")
