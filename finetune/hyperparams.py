"""Fine-tuning hyperparameters: OpenAI's three plus the LoRA knobs LLaMA-Factory users know, in one place.

``Hyperparameters`` is what a job request carries (``method.<type>.hyperparameters``; every field optional,
OpenAI's accept ``"auto"``). ``resolve`` turns it into ``Resolved``: concrete values from the data size and the
device, echoed back on the job. Field descriptions name the LLaMA-Factory argument each one mirrors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal, TypedDict, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from storage.errors import InvalidRequest

Auto = Literal["auto"]
BASE_LEARNING_RATE = 1e-4  # learning_rate_multiplier=1.0; LLaMA-Factory's LoRA examples use 1e-4
Method = Literal["supervised", "dpo", "reinforcement"]
METHODS: tuple[Method, ...] = get_args(Method)
ReasoningEffort = Literal["default", "low", "medium", "high"]
RFT_ONLY = ("compute_multiplier", "eval_interval", "eval_samples", "reasoning_effort", "max_completion_length")
MAX_MICRO_BATCH_TOKENS = 2**22  # micro_batch_tokens' ceiling: a pass this large never splits a batch
BASE_GENERATIONS = 8  # completions per prompt at compute_multiplier 1.0 (TRL's GRPO default)
# reasoning_effort → tokens a completion may take (max_completion_length): reasoning models think first
COMPLETION_BUDGET = {
    False: {"low": 128, "default": 256, "medium": 256, "high": 512},
    True: {"low": 1024, "default": 2048, "medium": 2048, "high": 4096},
}


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = Field("auto", description="num_train_epochs")
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = Field("auto", description="per_device_train_batch_size")
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = Field(
        "auto", description=f"× {BASE_LEARNING_RATE} (ignored when learning_rate is set)"
    )
    beta: Auto | Annotated[float, Field(ge=0, le=2)] = Field(
        "auto", description="DPO: pref_beta; reinforcement: the KL coefficient to the LoRA-disabled model"
    )
    compute_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = Field(
        "auto", description=f"reinforcement: × {BASE_GENERATIONS} sampled completions per prompt (num_generations)"
    )
    eval_interval: Auto | Annotated[int, Field(ge=1)] = Field(
        "auto", description="reinforcement: training steps between evaluations (and checkpoints)"
    )
    eval_samples: Auto | Annotated[int, Field(ge=1)] = Field(
        "auto", description="reinforcement: validation prompts graded at each evaluation"
    )
    reasoning_effort: ReasoningEffort = Field(
        "default", description="reinforcement: the completion token budget (max_completion_length)"
    )
    max_completion_length: Annotated[int, Field(ge=1, le=32768)] | None = Field(
        None, description="reinforcement: tokens per sampled completion (overrides reasoning_effort's budget)"
    )
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = Field(None, description="learning_rate (absolute)")
    lora_rank: Annotated[int, Field(ge=1, le=256)] = Field(8, description="lora_rank")
    lora_alpha: Annotated[int, Field(ge=1, le=1024)] | None = Field(None, description="lora_alpha (default 2 × rank)")
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="lora_dropout")
    lora_target: Literal["all"] | Annotated[list[str], Field(min_length=1)] = Field(
        "all", description="lora_target: 'all' linear layers, or module names such as q_proj,v_proj"
    )
    loraplus_lr_ratio: Annotated[float, Field(gt=0, le=64)] | None = Field(None, description="loraplus_lr_ratio")
    cutoff_len: Annotated[int, Field(ge=16, le=131072)] = Field(2048, description="cutoff_len (tokens per example)")
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = Field(
        1, description="gradient_accumulation_steps"
    )
    max_grad_norm: Annotated[float, Field(gt=0)] = Field(1.0, description="max_grad_norm")
    lr_scheduler_type: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial", "inverse_sqrt"
    ] = Field("cosine", description="lr_scheduler_type")
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="warmup_ratio")
    packing: bool = Field(False, description="packing (padding-free, no cross-example attention)")
    group_by_length: bool = Field(
        True, description="HF group_by_length: batch examples of similar length (little padding); ignored with packing"
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="bf16 / fp16 / pure fp32")
    micro_batch_tokens: Auto | Annotated[int, Field(ge=16, le=MAX_MICRO_BATCH_TOKENS)] = Field(
        "auto",
        description="supervised: at most this many (padded) tokens per forward/backward pass — a larger batch runs as "
        "micro-batches of whole examples whose gradients accumulate into its one optimizer step (the same update, "
        "less activation memory); auto: see auto_micro_batch_tokens",
    )
    gradient_checkpointing: Auto | bool = Field(
        "auto",
        description="recompute each layer's activations in the backward pass (LLaMA-Factory: on unless "
        "disable_gradient_checkpointing); auto: on when a micro-batch's activations would not fit comfortably",
    )
    quantization_bit: Literal[4, 8] | None = Field(None, description="quantization_bit: QLoRA, CUDA only")

    @model_validator(mode="after")
    def _cross_checks(self) -> Hyperparameters:
        if self.lora_target != "all" and any(
            not t or not t.replace("_", "").replace(".", "").isalnum() for t in self.lora_target
        ):
            raise ValueError("lora_target entries must be module names such as 'q_proj'")
        return self


class Resolved(BaseModel):
    """Concrete values a job trains with (and shows in ``hyperparameters``)."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    beta: float | None
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    lora_target: Literal["all"] | list[str]
    loraplus_lr_ratio: float | None
    cutoff_len: int
    gradient_accumulation_steps: int
    max_grad_norm: float
    lr_scheduler_type: str
    warmup_ratio: float
    packing: bool
    group_by_length: bool
    precision: Literal["bf16", "fp16", "fp32"]
    micro_batch_tokens: int
    gradient_checkpointing: bool
    quantization_bit: Literal[4, 8] | None
    # reinforcement only (None otherwise)
    compute_multiplier: float | None = None
    num_generations: int | None = None
    eval_interval: int | None = None
    eval_samples: int | None = None
    reasoning_effort: ReasoningEffort | None = None
    max_completion_length: int | None = None


