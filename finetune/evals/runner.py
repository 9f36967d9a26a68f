"""Executes eval runs in the worker: items → prompts → generation through a serving engine → graders → output items.

A run is claimed under a lease and renewed after every batch; a canceled run stops at the next batch; a run whose
worker died is taken over and continues after the items already stored. No engine for the model's base → the run
fails with ``engine_unavailable`` (it would otherwise wait forever).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from finetune.evals.generation import chat_all, load_adapter
from finetune.graders.similarity import text_similarity
from finetune.evals.submit import TEMPLATE_VAR
from finetune.process import poll_forever
from storage.blobs import LocalBlobStore
from storage.db import Database
from storage.engines import EngineRegistry, engine_adapter_path
from storage.evals import EvalStore
from storage.files import Files
from storage.ids import new_id, now
from storage.jobs import owned_model
from storage.settings import Settings
from storage.tables import EvalOutputItem, EvalRun

log = logging.getLogger("tunegate.evals")
BATCH = 32
ENGINE_WAIT_S = 300.0  # a run created while the engine still loads waits for it


class RunFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class EvalWorker:
    def __init__(self, settings: Settings, db: Database, blobs: LocalBlobStore) -> None:
        self.settings, self.db, self.blobs = settings, db, blobs
        self.store = EvalStore(db, settings.limits.running_eval_runs)
        self.files, self.registry = Files(db, blobs), EngineRegistry(db)
        self.id = f"{socket.gethostname()}:{os.getpid()}:evals:{uuid.uuid4().hex[:8]}"
        self.lease_s = settings.worker.lease_seconds
        self._stop = threading.Event()

    def run_forever(self) -> None:
        poll_forever(self.run_once, self._stop, self.settings.worker.poll_seconds, "eval worker")

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> bool:
        run = self.store.claim(self.id, self.lease_s)
        if run is None:
            return False
        log.info("eval worker %s running %s", self.id, run.id)
        try:
            self.execute(run)
        except RunFailed as exc:
            self.store.finish(run.id, self.id, status="failed", error={"code": exc.code, "message": exc.message})
        except Exception as exc:  # one bad run never stops the worker
            log.exception("eval run %s failed", run.id)
            self.store.finish(run.id, self.id, status="failed",
                              error={"code": "eval_failed", "message": f"{type(exc).__name__}: {exc}"})
        return True

    # --- one run -----------------------------------------------------------------------------------------
    def execute(self, run: EvalRun) -> None:
        evaluation = self.store.get_eval(run.organization_id, run.eval_id)
        items = self._items(run)
        done = {i.datasource_item_id for i in self.store.items(run.id)}
        url, engine_model = self._engine(run)
        params = {"temperature": 0, **(run.data_source.get("sampling_params") or {})}
        if "max_completion_tokens" in params:
            params["max_tokens"] = params.pop("max_completion_tokens")
        todo = [(i, item) for i, item in enumerate(items) if i not in done]
        for start in range(0, len(todo), BATCH):
            if not self.store.heartbeat(run.id, self.id, self.lease_s):
                log.info("eval run %s was canceled or taken over; stopping", run.id)
                return
            batch = todo[start:start + BATCH]
            prompts, rows = [], []
            for index, item in batch:
                try:
                    prompts.append(self._messages(run, item))
                except RunFailed as exc:
                    rows.append(self._errored(run, index, item, exc.message))
            answerable = [(i, item) for i, item in batch if i not in {r.datasource_item_id for r in rows}]
            answers = chat_all(url, engine_model, prompts, params) if prompts else []
            for (index, item), messages, answer in zip(answerable, prompts, answers, strict=True):
                rows.append(self._graded(run, evaluation.testing_criteria, index, item, messages, answer, params))
            self.store.add_items(rows)
            self.store.progress(run.id, self.id, **self._totals(run, evaluation.testing_criteria))
        self.store.finish(run.id, self.id, status="completed", **self._totals(run, evaluation.testing_criteria))

    def _items(self, run: EvalRun) -> list[dict[str, Any]]:
        source = run.data_source["source"]
        if source["type"] == "file_content":
            return [c["item"] for c in source["content"]]
        stored = self.files.get(run.organization_id, source["id"])
        items = []
        with open(self.blobs.local_path(stored.blob_key), encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise RunFailed("invalid_file", f"file {source['id']} line {number}: not JSON ({exc})") from None
                if not isinstance(row, dict):
                    raise RunFailed("invalid_file", f"file {source['id']} line {number}: not a JSON object")
                items.append(row["item"] if isinstance(row.get("item"), dict) else row)
        if not items:
            raise RunFailed("invalid_file", f"file {source['id']} has no items")
        return items

    def _engine(self, run: EvalRun) -> tuple[str, str]:
        """(engine URL, engine-side model name) for the run's model, its adapter loaded there."""
        base, adapter = run.model, None
        if run.model not in self.settings.base_models:
            with self.db.session() as s:
                row = owned_model(s, run.organization_id, run.model)
            if row is None or row.adapter_key is None:
                raise RunFailed("model_not_found", f"The model '{run.model}' no longer exists.")
            base, adapter = row.base_model, row.adapter_key
        urls = self._ready_engines(run, base)
        if adapter is None:
            return urls[0], base
        try:
            load_adapter(urls[0], adapter, engine_adapter_path(self.settings, adapter, self.blobs.local_path(adapter)))
        except Exception as exc:
            raise RunFailed("model_unavailable", f"The engine could not load '{run.model}': {exc}") from None
        return urls[0], adapter

    def _ready_engines(self, run: EvalRun, base: str) -> list[str]:
        """Ready engines of ``base``, waiting up to ENGINE_WAIT_S for one that is still starting."""
        deadline = time.monotonic() + ENGINE_WAIT_S
        while not (urls := self.registry.ready(base)):
            if time.monotonic() > deadline or self._stop.is_set():
                raise RunFailed("engine_unavailable", f"No serving engine for '{base}' became ready in "
                                                      f"{ENGINE_WAIT_S:.0f} s.")
            if not self.store.heartbeat(run.id, self.id, self.lease_s):
                raise RunFailed("canceled", "The run was canceled while waiting for an engine.")
            self._stop.wait(1.0)
        return urls

    def _messages(self, run: EvalRun, item: dict[str, Any]) -> list[dict[str, str]]:
        spec = run.data_source["input_messages"]
        if spec["type"] == "item_reference":
            messages = _lookup({"item": item}, spec["item_reference"])
            if not isinstance(messages, list):
                raise RunFailed("invalid_item", f"{spec['item_reference']} is not a list of messages")
            return messages
        return [{"role": m["role"], "content": render(m["content"], item, None)} for m in spec["template"]]

    def _graded(self, run: EvalRun, criteria: list[dict], index: int, item: dict, messages: list[dict],
                answer: dict, params: dict) -> EvalOutputItem:
        if "error" in answer:
            return self._errored(run, index, item, answer["error"]["message"], messages)
        choice = answer["choices"][0]
        text = choice["message"].get("content") or ""
        results = []
        for criterion in criteria:
            try:
                graded, reference = render(criterion["input"], item, text), render(criterion["reference"], item, text)
            except RunFailed as exc:
                return self._errored(run, index, item, f"{criterion['name']}: {exc.message}", messages)
            score = text_similarity(criterion["evaluation_metric"], [(graded, reference)])[0]
            results.append({"name": criterion["name"], "type": "text_similarity", "score": round(score, 6),
                            "passed": score >= criterion["pass_threshold"], "sample": None})
        usage = answer.get("usage") or {}
        sample = {
            "input": messages, "output": [{"role": "assistant", "content": text}],
            "finish_reason": choice.get("finish_reason") or "stop", "model": run.model,
            "usage": {"total_tokens": usage.get("total_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0),
                      "prompt_tokens": usage.get("prompt_tokens", 0), "cached_tokens": 0},
            "error": None, "temperature": float(params.get("temperature", 0)),
            "max_completion_tokens": int(params.get("max_tokens") or 0), "top_p": float(params.get("top_p", 1.0)),
            "seed": int(params.get("seed") or 0),
        }
        status = "pass" if all(r["passed"] for r in results) else "fail"
        return EvalOutputItem(id=new_id("outputitem_"), run_id=run.id, eval_id=run.eval_id, datasource_item_id=index,
                              datasource_item=item, status=status, results=results, sample=sample, created_at=now())

    def _errored(self, run: EvalRun, index: int, item: dict, message: str, messages: list | None = None) -> EvalOutputItem:
        sample = {"input": messages or [], "output": [], "finish_reason": "error", "model": run.model,
                  "usage": {"total_tokens": 0, "completion_tokens": 0, "prompt_tokens": 0, "cached_tokens": 0},
                  "error": {"code": "sample_error", "message": message}, "temperature": 0.0,
                  "max_completion_tokens": 0, "top_p": 1.0, "seed": 0}
        return EvalOutputItem(id=new_id("outputitem_"), run_id=run.id, eval_id=run.eval_id, datasource_item_id=index,
                              datasource_item=item, status="error", results=[], sample=sample, created_at=now())

    def _totals(self, run: EvalRun, criteria: list[dict]) -> dict[str, Any]:
        items = self.store.items(run.id)
        counts = {"total": len(items), "errored": sum(i.status == "error" for i in items),
                  "failed": sum(i.status == "fail" for i in items), "passed": sum(i.status == "pass" for i in items)}
        per = []
        for criterion in criteria:
            outcomes = [r["passed"] for i in items for r in i.results if r["name"] == criterion["name"]]
            per.append({"testing_criteria": criterion["name"], "passed": sum(outcomes),
                        "failed": len(outcomes) - sum(outcomes)})
        usage = [i.sample.get("usage") or {} for i in items if i.status != "error"]
        prompt, completion = sum(u.get("prompt_tokens", 0) for u in usage), sum(u.get("completion_tokens", 0) for u in usage)
        per_model = [{"model_name": run.model, "invocation_count": len(usage), "prompt_tokens": prompt,
                      "completion_tokens": completion, "total_tokens": prompt + completion, "cached_tokens": 0}]
        return {"result_counts": counts, "per_testing_criteria_results": per, "per_model_usage": per_model}


def _lookup(namespace: dict[str, Any], path: str) -> Any:
    value: Any = namespace
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise RunFailed("invalid_item", f"the item has no '{path}'")
        value = value[part]
    return value


def render(template: str, item: dict[str, Any], output_text: str | None) -> str:
    """``{{item.x.y}}`` and ``{{sample.output_text}}`` substituted (non-strings as JSON)."""
    namespace = {"item": item, "sample": {"output_text": output_text or ""}}

    def value(match: Any) -> str:
        found = _lookup(namespace, match.group(1))
        return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)

    return TEMPLATE_VAR.sub(value, template)


def start_in_thread(worker: EvalWorker) -> threading.Thread:
    thread = threading.Thread(target=worker.run_forever, name="eval-worker", daemon=True)
    thread.start()
    return thread
