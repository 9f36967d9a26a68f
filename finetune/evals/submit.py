"""``/v1/evals`` requests checked and turned into rows: every problem is a 400 naming the field, nothing stored.

The subset: ``custom`` data source configs; ``text_similarity`` graders (rouge_1 … rouge_5, rouge_l, bleu, with
``pass_threshold``); runs with ``data_source.type = "completions"`` over a file (``file_id``) or inline items
(``file_content``), prompts from a ``template`` or an ``item_reference``.
"""

from __future__ import annotations

import re
from typing import Any

from serving.request_body import validate_sampling_params
from storage.errors import InvalidRequest
from storage.files import Files
from storage.ids import new_id, now
from storage.settings import RequestLimits
from storage.tables import Eval, EvalRun

TEMPLATE_VAR = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _object(body: Any, param: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad(f"'{param}' must be an object.", param, "invalid_type")
    return body


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16 or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items()):
        raise _bad("'metadata' must map at most 16 keys (≤ 64 chars) to strings (≤ 512 chars).", "metadata")
    return value


def _name(value: Any, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > 256:
        raise _bad("'name' must be a string of at most 256 characters.", "name")
    return value


def new_eval(org_id: str, body: Any) -> Eval:
    body = _object(body, "body")
    config = _object(body.get("data_source_config"), "data_source_config")
    if config.get("type") != "custom":
        raise _bad(f"data_source_config.type {config.get('type')!r} is not supported here; use 'custom'.",
                   "data_source_config.type", "unsupported_value")
    item_schema = _object(config.get("item_schema"), "data_source_config.item_schema")
    schema: dict[str, Any] = {"type": "object", "properties": {"item": item_schema}, "required": ["item"]}
    if config.get("include_sample_schema"):
        schema["properties"]["sample"] = {"type": "object", "properties": {"output_text": {"type": "string"}}}
        schema["required"].append("sample")
    criteria = body.get("testing_criteria")
    if not isinstance(criteria, list) or not criteria:
        raise _bad("'testing_criteria' must be a non-empty array of graders.", "testing_criteria")
    graders = [_grader(c, f"testing_criteria[{i}]") for i, c in enumerate(criteria)]
    return Eval(id=new_id("eval_"), organization_id=org_id, name=_name(body.get("name"), "eval"),
                data_source_config={"type": "custom", "schema": schema}, testing_criteria=graders,
                metadata_=_metadata(body.get("metadata")), created_at=now())


def _grader(value: Any, param: str) -> dict[str, Any]:
    grader = _object(value, param)
    if grader.get("type") != "text_similarity":
        raise _bad(f"{param}.type {grader.get('type')!r} is not supported here; use 'text_similarity'.",
                   f"{param}.type", "unsupported_value")
    metric = grader.get("evaluation_metric")
    if metric not in SIMILARITY_METRICS:
        raise _bad(f"{param}.evaluation_metric {metric!r} is not supported; one of {', '.join(SIMILARITY_METRICS)}.",
                   f"{param}.evaluation_metric", "unsupported_value")
    for key in ("input", "reference"):
        if not isinstance(grader.get(key), str) or not grader[key]:
            raise _bad(f"{param}.{key} must be a template string such as '{{{{sample.output_text}}}}'.", f"{param}.{key}")
        for var in TEMPLATE_VAR.findall(grader[key]):
            if not (var.startswith("item.") or var == "sample.output_text"):
                raise _bad(f"{param}.{key}: unknown variable '{var}' (use item.<field> or sample.output_text).",
                           f"{param}.{key}")
    threshold = grader.get("pass_threshold")
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
        raise _bad(f"{param}.pass_threshold must be a number between 0 and 1.", f"{param}.pass_threshold")
    name = grader.get("name") or f"{metric} similarity"
    return {"type": "text_similarity", "name": _name(name, name), "input": grader["input"],
            "reference": grader["reference"], "evaluation_metric": metric, "pass_threshold": float(threshold)}


def new_run(org_id: str, evaluation: Eval, body: Any, files: Files, model_exists: Any) -> EvalRun:
    """``model_exists(org, model)`` raises NotFound for an unknown or foreign model."""
    body = _object(body, "body")
    source = _object(body.get("data_source"), "data_source")
    if source.get("type") != "completions":
        raise _bad(f"data_source.type {source.get('type')!r} is not supported here; use 'completions'.",
                   "data_source.type", "unsupported_value")
    model = source.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("data_source.model is required.", "data_source.model", "missing_required_parameter")
    model_exists(org_id, model)
    items = _object(source.get("source"), "data_source.source")
    if items.get("type") == "file_id":
        if not isinstance(items.get("id"), str):
            raise _bad("data_source.source.id must be a file id.", "data_source.source.id")
        files.get(org_id, items["id"])  # 404 for an unknown or foreign file
    elif items.get("type") == "file_content":
        content = items.get("content")
        if not isinstance(content, list) or not content or not all(isinstance(c, dict) and isinstance(c.get("item"), dict)
                                                                   for c in content):
            raise _bad("data_source.source.content must be a non-empty array of {\"item\": {...}}.",
                       "data_source.source.content")
    else:
        raise _bad("data_source.source.type must be 'file_id' or 'file_content'.", "data_source.source.type")
    messages = _object(source.get("input_messages"), "data_source.input_messages")
    if messages.get("type") == "template":
        template = messages.get("template")
        if not isinstance(template, list) or not template or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in template):
            raise _bad("data_source.input_messages.template must be a non-empty array of {role, content} with text "
                       "content.", "data_source.input_messages.template")
    elif messages.get("type") == "item_reference":
        if not str(messages.get("item_reference", "")).startswith("item."):
            raise _bad("data_source.input_messages.item_reference must look like 'item.messages'.",
                       "data_source.input_messages.item_reference")
    else:
        raise _bad("data_source.input_messages.type must be 'template' or 'item_reference'.",
                   "data_source.input_messages.type")
    # the allow-list of every body sent to an engine: `model`, `lora_request`, … cannot choose what generates
    validate_sampling_params(source.get("sampling_params"), "data_source.sampling_params", RequestLimits())
    return EvalRun(id=new_id("evalrun_"), eval_id=evaluation.id, organization_id=org_id,
                   name=_name(body.get("name"), f"{model} run"), model=model, data_source=source,
                   metadata_=_metadata(body.get("metadata")), created_at=now(),
                   result_counts={"total": 0, "errored": 0, "failed": 0, "passed": 0},
                   per_testing_criteria_results=[{"testing_criteria": c["name"], "passed": 0, "failed": 0}
                                                 for c in evaluation.testing_criteria])


def eval_updates(body: Any) -> dict[str, Any]:
    """``POST /v1/evals/{id}``: a new name and/or metadata."""
    body = _object(body if body is not None else {}, "body")
    values: dict[str, Any] = {}
    if "name" in body:
        values["name"] = _name(body["name"], "eval")
    if "metadata" in body:
        values["metadata_"] = _metadata(body["metadata"])
    return values
