"""Grader definitions checked where they are created (evals.create, graders.validate / run, later RFT jobs).

Every problem is a 400 whose ``param`` points into the request (``testing_criteria[2].source``): an unknown type,
operation or metric, an unknown key, a template naming a namespace that does not exist, Python source that does not
compile or defines no ``grade``, a judge model the organization cannot use (404 ``model_not_found``, raised by
``model_exists``), a ``calculate_output`` that does not parse or names no grader. Nothing is executed here: a
Python grader's source is compiled, never run.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import Any

from finetune.graders import formula, templates
from finetune.graders.messages import MessageError, templates_in
from finetune.graders.similarity import METRICS, OPERATIONS
from storage.errors import InvalidRequest

ALL_TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model", "multi")
EVAL_TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model")
MAX_SOURCE = 256 * 1024
KEYS = {
    "string_check": {"type", "name", "input", "reference", "operation"},
    "text_similarity": {"type", "name", "input", "reference", "evaluation_metric", "pass_threshold"},
    "python": {"type", "name", "source", "image_tag", "pass_threshold"},
    "score_model": {"type", "name", "model", "input", "range", "sampling_params", "pass_threshold"},
    "label_model": {"type", "name", "model", "input", "labels", "passing_labels"},
    "multi": {"type", "name", "graders", "calculate_output"},
}
SAMPLING: dict[str, type | tuple[type, ...]] = {
    "seed": int,
    "top_p": (int, float),
    "temperature": (int, float),
    "max_completions_tokens": int,
    "reasoning_effort": str,
}
ModelExists = Callable[[str], None]  # raises NotFound for a model the organization cannot use


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def check(
    grader: Any,
    param: str,
    model_exists: ModelExists,
    *,
    types: tuple[str, ...] = ALL_TYPES,
    eval_criterion: bool = False,
) -> dict[str, Any]:
    """``grader`` checked; returns it (a copy) as it is stored and echoed."""
    if not isinstance(grader, dict):
        raise _bad(f"'{param}' must be a grader object.", param, "invalid_type")
    kind = grader.get("type")
    if kind not in types:
        raise _bad(
            f"{param}.type {kind!r} is not a grader type here; one of {', '.join(types)}.",
            f"{param}.type",
            "unsupported_value",
        )
    unknown = sorted(set(grader) - KEYS[kind])
    if unknown:
        raise _bad(
            f"Unknown parameter: '{param}.{unknown[0]}' ({kind} graders take {', '.join(sorted(KEYS[kind]))}).",
            f"{param}.{unknown[0]}",
            "unknown_parameter",
        )
    name = grader.get("name")
    if not isinstance(name, str) or not name or len(name) > 256:
        raise _bad(
            f"{param}.name must be a string of 1 to 256 characters.",
            f"{param}.name",
            "missing_required_parameter" if name is None else "invalid_value",
        )
    out = dict(grader)
    if kind in ("string_check", "text_similarity"):
        for key in ("input", "reference"):
            _template(grader.get(key), f"{param}.{key}")
        if kind == "string_check":
            _one_of(grader.get("operation"), OPERATIONS, f"{param}.operation")
        else:
            _one_of(grader.get("evaluation_metric"), METRICS, f"{param}.evaluation_metric")
            _threshold(grader, param, required=eval_criterion)
    elif kind == "python":
        _python(grader.get("source"), f"{param}.source")
        if "image_tag" in grader and not isinstance(grader["image_tag"], str):
            raise _bad(f"{param}.image_tag must be a string.", f"{param}.image_tag", "invalid_type")
        _threshold(grader, param, required=False)
    elif kind in ("score_model", "label_model"):
        _model_grader(grader, param, model_exists)
    else:
        _multi(grader, param, model_exists)
    return out


def _template(value: Any, param: str) -> None:
    if not isinstance(value, str):
        raise _bad(
            f"{param} must be a string (it may hold templates such as {{{{sample.output_text}}}}).",
            param,
            "missing_required_parameter" if value is None else "invalid_type",
        )
    problem = templates.problem(value)
    if problem:
        raise _bad(f"{param}: {problem}.", param)


def _one_of(value: Any, allowed: tuple[str, ...], param: str) -> None:
    if value not in allowed:
        raise _bad(f"{param} {value!r} is not supported; one of {', '.join(allowed)}.", param, "unsupported_value")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _threshold(grader: dict[str, Any], param: str, *, required: bool) -> None:
    if "pass_threshold" not in grader and not required:
        return
    if not _number(grader.get("pass_threshold")):
        raise _bad(
            f"{param}.pass_threshold must be a number.",
            f"{param}.pass_threshold",
            "missing_required_parameter" if "pass_threshold" not in grader else "invalid_type",
        )


def _python(source: Any, param: str) -> None:
    if not isinstance(source, str) or not source.strip():
        raise _bad(f"{param} must be Python source defining grade(sample, item).", param)
    if len(source.encode()) > MAX_SOURCE:
        raise _bad(f"{param} is larger than {MAX_SOURCE // 1024} KiB.", param, "string_above_max_length")
    try:
        tree = ast.parse(source)
        compile(tree, "<grader>", "exec")
    except (SyntaxError, ValueError) as exc:
        line = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        raise _bad(f"{param} does not compile{line}: {getattr(exc, 'msg', exc)}.", param) from None
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    defined |= {(a.asname or a.name) for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    if "grade" not in defined:
        raise _bad(f"{param} defines no top-level function grade(sample, item).", param)


def _model_grader(grader: dict[str, Any], param: str, model_exists: ModelExists) -> None:
    model = grader.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(f"{param}.model must name a model.", f"{param}.model", "missing_required_parameter")
    try:
        found = templates_in(grader.get("input"))
    except MessageError as exc:
        raise _bad(f"{param}.input{exc.where} {exc}.", f"{param}.input{exc.where}") from None
    for where, text in found:
        problem = templates.problem(text)
        if problem:
            raise _bad(f"{param}.input{where}: {problem}.", f"{param}.input{where}")
    if grader["type"] == "score_model":
        bounds = grader.get("range", [0, 1])
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(_number, bounds)) and bounds[0] < bounds[1]):
            raise _bad(f"{param}.range must be [low, high] with low < high.", f"{param}.range")
        params = grader.get("sampling_params") or {}
        if not isinstance(params, dict):
            raise _bad(f"{param}.sampling_params must be an object.", f"{param}.sampling_params", "invalid_type")
        for key, value in params.items():
            if key not in SAMPLING:
                raise _bad(
                    f"Unknown parameter: '{param}.sampling_params.{key}'.",
                    f"{param}.sampling_params.{key}",
                    "unknown_parameter",
                )
            if value is not None and (not isinstance(value, SAMPLING[key]) or isinstance(value, bool)):
                raise _bad(
                    f"{param}.sampling_params.{key} has the wrong type.",
                    f"{param}.sampling_params.{key}",
                    "invalid_type",
                )
        _threshold(grader, param, required=False)
    else:
        for key in ("labels", "passing_labels"):
            value = grader.get(key)
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise _bad(f"{param}.{key} must be a non-empty array of strings.", f"{param}.{key}")
        if not set(grader["passing_labels"]) <= set(grader["labels"]):
            raise _bad(f"{param}.passing_labels must be a subset of labels.", f"{param}.passing_labels")
    model_exists(model)


def named_graders(grader: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """A multi grader's (formula variable, param suffix, grader): ``graders`` is an object of named graders
    (variables = its keys), an array, or one grader (variables = the graders' names, non-word characters → ``_``)."""
    graders = grader.get("graders")
    if isinstance(graders, dict) and "type" not in graders:
        return [(key, f".graders.{key}", g) for key, g in graders.items()]
    listed = graders if isinstance(graders, list) else [graders]
    suffix = (lambda i: f".graders[{i}]") if isinstance(graders, list) else (lambda i: ".graders")
    return [(_variable(g), suffix(i), g) for i, g in enumerate(listed)]


def _variable(grader: Any) -> str:
    name = grader.get("name") if isinstance(grader, dict) else None
    return re.sub(r"\W", "_", name) if isinstance(name, str) and name else ""


def _multi(grader: dict[str, Any], param: str, model_exists: ModelExists) -> None:
    subs = named_graders(grader)
    if not subs or grader.get("graders") in (None, {}, []):
        raise _bad(f"{param}.graders must hold at least one grader.", f"{param}.graders", "missing_required_parameter")
    for variable, suffix, sub in subs:
        check(sub, param + suffix, model_exists, types=ALL_TYPES)
        if not variable.isidentifier():
            raise _bad(f"{param}{suffix}: '{variable}' cannot be a formula variable.", param + suffix)
    try:
        formula.parse(grader.get("calculate_output"), [v for v, _, _ in subs])
    except formula.FormulaError as exc:
        raise _bad(f"{param}.calculate_output: {exc}.", f"{param}.calculate_output") from None
