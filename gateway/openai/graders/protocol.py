"""``/v1/fine_tuning/alpha/graders`` wire objects: ``RunGraderResponse`` (``ValidateGraderResponse`` echoes the
checked grader)."""

from __future__ import annotations

from typing import Any

from finetune.graders.engine import Outcome

ERROR_FLAGS = (
    "formula_parse_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
    "invalid_variable_error",
    "other_error",
    "python_grader_server_error",
    "python_grader_runtime_error",
    "model_grader_server_error",
    "model_grader_refusal_error",
    "model_grader_parse_error",
)


def run_response(grader: dict[str, Any], outcome: Outcome, seconds: float) -> dict[str, Any]:
    errors: dict[str, Any] = {flag: outcome.kind == flag for flag in ERROR_FLAGS}
    errors["python_grader_server_error_type"] = outcome.error if outcome.kind == "python_grader_server_error" else None
    errors["python_grader_runtime_error_details"] = (
        outcome.error if outcome.kind == "python_grader_runtime_error" else None
    )
    errors["model_grader_server_error_details"] = outcome.error if outcome.kind == "model_grader_server_error" else None
    if outcome.error is not None and outcome.kind not in ERROR_FLAGS:
        errors["other_error"] = True
    tokens = sum(u.get("total_tokens", 0) for u in outcome.usage.values())
    judges = list(outcome.usage)
    return {
        "reward": outcome.score if outcome.score is not None else 0.0,
        "metadata": {
            "name": grader["name"],
            "type": grader["type"],
            "errors": errors,
            "execution_time": seconds,
            "scores": dict(outcome.sub),
            "token_usage": tokens if outcome.usage else None,
            "sampled_model_name": judges[0] if len(judges) == 1 else None,
        },
        "sub_rewards": dict(outcome.sub),
        "model_grader_token_usage_per_model": outcome.usage,
    }
