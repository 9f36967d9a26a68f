"""Executes eval runs in the worker: items → samples (generated, or given by a jsonl source) → graders → output items.

A run is claimed under a lease (``finetune.leased.LeasedWorker``) that a thread of its own renews while the run
works, so a slow batch never outlives it unnoticed; a canceled run, or one whose lease was lost, stops at the next
batch, and a batch's items are stored only while the claim holds the lease (fenced; (run, item) is unique). A
run whose worker died is taken over and continues after the items already stored. Items are streamed from their file
(never read whole) in batches of ``BATCH``: a ``completions`` run sends a batch's prompts concurrently to the model's
engine
(vLLM batches them), then every testing criterion grades the batch at once through the grader engine (Python
graders in the sandbox pool, judges through the engines, usage recorded for the organization). Totals are kept
incrementally. No engine for a model's base → the run fails with ``engine_unavailable`` (it would otherwise wait
forever).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from itertools import islice
from typing import Any, Protocol

import httpx

from finetune.evals.engine_adapters import EngineAdapters
from finetune.evals.generation import UsageSink, chat_all
from finetune.evals.metrics import strip_think
from finetune.evals.results import Totals, output_item, result, sample_record
from finetune.graders.embeddings import Embedder
from finetune.graders.engine import GraderEngine
from finetune.graders.messages import flat, render_messages
from finetune.graders.sandbox import SandboxPool
from finetune.graders.templates import TemplateError, lookup, sample_namespace
from finetune.leased import LeasedWorker
from serving.placement import engine_for
from storage.blobs import BlobStore
from storage.db import Database, Retrying
from storage.engines import EngineAddress, EngineRegistry, engine_adapter_path, engine_url
from storage.errors import TunegateError
from storage.evals import EvalStore
from storage.files import Files
from storage.json_limits import capped_lines, depth_problem
from storage.leases import LeaseLost
from storage.permissions import visible_model
from storage.settings import Settings
from storage.stored_completions import Selection, StoredCompletions, eval_item
from storage.tables import Batch, EvalRun

log = logging.getLogger("tunegate.evals")
BATCH = 32
ENGINE_WAIT_S = 300.0  # a run created while the engine still loads waits for it


class RunFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class EvalWorker(LeasedWorker):
    kind = "evals"

    def __init__(self, settings: Settings, db: Database, blobs: BlobStore) -> None:
        super().__init__(settings)
        self.db, self.blobs = db, blobs
        # claim and renew: errors must surface; at most limits.running_eval_runs per organization (its override wins)
        self.store, self.registry = EvalStore(db, settings.limits.running_eval_runs), EngineRegistry(db)
        # the run's own reads and writes ride out a database restart (retried with backoff; writes are fenced)
        self.durable, self.files = Retrying(self.store), Retrying(Files(db, blobs))
        self.sandbox, self.embed = SandboxPool(), Embedder()  # started on first use

    def run_forever(self) -> None:
        try:
            super().run_forever()
        finally:
            self.sandbox.close()
            self.embed.close()

    def claim(self, lease: str) -> EvalRun | None:
        return self.store.claim(lease, self.lease_s)

    def heartbeat(self, item_id: str, lease: str) -> bool:
        return self.store.heartbeat(item_id, lease, self.lease_s)

    def work(self, run: EvalRun, lease: str) -> None:
        log.info("eval worker %s running %s", self.id, run.id)
        try:
            with self.heartbeat_thread(run.id, lease) as lost:
                self.execute(run, lease, lost)
        except LeaseLost:
            log.info("eval run %s was canceled or taken over; stopping", run.id)
        except RunFailed as exc:
            self.durable.finish(run.id, lease, status="failed", error={"code": exc.code, "message": exc.message})
        except Exception:  # one bad run never stops the worker; what failed is logged, never shown to the tenant
            log.exception("eval run %s failed", run.id)
            self.durable.finish(
                run.id,
                lease,
                status="failed",
                error={
                    "code": "eval_failed",
                    "message": f"Eval run {run.id} failed because of an internal error (logged by the server).",
                },
            )

    # --- one run -----------------------------------------------------------------------------------------
    def execute(self, run: EvalRun, lease: str, lost: threading.Event) -> None:
        criteria = self.durable.get_eval(run.organization_id, run.eval_id).testing_criteria
        totals = Totals([c["name"] for c in criteria])
        totals.add(self.durable.items(run.id), run.model)  # a run taken over: what its first worker stored
        done = {int(i) for i in self.durable.done_ids(run.id)}
        with EngineTargets(self, run, lost) as models:
            self._execute(run, lease, lost, models, criteria, totals, done)

    def _execute(
        self,
        run: EvalRun,
        lease: str,
        lost: threading.Event,
        models: EngineTargets,
        criteria: list[dict[str, Any]],
        totals: Totals,
        done: set[int],
    ) -> None:
        if run.data_source["type"] == "completions":
            models.target(run.model)  # fails the run at once when the model cannot be served
        engine = GraderEngine(sandbox=self.sandbox, judge=models.judge, embed=self.embed)
        todo = ((i, item, sample) for i, item, sample in self._items(run) if i not in done)
        while batch := list(islice(todo, BATCH)):
            if lost.is_set() or self.stopping:
                log.info("eval run %s was canceled, taken over or its worker is stopping; stopping", run.id)
                return
            samples = self._samples(run, models, batch)
            rows = [(ns, item) for (_, item, _), (ns, _) in zip(batch, samples, strict=True) if ns is not None]
            graded = [engine.grade(c, rows, run.organization_id) for c in criteria]
            items, k = [], 0
            for (index, item, _), (ns, record) in zip(batch, samples, strict=True):
                results = []
                if ns is not None:
                    results, k = [result(c, graded[j][k]) for j, c in enumerate(criteria)], k + 1
                items.append(output_item(run, index, item, record, results))
            self.durable.add_items(items, lease)  # fenced: nothing once another claim holds the run
            totals.add(items, run.model)
            self.durable.progress(run.id, lease, **totals.fields())
        if not totals.counts["total"]:
            raise RunFailed("invalid_file", "The data source has no items.")
        self.durable.finish(run.id, lease, status="completed", **totals.fields())

    def _items(self, run: EvalRun) -> Iterator[tuple[int, dict[str, Any], dict[str, Any] | None]]:
        """(index, item, the row's own sample or None), streamed from the file line by line."""
        source = run.data_source["source"]
        if source["type"] == "file_content":
            for i, row in enumerate(source["content"]):
                yield i, row["item"], row.get("sample")
            return
        if source["type"] == "stored_completions":  # read a page at a time, oldest first
            selection = Selection(
                source.get("metadata") or {},
                source.get("model"),
                source.get("created_after"),
                source.get("created_before"),
            )
            for i, stored in enumerate(
                StoredCompletions(self.db).select(run.organization_id, selection, source.get("limit"))
            ):
                yield i, *eval_item(stored)
            return
        stored = self.files.get(run.organization_id, source["id"])
        index = 0
        limits = self.settings.requests  # a line is held to the API's own caps on a body: size, then depth
        with open(self.blobs.local_path(stored.blob_key), "rb") as fh:
            for number, line in capped_lines(fh, limits.max_body_bytes):
                if line is None:
                    raise RunFailed(
                        "invalid_file",
                        f"file {source['id']} line {number}: larger than "
                        f"{limits.max_body_bytes} bytes (settings.requests.max_body_bytes)",
                    )
                if (problem := depth_problem(line, limits.max_json_depth)) is not None:
                    raise RunFailed(
                        "invalid_file", f"file {source['id']} line {number}: not acceptable JSON ({problem})"
                    )
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
                    raise RunFailed("invalid_file", f"file {source['id']} line {number}: not JSON ({exc})") from None
                if not isinstance(row, dict):
                    raise RunFailed("invalid_file", f"file {source['id']} line {number}: not a JSON object")
                if isinstance(row.get("item"), dict):
                    yield index, row["item"], row.get("sample") if isinstance(row.get("sample"), dict) else None
                else:
                    yield index, row, None
                index += 1

    def _samples(self, run: EvalRun, models: EngineTargets, batch: list) -> list[tuple[dict | None, dict[str, Any]]]:
        """(sample namespace or None when the sample errored, the output item's sample record) per item."""
        if run.data_source["type"] == "jsonl":
            return [_given(run, item, sample) for _, item, sample in batch]
        params = dict(run.data_source.get("sampling_params") or {})
        params.setdefault("temperature", 0)
        out: list[tuple[dict | None, dict[str, Any]] | None] = [None] * len(batch)
        prompts, where = [], []
        for k, (_, item, _) in enumerate(batch):
            try:
                prompts.append(_messages(run, item))
                where.append(k)
            except (TemplateError, RunFailed) as exc:
                out[k] = (None, sample_record(run, [], None, params, str(exc)))
        answers = models.chat(run.model, prompts, params, "data_source.sampling_params") if prompts else []
        for k, messages, answer in zip(where, prompts, answers, strict=True):
            if "error" in answer:
                out[k] = (None, sample_record(run, flat(messages), None, params, answer["error"]["message"]))
                continue
            message = answer["choices"][0]["message"]
            text = message.get("content") or ""
            if models.reasoning(run.model):  # as the chat API answers a reasoning model: the thought apart
                text = strip_think(text)
            ns = sample_namespace(text, message.get("tool_calls"), answer["choices"])
            out[k] = (ns, sample_record(run, flat(messages), answer, params))
        return [o for o in out if o is not None]


def _messages(run: EvalRun, item: dict[str, Any]) -> list[dict[str, Any]]:
    spec = run.data_source["input_messages"]
    if spec["type"] == "item_reference":
        value = lookup({"item": item}, spec["item_reference"])
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
            raise RunFailed("invalid_item", f"{spec['item_reference']} is not a list of messages")
        return value
    return render_messages(spec["template"], {"item": item})


def _given(run: EvalRun, item: dict[str, Any], sample: dict[str, Any] | None) -> tuple[dict | None, dict[str, Any]]:
    """A jsonl row's own sample: graded as it is."""
    if sample is None:
        return None, sample_record(
            run,
            [],
            None,
            {},
            "This row has no sample to grade (jsonl runs grade given "
            'samples: {"item": …, "sample": {"output_text": …}}).',
        )
    text = sample.get("output_text")
    if not isinstance(text, str):
        choices = sample.get("choices") or [{}]
        text = ((choices[0] or {}).get("message") or {}).get("content") or ""
    fake = {
        "choices": [
            {
                "message": {"content": text, "tool_calls": sample.get("output_tools")},
                "finish_reason": sample.get("finish_reason", "stop"),
            }
        ],
        "usage": sample.get("usage"),
    }
    return sample_namespace(text, **{k: v for k, v in sample.items() if k != "output_text"}), sample_record(
        run, flat(sample.get("input") or []), fake, {}
    )


class TargetsWorker(Protocol):
    """What ``EngineTargets`` uses of its worker (an ``EvalWorker`` or a batches worker)."""

    settings: Settings
    db: Database
    blobs: BlobStore
    registry: EngineRegistry

    @property
    def stopping(self) -> bool: ...

    def idle(self, seconds: float) -> bool: ...


class Stopped(Protocol):
    """What ``EngineTargets`` polls while it waits for an engine (a ``threading.Event`` set when the run ends)."""

    def is_set(self) -> bool: ...


class EngineTargets:
    """The engines of the models one run uses (the model under test, judges): resolved for the run's organization
    (another organization's model does not exist), adapters loaded once, usage recorded for the organization. The one
    way from a tenant's model id to an engine in the workers (eval runs, batches).

    A route that a checkpoint permission opened (another organization's model shared with this one) is checked
    again every ``recheck_s`` seconds, so revoking the permission ends access within seconds, not at the end of the
    run: the model is then not found for the rest of the run.

    Adapters are loaded within ``serving.max_adapters_per_engine`` and unloaded when the run ends unless someone
    else had them loaded (``finetune.evals.engine_adapters``); use it as a context manager."""

    recheck_s = 2.0
    transport: httpx.AsyncBaseTransport | None = None  # the engines' HTTP transport for adapter loads (tests: a mock)

    def __init__(self, worker: TargetsWorker, run: EvalRun | Batch, lost: Stopped) -> None:
        self.worker, self.run, self.lost = worker, run, lost
        self.adapters = EngineAdapters(worker.settings.serving.max_adapters_per_engine, transport=self.transport)
        self._targets: dict[str, tuple[EngineAddress, str] | RunFailed] = {}
        self._bases: dict[str, str] = {}
        self._granted: dict[str, float] = {}  # a model another organization shares → when its grant was last seen

    def __enter__(self) -> EngineTargets:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.adapters.release()

    def reasoning(self, model: str) -> bool:
        """Whether ``model``'s base is a reasoning model (its samples' output_text leaves out ``<think>…</think>``)."""
        spec = self.worker.settings.base_models.get(self._bases.get(model, model))
        return bool(spec and spec.reasoning)

    def chat(self, model: str, conversations: list[list[dict]], params: dict | list[dict], prefix: str) -> list[dict]:
        """Answers, or RunFailed when the model cannot be reached at all (remembered for the rest of the run)."""
        address, engine_model = self.target(model)
        usage = UsageSink(self.worker.db, self.run.organization_id, model, "evals.runs", self.run.id)
        return chat_all(
            address,
            engine_model,
            conversations,
            params,
            usage=usage,
            limits=self.worker.settings.requests,
            param_prefix=prefix,
        )

    def judge(self, model: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A judge's answers; a judge that cannot be reached errors the rows it grades, not the run."""
        try:
            return self.chat(
                model,
                [b["messages"] for b in bodies],
                [{k: v for k, v in b.items() if k != "messages"} for b in bodies],
                "grader.sampling_params",
            )
        except (RunFailed, TunegateError) as exc:  # unreachable, or a judge body the allow-list refuses
            return [{"error": {"message": exc.message}}] * len(bodies)

    def base(self, model: str) -> str:
        """The base model of a model ``target`` resolved."""
        return self._bases[model]

    def target(self, model: str) -> tuple[EngineAddress, str]:
        """The engine and engine-side name of ``model``, or RunFailed (remembered for the rest of the run)."""
        if model not in self._targets:
            try:
                self._targets[model] = self._resolve(model)
            except RunFailed as exc:
                self._targets[model] = exc
        elif model in self._granted and time.monotonic() - self._granted[model] >= self.recheck_s:
            self._recheck(model)
        found = self._targets[model]
        if isinstance(found, RunFailed):
            raise found
        return found

    def _recheck(self, model: str) -> None:
        with self.worker.db.session() as s:
            row = visible_model(s, self.run.organization_id, model)
        if row is None or row.adapter_key is None:  # the permission was revoked (or the model deleted)
            self._granted.pop(model)
            self._targets[model] = RunFailed(
                "model_not_found", f"The model '{model}' does not exist or you do not have access to it."
            )
        else:
            self._granted[model] = time.monotonic()

    def _resolve(self, model: str) -> tuple[EngineAddress, str]:
        worker, org = self.worker, self.run.organization_id
        base, adapter = worker.settings.base_model_id(model) or model, None  # a base model's alias: the base
        if base not in worker.settings.base_models:
            with worker.db.session() as s:
                row = visible_model(s, org, model)  # its own, or shared with it (storage.permissions)
            if row is None or row.adapter_key is None:
                raise RunFailed("model_not_found", f"The model '{model}' no longer exists.")
            base, adapter = row.base_model, row.adapter_key
            if row.organization_id != org:  # opened by a checkpoint permission: checked again while in use
                self._granted[model] = time.monotonic()
        self._bases[model] = base
        engines = self._ready(base)
        if adapter is None:  # a base model: runs and batches spread over its replicas by their ids
            return engine_for(self.run.id, engines, engine_url), base
        engine = engine_for(adapter, engines, engine_url)  # the adapter's home, as every gateway places it
        try:
            self.adapters.ensure(engine, adapter, engine_adapter_path(worker.settings, adapter, worker.blobs))
        except Exception:  # the detail (engine URL, blob path or S3 error) is the operator's: logged
            log.exception("eval run %s: loading %s on %s", self.run.id, model, engine.url)
            raise RunFailed("model_unavailable", f"The engine could not load '{model}'; try again later.") from None
        return engine, adapter

    def _ready(self, base: str) -> list[EngineAddress]:
        """Ready engines of ``base``, waiting up to ENGINE_WAIT_S for one that is still starting."""
        worker, deadline = self.worker, time.monotonic() + ENGINE_WAIT_S
        while not (engines := worker.registry.ready(base)):
            if time.monotonic() > deadline or worker.stopping:
                raise RunFailed(
                    "engine_unavailable", f"No serving engine for '{base}' became ready in {ENGINE_WAIT_S:.0f} s."
                )
            if self.lost.is_set():  # canceled or taken over meanwhile (the lease's own thread noticed)
                raise LeaseLost(f"eval run {self.run.id}: canceled or taken over while waiting for an engine")
            worker.idle(1.0)
        return engines
