"""``/v1/evals`` requests checked and turned into rows: every problem is a 400 naming the field, nothing stored.

Evals: a ``custom`` data source config, or ``logs`` / ``stored_completions`` (items: the organization's stored chat
completions, ``storage.stored_completions.eval_item``), and testing criteria of
every grader type an eval takes (string_check, text_similarity, python, score_model, label_model), each checked by
``finetune.graders.validate`` (a judge model must be one the organization can use).

Runs: ``jsonl`` (items that already carry their ``sample``: graded without generating) and ``completions`` (a model
tunegate serves generates each sample; prompts from a ``template`` of messages or an ``item_reference``; sampling
parameters checked by ``check_params``, the allow-list for upstream bodies); items from a file (``file_id``) or
inline (``file_content``) or the organization's stored chat completions (``stored_completions``: metadata, model,
created_after, created_before, limit; a ``jsonl`` run grades their stored answers as they are). ``responses`` runs
are refused with a 400 until the Responses API exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from finetune.graders import templates, validate
from finetune.graders.messages import MessageError, templates_in
from storage.errors import InvalidRequest
from storage.files import Files
from storage.ids import new_id, now
from storage.stored_completions import STORED_ITEM_SCHEMA, check_metadata
from storage.tables import Eval, EvalRun

ModelExists = Callable[[str, str], Any]  # (organization, model) → raises NotFound for a model it cannot use
CheckParams = Callable[[Any], dict[str, Any]]  # sampling_params → the checked copy (400 naming the field)


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _object(body: Any, param: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad(f"'{param}' must be an object.", param, "invalid_type")
    return body


def _metadata(value: Any) -> dict[str, str] | None:
    return check_metadata(value)


def _name(value: Any, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > 256:
        raise _bad("'name' must be a string of at most 256 characters.", "name")
    return value


# --- evals ---------------------------------------------------------------------------------------------------------
def new_eval(org_id: str, body: Any, model_exists: ModelExists) -> Eval:
    body = _object(body, "body")
    config = _data_source_config(_object(body.get("data_source_config"), "data_source_config"))
    criteria = body.get("testing_criteria")
    if not isinstance(criteria, list) or not criteria:
        raise _bad("'testing_criteria' must be a non-empty array of graders.", "testing_criteria")
    graders, names = [], set()
    for i, criterion in enumerate(criteria):
        grader = validate.check(
            criterion,
            f"testing_criteria[{i}]",
            lambda model: model_exists(org_id, model),
            types=validate.EVAL_TYPES,
            eval_criterion=True,
        )
        if grader["name"] in names:
            raise _bad(
                f"testing_criteria[{i}].name '{grader['name']}' is used twice; names must be unique.",
                f"testing_criteria[{i}].name",
            )
        names.add(grader["name"])
        graders.append(grader)
    return Eval(
        id=new_id("eval_"),
        organization_id=org_id,
        name=_name(body.get("name"), "eval"),
        data_source_config=config,
        testing_criteria=graders,
        metadata_=_metadata(body.get("metadata")),
        created_at=now(),
    )


def _data_source_config(config: dict[str, Any]) -> dict[str, Any]:
    kind = config.get("type")
    if kind in ("logs", "stored_completions"):
        return _stored_completions_config(config)
    if kind != "custom":
        raise _bad(
            f"data_source_config.type {kind!r} is not supported; use 'custom'.",
            "data_source_config.type",
            "unsupported_value",
        )
    item_schema = _object(config.get("item_schema"), "data_source_config.item_schema")
    schema: dict[str, Any] = {"type": "object", "properties": {"item": item_schema}, "required": ["item"]}
    if config.get("include_sample_schema"):
        schema["properties"]["sample"] = {"type": "object", "properties": {"output_text": {"type": "string"}}}
        schema["required"].append("sample")
    return {"type": "custom", "schema": schema}


def _stored_completions_config(config: dict[str, Any]) -> dict[str, Any]:
    """``logs`` / ``stored_completions``: items are the organization's stored chat completions matching ``metadata``
    (``storage.stored_completions.eval_item``: item = the request and its stored answer, sample = the answer)."""
    metadata = check_metadata(config.get("metadata"), "data_source_config.metadata") or {}
    return {"type": config["type"], "metadata": metadata, "schema": STORED_ITEM_SCHEMA}


def eval_updates(body: Any) -> dict[str, Any]:
    """``POST /v1/evals/{id}``: a new name and/or metadata."""
    body = _object(body if body is not None else {}, "body")
    values: dict[str, Any] = {}
    if "name" in body:
        values["name"] = _name(body["name"], "eval")
    if "metadata" in body:
        values["metadata_"] = _metadata(body["metadata"])
    return values


# --- runs ----------------------------------------------------------------------------------------------------------
def new_run(
    org_id: str, evaluation: Eval, body: Any, files: Files, model_exists: ModelExists, check_params: CheckParams
) -> EvalRun:
    body = _object(body, "body")
    source = dict(_object(body.get("data_source"), "data_source"))
    kind = source.get("type")
    if kind == "responses":
        raise _bad(
            "data_source.type 'responses' needs the Responses API, which tunegate does not serve yet; use "
            "'completions' (chat completions) or 'jsonl'.",
            "data_source.type",
            "unsupported_value",
        )
    if kind not in ("jsonl", "completions"):
        raise _bad(
            f"data_source.type {kind!r} is not supported; use 'completions' or 'jsonl'.",
            "data_source.type",
            "unsupported_value",
        )
    _items_source(org_id, _object(source.get("source"), "data_source.source"), files, with_samples=kind == "jsonl")
    model = ""
    if kind == "completions":
        named = source.get("model")
        if not isinstance(named, str) or not named:
            raise _bad("data_source.model is required.", "data_source.model", "missing_required_parameter")
        model = named
        model_exists(org_id, model)
        _input_messages(_object(source.get("input_messages"), "data_source.input_messages"))
        source["sampling_params"] = check_params(source.get("sampling_params"))
    return EvalRun(
        id=new_id("evalrun_"),
        eval_id=evaluation.id,
        organization_id=org_id,
        name=_name(body.get("name"), f"{model or 'jsonl'} run"),
        model=model,
        data_source=source,
        metadata_=_metadata(body.get("metadata")),
        created_at=now(),
        result_counts={"total": 0, "errored": 0, "failed": 0, "passed": 0},
        per_testing_criteria_results=[
            {"testing_criteria": c["name"], "passed": 0, "failed": 0} for c in evaluation.testing_criteria
        ],
    )


def _items_source(org_id: str, items: dict[str, Any], files: Files, *, with_samples: bool) -> None:
    kind = items.get("type")
    if kind == "file_id":
        if not isinstance(items.get("id"), str):
            raise _bad("data_source.source.id must be a file id.", "data_source.source.id")
        files.get(org_id, items["id"])  # 404 for an unknown or foreign file
    elif kind == "file_content":
        content = items.get("content")
        if not isinstance(content, list) or not content:
            raise _bad(
                'data_source.source.content must be a non-empty array of {"item": {...}}.', "data_source.source.content"
            )
        for i, row in enumerate(content):
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("item"), dict)
                or ("sample" in row and not isinstance(row["sample"], dict))
            ):
                raise _bad(
                    'Each row must be {"item": {...}} (and, for jsonl runs, "sample": {...}).',
                    f"data_source.source.content[{i}]",
                )
    elif kind == "stored_completions":
        _stored_source(items)
    else:
        raise _bad(
            "data_source.source.type must be 'file_id', 'file_content' or 'stored_completions'.",
            "data_source.source.type",
        )


def _stored_source(items: dict[str, Any]) -> None:
    """``EvalStoredCompletionsSource``: filters over the organization's stored chat completions (each optional)."""
    param = "data_source.source"
    check_metadata(items.get("metadata"), f"{param}.metadata")
    if items.get("model") is not None and not isinstance(items["model"], str):
        raise _bad(f"{param}.model must be a string.", f"{param}.model")
    for key in ("created_after", "created_before", "limit"):
        value = items.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < (key == "limit")):
            raise _bad(
                f"{param}.{key} must be a" + (" positive" if key == "limit" else "") + " integer.", f"{param}.{key}"
            )


def _input_messages(messages: dict[str, Any]) -> None:
    param = "data_source.input_messages"
    if messages.get("type") == "template":
        try:
            found = templates_in(messages.get("template"))
        except MessageError as exc:
            raise _bad(f"{param}.template{exc.where} {exc}.", f"{param}.template{exc.where}") from None
        for where, text in found:
            problem = templates.problem(text, ("item",))
            if problem:
                raise _bad(f"{param}.template{where}: {problem}.", f"{param}.template{where}")
    elif messages.get("type") == "item_reference":
        reference = messages.get("item_reference")
        if not isinstance(reference, str) or templates.problem("{{" + reference + "}}", ("item",)):
            raise _bad(f"{param}.item_reference must look like 'item.messages'.", f"{param}.item_reference")
    else:
        raise _bad(f"{param}.type must be 'template' or 'item_reference'.", f"{param}.type")
