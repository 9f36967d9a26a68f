"""A reinforcement fine-tuning request's method section: ``method.reinforcement`` as the spec's
``FineTuneReinforcementMethod`` has it — ``grader`` (required, any grader type), ``response_format`` and
``hyperparameters`` (``finetune.hyperparams``). Checked at create, so each problem is a 400 whose ``param`` points
into the request (``method.reinforcement.grader.source``); what is stored is echoed on the job and read by the
training child (``finetune.recipe.rft``), which reaches model graders' judges through ``judge``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.graders import validate
from serving.request_body import validate_sampling_params
from storage.errors import InvalidRequest, TunegateError
from storage.settings import Settings

if TYPE_CHECKING:
    from finetune.graders.engine import Judge
    from storage.blobs import BlobStore
    from storage.db import Database

PARAM = "method.reinforcement"
KEYS = ("grader", "response_format", "hyperparameters")
MODEL_GRADERS = ("score_model", "label_model")
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check(section: dict[str, Any], model_exists: Callable[[str], None], settings: Settings) -> dict[str, Any]:
    """``{"grader": …, "response_format"?: …}`` as stored in ``FineTuningJob.method_config``."""
    if "grader" not in section or section["grader"] is None:
        raise InvalidRequest(
            "A reinforcement fine-tuning job needs a grader (method.reinforcement.grader).",
            param=f"{PARAM}.grader",
            code="missing_required_parameter",
        )
    config = {"grader": validate.check(section["grader"], f"{PARAM}.grader", model_exists)}
    for param, model in judges(config["grader"], f"{PARAM}.grader"):
        if settings.base_model_id(model) is None:  # the training child reaches base models' engines only (judge)
            raise InvalidRequest(
                f"The judge model {model!r} of {param} cannot grade a reinforcement fine-tuning job: a judge must be "
                "a base model served by this gateway (or an alias of one); fine-tuned judges are not supported yet.",
                param=param,
                code="unsupported_value",
            )
    if section.get("response_format") is not None:
        config["response_format"] = response_format(section["response_format"], settings)
    return config


def response_format(value: Any, settings: Settings) -> dict[str, Any]:
    """``text``, ``json_object`` or ``json_schema`` (the rollouts are then constrained to it: ``finetune.recipe.
    constrained``); a ``json_schema`` needs a ``name`` and a ``schema`` that is itself a valid JSON Schema (checked
    against its draft's meta-schema, so a typo such as ``"type": "objekt"`` is a 400 here, not a failed job)."""
    import jsonschema

    param = f"{PARAM}.response_format"
    checked = validate_sampling_params({"response_format": value}, PARAM, settings.requests)["response_format"]
    if checked["type"] != "json_schema":
        return checked
    spec = checked.get("json_schema") or {}
    if not NAME.fullmatch(spec.get("name") or ""):
        raise InvalidRequest(
            f"{param}.json_schema.name is required: a name of letters, digits, '_' or '-' (at most 64).",
            param=f"{param}.json_schema.name",
            code="invalid_value" if "name" in spec else "missing_required_parameter",
        )
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest(
            f"{param}.json_schema.schema must be a JSON Schema object.",
            param=f"{param}.json_schema.schema",
            code="invalid_value" if "schema" in spec else "missing_required_parameter",
        )
    if not isinstance(schema.get("$schema", ""), str):  # validator_for looks it up in a dict: a list is a TypeError
        raise InvalidRequest(
            f"{param}.json_schema.schema is not a valid JSON Schema: '$schema' must be a URI string.",
            param=f"{param}.json_schema.schema",
            code="invalid_value",
        )
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        raise InvalidRequest(
            f"{param}.json_schema.schema is not a valid JSON Schema: {exc.message} (at schema{where}).",
            param=f"{param}.json_schema.schema",
            code="invalid_value",
        ) from None
    _convertible(schema, f"{param}.json_schema.schema")
    return checked


def _convertible(schema: dict[str, Any], param: str) -> None:
    """A valid schema that the rollouts' grammar cannot express (a ``$ref`` to nothing, a ``pattern`` that is not
    a regular expression) is a 400 here rather than a job that fails before its first step. A gateway without
    xgrammar (it runs in the workers) leaves the check to the job."""
    import importlib.util

    from finetune.recipe.constrained import ConstraintError, grammar_of

    if importlib.util.find_spec("xgrammar") is None:
        return
    try:
        grammar_of(schema)
    except ConstraintError as exc:
        raise InvalidRequest(exc.message, param=param, code="invalid_value") from None


def judges(grader: dict[str, Any], param: str) -> list[tuple[str, str]]:
    """``(param, model)`` of every model grader in ``grader`` (a multi grader's sub-graders too)."""
    if grader.get("type") in MODEL_GRADERS:
        return [(f"{param}.model", grader["model"])]
    if grader.get("type") == "multi":
        return [j for _, suffix, sub in validate.named_graders(grader) for j in judges(sub, param + suffix)]
    return []


def judge(settings: Settings, db: Database, organization_id: str, job_id: str) -> Judge:
    """Model graders' judge for a training child: a base model (or an alias of one) answered by a ready serving
    engine of it, the tokens accounted to the organization under ``fine_tuning.jobs``. A judge that cannot be
    reached errors the rows it grades (they score 0), never the job. Fine-tuned judges are not reachable here:
    ``check`` refuses them at create."""

    def answer(model: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from finetune.evals.generation import UsageSink, chat_all
        from storage.engines import EngineRegistry

        try:
            base = model if model in settings.base_models else settings.base_model_id(model) or model  # alias → base
            engines = EngineRegistry(db).ready(base) if base in settings.base_models else []
            if not engines:
                raise TunegateError(f"no serving engine for judge model {model!r} is ready")
            usage = UsageSink(db, organization_id, model, "fine_tuning.jobs", job_id)
            return chat_all(
                engines[0],
                base,
                [b["messages"] for b in bodies],
                [{k: v for k, v in b.items() if k != "messages"} for b in bodies],
                usage=usage,
                limits=settings.requests,
                param_prefix="grader.sampling_params",
            )
        except Exception as exc:  # noqa: BLE001 - a judge that fails errors its rows (score 0), never the job
            message = exc.message if isinstance(exc, TunegateError) else f"{type(exc).__name__}: {exc}"
            return [{"error": {"message": message}}] * len(bodies)

    return answer


def rollouts(
    settings: Settings,
    db: Database,
    blobs: BlobStore,
    base_id: str,
    job_id: str,
    folder: Path,
    event: Callable[[str, str], None],
) -> Any:
    """The training child's ``rollout_func``: a ready serving engine of the job's base model samples the rollouts,
    the policy's adapter saved under ``folder`` and loaded there at each step (``finetune.recipe.rollouts``) — or
    None, HF ``generate``, when no vLLM engine is ready. Engines that do not read this worker's files (``blob_url``,
    ``serving.engine_blob_dir``) get each version through the blob store (``BlobPolicies``, under
    ``rollouts/<job>/<attempt>``; an earlier attempt's leftovers are deleted first). ``event(message, level)`` tells
    the job which it is, and later whether the engine failed."""
    from finetune.recipe.rollouts import BlobPolicies, EngineRollouts, LocalPolicies
    from storage.engines import EngineRegistry, engine_adapter_path

    engines = EngineRegistry(db).ready(base_id)
    reason = (
        "no serving engine of it is ready"
        if not engines
        else "its engine is not vLLM"
        if settings.base_models[base_id].engine != "vllm"
        else None
    )
    if reason:
        event(f"Rollouts are sampled with HF generate on the training model ({reason})", "info")
        return None
    event(
        "Rollouts are sampled by the base model's serving engine (vLLM), the policy's adapter loaded at each step",
        "info",
    )
    # a name per run attempt: a resumed job must never find an earlier attempt's step-N (other weights) loaded
    attempt = secrets.token_hex(4)
    policies: LocalPolicies | BlobPolicies = LocalPolicies()
    if settings.blob_url or settings.serving.engine_blob_dir:
        blobs.delete_prefix(f"rollouts/{job_id}/")  # a crashed attempt's versions
        policies = BlobPolicies(
            blobs, f"rollouts/{job_id}/{attempt}", lambda key: engine_adapter_path(settings, key, blobs)
        )
    return EngineRollouts(
        engines[0],
        folder,
        f"rft-{job_id}-{attempt}",
        max_adapters=settings.serving.max_adapters_per_engine,
        warn=lambda message: event(message, "warn"),
        policies=policies,
    )
