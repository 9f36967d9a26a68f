"""Evals wire objects: ``eval``, ``eval.run``, ``eval.run.output_item`` (OpenAI's shapes)."""

from __future__ import annotations

from typing import Any

from litestar import Request

from storage.tables import Eval, EvalOutputItem, EvalRun


def console_base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def eval_object(row: Eval) -> dict[str, Any]:
    return {
        "object": "eval",
        "id": row.id,
        "name": row.name,
        "data_source_config": row.data_source_config,
        "testing_criteria": row.testing_criteria,
        "created_at": row.created_at,
        "metadata": row.metadata_ or {},
    }


def run_object(row: EvalRun, base: str) -> dict[str, Any]:
    """``report_url``: the run's page in the console (``{base}/console/``, hash-routed)."""
    error = row.error or {"code": "", "message": ""}
    return {
        "object": "eval.run",
        "id": row.id,
        "eval_id": row.eval_id,
        "status": row.status,
        "model": row.model,
        "name": row.name,
        "created_at": row.created_at,
        "report_url": f"{base}/console/#/evals/{row.eval_id}/runs/{row.id}",
        "result_counts": row.result_counts,
        "per_model_usage": row.per_model_usage,
        "per_testing_criteria_results": row.per_testing_criteria_results,
        "data_source": row.data_source,
        "metadata": row.metadata_ or {},
        "error": error,
    }


def item_object(row: EvalOutputItem) -> dict[str, Any]:
    sample = dict(row.sample)
    if sample.get("error") is None:
        sample["error"] = {"code": "", "message": ""}
    return {
        "object": "eval.run.output_item",
        "id": row.id,
        "run_id": row.run_id,
        "eval_id": row.eval_id,
        "created_at": row.created_at,
        "status": row.status,
        "datasource_item_id": row.datasource_item_id,
        "datasource_item": row.datasource_item,
        "results": row.results,
        "sample": sample,
    }