@dataclass(frozen=True)
class Footprint:
    """What the ``gradient_checkpointing: "auto"`` rule needs to know about the model and the device's memory."""

    layers: int
    hidden: int
    intermediate: int
    parameters: int
    free_bytes: int  # before the model is loaded: free CUDA memory, or the host's MemAvailable

    def activation_bytes(self, tokens: int, precision: str) -> int:
        """Activations a batch of ``tokens`` keeps for the backward pass without checkpointing.

        Per token and decoder layer, what autograd saves in a Llama-style layer with LoRA on a frozen base:
        about 10 hidden-sized tensors (the two RMSNorms' inputs and outputs, the q/k/v/o inputs, attention's
        q/k/v/output) and 4 intermediate-sized ones (SwiGLU's gate, up, act(gate), product). SmolLM2-135M, 4 × 256
        tokens, fp32: 1 394 MiB estimated, 1 179 MiB measured (tests/test_recipe.py holds the tiny model to 2×).
        """
        return tokens * self.layers * (10 * self.hidden + 4 * self.intermediate) * _bytes_per_value(precision)

    def spare_bytes(self, precision: str) -> int:
        """Free memory once the weights are loaded in ``precision``."""
        return self.free_bytes - self.parameters * _bytes_per_value(precision)


def _bytes_per_value(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def method_of(value: str) -> Method:
    """A stored job's ``method`` column (checked at create: one of ``METHODS``) as the type the recipe takes."""
    for method in METHODS:
        if value == method:
            return method
    raise ValueError(f"unknown fine-tuning method {value!r}")


def parse(raw: dict | None, method: Method, param: str) -> Hyperparameters:
    """Validate a request's hyperparameters; a bad one is a 400 naming the field (``param.field``)."""
    try:
        hp = Hyperparameters.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""  # a union adds its branch after the field name
        where = f"{param}.{field}" if field else param
        raise InvalidRequest(
            f"Invalid hyperparameter {where}: {first['msg']}.", param=where, code="invalid_hyperparameter"
        ) from None
    if method == "supervised" and hp.beta != "auto":
        raise InvalidRequest(
            "beta is a DPO or reinforcement hyperparameter.", param=f"{param}.beta", code="invalid_hyperparameter"
        )
    if method == "dpo" and hp.beta == 0:
        raise InvalidRequest("DPO needs beta > 0.", param=f"{param}.beta", code="invalid_hyperparameter")
    if method != "supervised" and hp.packing:
        raise InvalidRequest(
            f"packing is not supported with {method}.", param=f"{param}.packing", code="invalid_hyperparameter"
        )
    if method != "supervised" and hp.micro_batch_tokens != "auto":
        raise InvalidRequest(
            f"micro_batch_tokens is not supported with {method}.",
            param=f"{param}.micro_batch_tokens",
            code="invalid_hyperparameter",
        )
    if method != "reinforcement":
        given = next((f for f in RFT_ONLY if f in hp.model_fields_set), None)
        if given:
            raise InvalidRequest(
                f"{given} is a reinforcement hyperparameter.", param=f"{param}.{given}", code="invalid_hyperparameter"
            )
    return hp


def resolve(
    hp: Hyperparameters,
    *,
    n_examples: int,
    method: Method,
    device: Literal["cuda", "cpu"],
    bf16_ok: bool | None = None,
    footprint: Footprint | None = None,
    param: str = "hyperparameters",
    reasoning: bool = False,
) -> Resolved:
    """Fill in every ``"auto"`` from the data size and device; refuse what the device cannot do."""
    if hp.quantization_bit and device != "cuda":
        raise InvalidRequest(
            "QLoRA (quantization_bit) needs a CUDA GPU; this worker has none.",
            param=f"{param}.quantization_bit",
            code="unsupported_on_device",
        )
    precision = hp.precision
    if precision == "auto":
        # bf16 where the hardware does it natively: CUDA (Ampere+), CPUs with AVX512-BF16 / AMX (2.4× fp32 in
        # bench/train). Unknown (the gateway, which never loads torch): CUDA yes, CPU no; the worker re-resolves.
        native = bf16_ok if bf16_ok is not None else device == "cuda"
        precision = "bf16" if native else "fp32"
    elif precision == "fp16" and device != "cuda":
        raise InvalidRequest(
            "fp16 training needs a CUDA GPU; use bf16 or fp32.",
            param=f"{param}.precision",
            code="unsupported_on_device",
        )
    multiplier = 1.0 if hp.learning_rate_multiplier == "auto" else float(hp.learning_rate_multiplier)
    batch_size = auto_batch_size(n_examples) if hp.batch_size == "auto" else hp.batch_size
    whole = batch_size * hp.cutoff_len  # the most a batch can hold
    if hp.micro_batch_tokens != "auto":
        micro = min(hp.micro_batch_tokens, whole)
    else:
        micro = min(auto_micro_batch_tokens(footprint, precision, device), whole) if method == "supervised" else whole
    checkpointing = hp.gradient_checkpointing
    if checkpointing == "auto":  # the largest pass: a micro-batch, or one full-length example on its own
        checkpointing = auto_checkpointing(footprint, min(whole, max(micro, hp.cutoff_len)), precision)
    n_epochs = auto_epochs(n_examples) if hp.n_epochs == "auto" else hp.n_epochs
    rl: RLKnobs = (
        _reinforcement(hp, n_epochs * math.ceil(n_examples / batch_size), reasoning)
        if method == "reinforcement"
        else {}
    )
    return Resolved(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate_multiplier=multiplier,
        learning_rate=hp.learning_rate or BASE_LEARNING_RATE * multiplier,
        beta=(DEFAULT_BETA[method] if hp.beta == "auto" else hp.beta) if method in DEFAULT_BETA else None,
        lora_rank=hp.lora_rank,
        lora_alpha=hp.lora_alpha or 2 * hp.lora_rank,
        lora_dropout=hp.lora_dropout,
        lora_target=hp.lora_target,
        loraplus_lr_ratio=hp.loraplus_lr_ratio,
        cutoff_len=hp.cutoff_len,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        max_grad_norm=hp.max_grad_norm,
        lr_scheduler_type=hp.lr_scheduler_type,
        warmup_ratio=hp.warmup_ratio,
        packing=hp.packing,
        group_by_length=hp.group_by_length and not hp.packing,
        precision=precision,
        micro_batch_tokens=micro,
        gradient_checkpointing=checkpointing,
        quantization_bit=hp.quantization_bit,
        **rl,
    )


DEFAULT_BETA = {"dpo": 0.1, "reinforcement": 0.04}  # reinforcement: DeepSeekMath's GRPO KL coefficient


class RLKnobs(TypedDict, total=False):
    """``Resolved``'s reinforcement-only fields, as ``_reinforcement`` fills them."""

    compute_multiplier: float
    num_generations: int
    eval_interval: int
    eval_samples: int
    reasoning_effort: ReasoningEffort
    max_completion_length: int


def _reinforcement(hp: Hyperparameters, total_steps: int, reasoning: bool) -> RLKnobs:
    """GRPO's knobs from OpenAI's: completions per prompt, evaluation cadence, the completion budget."""
    multiplier = 1.0 if hp.compute_multiplier == "auto" else float(hp.compute_multiplier)
    return RLKnobs(
        compute_multiplier=multiplier,
        num_generations=max(2, min(64, round(BASE_GENERATIONS * multiplier))),  # GRPO needs ≥ 2 to compare
        eval_interval=max(1, total_steps // 10) if hp.eval_interval == "auto" else hp.eval_interval,
        eval_samples=32 if hp.eval_samples == "auto" else hp.eval_samples,
        reasoning_effort=hp.reasoning_effort,
        max_completion_length=hp.max_completion_length or COMPLETION_BUDGET[reasoning][hp.reasoning_effort],
    )


def auto_epochs(n_examples: int) -> int:
    """OpenAI's rule of thumb: 3 epochs, more for tiny sets (≥100 example passes), fewer for huge ones (≤25k)."""
    if n_examples * 3 < 100:
        return min(25, math.ceil(100 / n_examples))
    if n_examples * 3 > 25_000:
        return max(1, 25_000 // n_examples)
    return 3


def auto_batch_size(n_examples: int) -> int:
    """About 0.2 % of the examples, between 1 and 32 (LoRA on one GPU; raise it explicitly for more)."""
    return max(1, min(32, round(n_examples * 0.002)))


CPU_PASS_BYTES = 256 * 2**20  # activations one forward/backward pass may keep on CPU


def auto_micro_batch_tokens(footprint: Footprint | None, precision: str, device: Literal["cuda", "cpu"]) -> int:
    """Tokens per forward/backward pass: a batch with more (padded: examples × its longest) is split into
    micro-batches of whole examples, each trimmed to its own longest, whose gradients accumulate.

    The split gives the same optimizer step — the loss is normalised over the whole batch's labelled tokens — with
    the activations of one micro-batch, and, unlike gradient checkpointing, recomputes nothing. What it can cost is
    width: a GPU needs wide matrix multiplies, so on CUDA a pass may keep up to a third of the spare memory (the
    bound ``auto_checkpointing`` applies). A CPU loses little: one example's multiplies nearly fill its cores, so
    there a pass keeps at most ``CPU_PASS_BYTES`` — as much as the frozen-head loss's logits chunk
    (``recipe/loss.py``) — and a LoRA job's peak memory stays near the model, its optimizer and one example's
    activations (SmolLM2-135M, batch 4 × ≤ 256 tokens, fp32: 11 % slower than the batch in one pass, 1.9 instead
    of 3.6 GiB peak, below LLaMA-Factory's checkpointed 2.6 GiB: docs/benchmarks.md, issue 18). Unknown footprint
    (the gateway, which never reads the model): no split; the worker re-resolves with the model and the device.
    """
    if footprint is None:
        return MAX_MICRO_BATCH_TOKENS
    budget = footprint.spare_bytes(precision) / 3
    if device == "cpu":
        budget = min(budget, CPU_PASS_BYTES)
    return max(16, int(budget // footprint.activation_bytes(1, precision)))


def auto_checkpointing(footprint: Footprint | None, batch_tokens: int, precision: str) -> bool:
    """On when the largest pass (a micro-batch, or one full-length example) would keep more than a third of the
    spare memory in activations.

    Checkpointing costs one more forward pass — ~+50 % step time under LoRA, whose frozen base makes the backward
    pass about one forward (docs/NOTES.md) — and saves nearly all activation memory, so it is only worth it when
    memory is the constraint. A third, not all: the estimate leaves out the LM head's logits,
    attention workspaces and allocator slack, and on a shared machine (a serving engine on the same GPU, other
    jobs' RAM) the free memory at the start is not guaranteed for the whole job. Unknown footprint (the gateway,
    which never reads the model): off; the worker re-resolves with the model and the device in hand.
    """
    if footprint is None:
        return False
    return footprint.activation_bytes(batch_tokens, precision) > footprint.spare_bytes(precision) / 3
