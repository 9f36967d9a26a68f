"""RFT rollouts constrained to the job's ``response_format`` (``json_schema`` / ``json_object``), as OpenAI's RFT
samples them: every completion — training and evaluation alike — is JSON of that schema (unless the completion
budget, ``max_completion_length``, cuts it short), so the grader's ``sample.output_json`` is always there.

One grammar for both samplers: xgrammar turns the schema into an EBNF grammar without free whitespace (``json.
dumps``'s separators ``", "`` and ``": "`` only: with a free ``[ \\n\\t]*`` a small or half-trained model can spend
its whole budget on whitespace), and

- the serving engine (vLLM, ``finetune.recipe.rollouts``) is sent that grammar as ``structured_outputs.grammar``
  (vLLM 0.32 reads ``disable_any_whitespace`` from its engine config only, so a per-request ``json`` would allow
  whitespace there and not here);
- HF ``generate`` applies the same grammar, compiled for the training tokenizer, through xgrammar's transformers
  logits processor (``HFRollouts``: TRL's own generate path takes no logits processor).

A schema xgrammar cannot compile, or a worker without xgrammar, fails the job before training starts
(``ConstraintError``, ``invalid_response_format``) — never unconstrained rollouts.
"""

from __future__ import annotations

import json
import re
from typing import Any

from storage.errors import TunegateError

PARAM = "method.reinforcement.response_format"
_XGR_PREFIX = re.compile(r"^\[[^\]]*\] \S+:\d+: ")


class ConstraintError(TunegateError):
    default_code = "invalid_response_format"


def schema_of(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a response_format constrains to (``json_object``: any object), None for text / absent."""
    kind = (response_format or {}).get("type")
    if kind == "json_schema":
        return dict(response_format["json_schema"]["schema"])  # type: ignore[index]  # checked at create
    if kind == "json_object":
        return {"type": "object"}
    return None


def grammar_of(schema: dict[str, Any]) -> Any:
    """xgrammar's grammar of ``schema`` (no tokenizer needed: the gateway checks a job's schema with it at create);
    ConstraintError when xgrammar is missing or cannot convert the schema (a ``$ref`` to nothing, a bad ``pattern``)."""
    try:
        import xgrammar as xgr
    except ImportError as exc:
        raise ConstraintError(
            f"This worker cannot constrain rollouts to {PARAM} (xgrammar is not installed).", param=PARAM
        ) from exc
    try:
        return xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError for unsupported schemas
        raise ConstraintError(f"The rollouts cannot be constrained to {PARAM}: {_reason(exc)}", param=PARAM) from exc


# A reasoning model's completion before its answer: free text up to the first "</think>" (the template may already
# have opened the block, or the model opens it: "<think>" is text here too), then line breaks or spaces.
THINK_EBNF = (
    r'root ::= ([^<] | "<" [^/] | "</" [^t] | "</t" [^h] | "</th" [^i] | "</thi" [^n] | "</thin" [^k] '
    r'| "</think" [^>])* "</think>" [\n ]*'
)


def _after_thinking(grammar: Any) -> Any:
    """``grammar`` preceded by a reasoning block, so a reasoning model (DeepSeek-R1-Distill) thinks first and
    answers in the format after ``</think>`` — what the grader reads (``rft.GraderReward`` strips the block)."""
    import xgrammar as xgr

    return xgr.Grammar.concat(xgr.Grammar.from_ebnf(THINK_EBNF), grammar)


def _reason(exc: Exception) -> str:
    return _XGR_PREFIX.sub("", str(exc).strip())[:300]  # "[14:38:24] /project/cpp/x.cc:4950: " goes


class Constraint:
    """The grammar of one job's JSON response_format: ``engine_fields`` for ``/v1/completions`` and a fresh HF
    logits processor per ``generate`` call (xgrammar's processor keeps per-row matchers: single use)."""

    def __init__(self, schema: dict[str, Any], tokenizer: Any, vocab_size: int, *, reasoning: bool = False) -> None:
        """``reasoning``: the model writes ``<think>…</think>`` before its answer (``TrainSpec.reasoning``)."""
        grammar = _after_thinking(grammar_of(schema)) if reasoning else grammar_of(schema)
        import xgrammar as xgr

        try:
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
            self.compiled = xgr.GrammarCompiler(info, max_threads=1).compile_grammar(grammar)
        except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError for unsupported schemas
            raise ConstraintError(
                f"The rollouts cannot be constrained to {PARAM}: {_reason(exc)}", param=PARAM
            ) from exc
        self.ebnf = str(grammar)

    @classmethod
    def of(
        cls, response_format: dict[str, Any] | None, tokenizer: Any, model: Any, *, reasoning: bool = False
    ) -> Constraint | None:
        schema = schema_of(response_format)
        vocab = int(model.config.vocab_size)
        return None if schema is None else cls(schema, tokenizer, vocab, reasoning=reasoning)

    def engine_fields(self) -> dict[str, Any]:
        return {"structured_outputs": {"grammar": self.ebnf}}

    def logits_processor(self) -> Any:
        import xgrammar as xgr

        return xgr.contrib.hf.LogitsProcessor(self.compiled)


class HFRollouts:
    """``rollout_func`` sampling with HF ``generate`` on the training model under ``constraint`` — TRL's regular
    generate path (left-padded prompts, the trainer's generation config, everything after the first EOS dropped)
    with the grammar's logits processor added."""

    def __init__(self, constraint: Constraint) -> None:
        self.constraint = constraint

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        import torch
        from trl.models.utils import unwrap_model_for_generation
        from trl.trainer.utils import pad

        prompt_ids = trainer._tokenize_prompts(prompts)[0]
        tensors = [torch.tensor(ids) for ids in prompt_ids]
        inputs = {
            "input_ids": pad(tensors, padding_value=trainer._tokenizer.pad_token_id, padding_side="left"),
            "attention_mask": pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left"),
        }
        inputs = {k: v.to(trainer.accelerator.device) for k, v in inputs.items()}
        with (
            unwrap_model_for_generation(
                trainer.model_wrapped, trainer.accelerator, generation_kwargs=trainer.generation_kwargs
            ) as model,
            torch.no_grad(),
        ):
            out = model.generate(
                **inputs,
                generation_config=trainer.generation_config,
                logits_processor=[self.constraint.logits_processor()],
            )
        completions = out[:, inputs["input_ids"].size(1) :].cpu().tolist()
        completion_ids = [_until_eos(c, trainer.eos_token_ids) for c in completions]
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}  # as TRL's HF path


def _until_eos(ids: list[int], eos: list[int]) -> list[int]:
    """``ids`` up to and including the first EOS (the rest is padding), as TRL cuts its own samples."""
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1]
    return ids
