"""Creating a fine-tuning job: the cheap, synchronous checks, then a row in ``validating_files``.

Everything here is a 400 with ``param`` before anything is stored; once the row exists, problems (bad file
content, too few examples, a crash) end the job as ``failed`` instead. Deep checks live in ``validation``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finetune import hyperparams, integrations, reinforcement
from finetune.device import training_device
from storage.errors import InvalidRequest, NotFound
from storage.files import Files
from storage.ids import new_id, now
from storage.jobs import JobStore
from storage.settings import Settings
from storage.tables import FineTuningJob, StoredFile

_SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # ends up inside a model id: no ':' or '/'


class MethodRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    supervised: dict[str, Any] | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class JobRequest(BaseModel):
    """The create body. Unknown fields are ignored, as api.openai.com does."""

    model_config = ConfigDict(extra="ignore")

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = Field(None, description="Deprecated: mapped into method.")
    method: MethodRequest | None = None
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None


def parse_request(body: Any) -> JobRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", param=None)
    try:
        return JobRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
        raise InvalidRequest(f"Invalid {where}: {first['msg']}.", param=where, code=code) from None


def create_job(
    settings: Settings,
    files: Files,
    jobs: JobStore,
    org_id: str,
    body: Any,
    model_exists: Callable[[str], Any] | None = None,
) -> FineTuningJob:
    """``model_exists`` raises NotFound for a model the organization cannot use (a reinforcement grader's judge), and
    returns the catalog entry of one it can (a fine-tuned ``model`` to continue training from)."""
    request = parse_request(body)
    method, raw_hp = _method(request)
    hp = hyperparams.parse(raw_hp, method, param=f"method.{method}.hyperparameters")
    method_config = None
    if method == "reinforcement":  # grader and response_format (finetune/reinforcement.py)
        section = request.method.reinforcement if request.method is not None else None
        method_config = reinforcement.check(section or {}, model_exists or (lambda _: None), settings)
    base_id = _check_model(settings, request.model, model_exists)
    training = _check_file(files, org_id, request.training_file, "training_file")
    if request.validation_file:
        _check_file(files, org_id, request.validation_file, "validation_file")
    _check_suffix(request.suffix)
    _check_metadata(request.metadata)
    tracked = integrations.parse(request.integrations, settings.integrations.wandb_entity)  # finetune/integrations.py
    # resolved now (the file's size is known), so bad device combinations are a 400 and the job shows real values
    where = f"method.{method}.hyperparameters"
    resolved = hyperparams.resolve(
        hp,
        n_examples=max(1, training.n_examples or 0),
        method=method,
        device=training_device(settings.worker.device),
        param=where,
        reasoning=_reasoning(settings, base_id),
    )
    job = FineTuningJob(
        id=new_id("ftjob-"),
        organization_id=org_id,
        model=request.model,
        training_file=training.id,
        validation_file=request.validation_file,
        method=method,
        hyperparameters=hp.model_dump(mode="json"),
        resolved=resolved.model_dump(mode="json"),
        suffix=request.suffix,
        seed=request.seed if request.seed is not None else random.randint(0, 2**31 - 1),
        metadata_=request.metadata,
        created_at=now(),
        method_config=method_config,
        integrations=tracked,
    )
    return jobs.insert(job, f"Created fine-tuning job: {job.id}")


def _method(request: JobRequest) -> tuple[hyperparams.Method, dict[str, Any] | None]:
    if request.method is None:
        return "supervised", request.hyperparameters
    kind = request.method.type
    if kind not in ("supervised", "dpo", "reinforcement"):
        raise InvalidRequest(
            f"Unknown method type {kind!r}: expected supervised, dpo or reinforcement.",
            param="method.type",
            code="invalid_value",
        )
    section = getattr(request.method, kind) or {}
    keys = reinforcement.KEYS if kind == "reinforcement" else ("hyperparameters",)
    if not isinstance(section, dict) or set(section) - set(keys):
        unknown = sorted(set(section) - set(keys)) if isinstance(section, dict) else []
        raise InvalidRequest(
            f"method.{kind} takes only {', '.join(map(repr, keys))}.",
            param=f"method.{kind}.{unknown[0]}" if unknown else f"method.{kind}",
            code="invalid_value",
        )
    raw = section.get("hyperparameters")
    if request.hyperparameters and raw:
        raise InvalidRequest(
            "Give hyperparameters in method only, not also at the top level.",
            param="hyperparameters",
            code="invalid_value",
        )
    return hyperparams.method_of(kind), raw if raw is not None else request.hyperparameters


def _reasoning(settings: Settings, model: str) -> bool:
    spec = settings.base_models.get(model)  # the worker re-resolves with the base an alias names
    return bool(spec and spec.reasoning)


def _check_model(settings: Settings, model: str, model_exists: Callable[[str], Any] | None = None) -> str:
    """The base model id the job trains on: ``model`` itself, the base an alias names (the job keeps the name it was
    given), or the base of a fine-tuned model or checkpoint the organization owns or was granted (``ft:…``: the job
    continues training its adapter, ``finetune.child.parent_adapter``)."""
    base_id = settings.base_model_id(model)
    if base_id is None and model.startswith("ft:") and model_exists is not None:
        try:
            entry = model_exists(model)
        except NotFound:
            entry = None
        if entry is not None and getattr(entry, "adapter_key", None):
            base_id = entry.base_model
    spec = settings.base_models.get(base_id) if base_id else None
    if base_id is None or spec is None or not spec.tunable:
        known = ", ".join(m for m, s in settings.base_models.items() if s.tunable) or "none"
        raise InvalidRequest(
            f"Model {model!r} is not available for fine-tuning (available: {known}).",
            param="model",
            code="model_not_available",
        )
    return base_id


def _check_file(files: Files, org_id: str, file_id: str, param: str) -> StoredFile:
    try:
        row = files.get(org_id, file_id)
    except NotFound:
        raise InvalidRequest(
            f"Invalid file ID: {file_id}: no such file.", param=param, code="invalid_file_id"
        ) from None
    if row.purpose != "fine-tune":
        raise InvalidRequest(
            f"File {file_id} has purpose {row.purpose!r}; fine-tuning needs purpose 'fine-tune'.",
            param=param,
            code="invalid_file_purpose",
        )
    return row


def _check_suffix(suffix: str | None) -> None:
    if suffix is not None and not _SUFFIX.match(suffix):
        raise InvalidRequest(
            "suffix must be 1-64 characters of letters, digits, '.', '_' or '-'.", param="suffix", code="invalid_value"
        )


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise InvalidRequest(
            "metadata holds at most 16 pairs; keys ≤ 64 and values ≤ 512 characters.",
            param="metadata",
            code="invalid_value",
        )


def fine_tuned_model_name(job: FineTuningJob) -> str:
    """``ft:{base}:{org}:{suffix}:{id8}`` (an empty suffix gives ``::``); ``base`` is the model as the job named it
    (a base model's alias stays the alias, as OpenAI names ``ft:gpt-4o-mini-2024-07-18:…``), or, for a job that
    continues a fine-tuned model (or checkpoint), the base that model is named after."""
    return f"ft:{base_name(job.model)}:{job.organization_id}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')[:8]}"


def base_name(model: str) -> str:
    """``model`` unless it is a fine-tuned name ``ft:{base}:{org}:{suffix}:{id8}[:ckpt-step-N]``: then ``base`` (org
    ids, suffixes and ids hold no ':', so a base id with one still comes out whole)."""
    if not model.startswith("ft:"):
        return model
    rest = model.removeprefix("ft:")
    if re.search(r":ckpt-step-\d+$", rest):
        rest = rest.rsplit(":", 1)[0]
    return rest.rsplit(":", 3)[0]
