"""Engines: vLLM OpenAI servers, each a ``Replica`` of one base model, and the supervision that keeps them up.

A replica is either *local* (a child process this gateway spawns and restarts: ``LocalEngine``) or *external*
(a URL from settings, only health-checked: ``ExternalEngine``). Both keep ``Replica.state`` true:

    starting ──/health ok──▶ ready ──process exit / 3 failed checks / refused connection──▶ down ──▶ starting …

A replica that (re)becomes ready has no adapters loaded as far as the gateway knows; they are loaded again on use.

Engines are not an open door: a local engine listens on 127.0.0.1 and requires a random key of its own, new at
every start (``Replica.api_key``, given to the engine in its environment, never on its command line); an external
replica requires the base model's ``engine_api_key``. Every call to an engine sends ``Replica.auth``; the key is
published to workers through the engine registry (``storage.engines``) and shown by no API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import httpx

from storage.settings import Settings

log = logging.getLogger("tunegate.serving")

State = Literal["starting", "ready", "down"]
FAILED_CHECKS_BEFORE_DOWN = 3
ENGINE_KEY_VAR = "VLLM_API_KEY"  # how a local engine learns its key (vLLM reads it too; serving.engine_main)


class Replica:
    """One engine (vLLM or llama.cpp OpenAI server) for one base model, as the router sees it."""

    def __init__(
        self, base_model: str, url: str, *, local: bool, kind: str = "vllm", api_key: str | None = None
    ) -> None:
        self.base_model, self.url, self.local, self.kind = base_model, url.rstrip("/"), local, kind
        self.api_key = api_key  # never in describe(): /admin/engines and /health do not show it
        # vLLM answers /health; llama-cpp-python's server has no such route, its /v1/models serves instead
        self.health_path = "/v1/models" if kind == "llama.cpp" else "/health"
        self.state: State = "starting"
        self.detail = "starting"
        self.since = time.monotonic()
        self.loaded: OrderedDict[str, str] = OrderedDict()  # engine adapter name → path, least recently used first
        self.locks: dict[str, asyncio.Lock] = {}
        self.loads = asyncio.Lock()  # one load (and its evictions) at a time: max_adapters_per_engine is shared
        self.in_flight = 0
        self.pid: int | None = None
        self.restarts = 0

    def set_state(self, state: State, detail: str) -> None:
        if state != "ready" or self.state != "ready":
            self.loaded.clear()  # a (re)started engine has no runtime adapters
        if state != self.state:
            log.log(
                logging.WARNING if state == "down" else logging.INFO,
                "engine %s (%s): %s — %s",
                self.base_model,
                self.url,
                state,
                detail,
            )
            self.since = time.monotonic()
        self.state, self.detail = state, detail

    @property
    def auth(self) -> dict[str, str]:
        """The headers every request to this engine carries."""
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def describe(self) -> dict[str, object]:
        return {
            "base_model": self.base_model,
            "engine": self.kind,
            "url": self.url,
            "local": self.local,
            "state": self.state,
            "detail": self.detail,
            "pid": self.pid,
            "restarts": self.restarts,
            "in_flight": self.in_flight,
            "adapters": list(self.loaded),
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _healthy(http: httpx.AsyncClient, replica: Replica) -> bool:
    try:
        response = await http.get(f"{replica.url}{replica.health_path}", headers=replica.auth, timeout=10.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


class ExternalEngine:
    """A vLLM server somebody else runs: health-checked, never restarted from here."""

    def __init__(self, replica: Replica, http: httpx.AsyncClient, interval: float) -> None:
        self.replica, self.http, self.interval = replica, http, interval

    async def run(self) -> None:
        failures = 0
        while True:
            if await _healthy(self.http, self.replica):
                failures = 0
                if self.replica.state != "ready":
                    self.replica.set_state("ready", "healthy")
            else:
                failures += 1
                if self.replica.state == "ready" and failures >= FAILED_CHECKS_BEFORE_DOWN:
                    self.replica.set_state("down", f"{failures} failed health checks")
                elif self.replica.state == "starting" and failures >= FAILED_CHECKS_BEFORE_DOWN:
                    self.replica.set_state("down", "not reachable")
            await asyncio.sleep(self.interval)


class LocalEngine:
    """A vLLM server this gateway spawns (``python -m serving.engine_main``), waits for, watches and restarts."""

    def __init__(self, replica: Replica, http: httpx.AsyncClient, settings: Settings, settings_file: Path) -> None:
        self.replica, self.http, self.settings, self.settings_file = replica, http, settings, settings_file
        self.proc: asyncio.subprocess.Process | None = None
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in replica.base_model)
        self.log_path = (settings.data_dir / "run" / f"engine-{safe}.log").resolve()

    async def run(self) -> None:
        backoff = 1.0
        try:
            while True:
                started = time.monotonic()
                await self._spawn()
                if await self._until_ready():
                    await self._watch()
                code = await self._stop()
                ran = time.monotonic() - started
                self.replica.restarts += 1
                backoff = 1.0 if ran > 120 else min(backoff * 2, 30.0)
                self.replica.set_state(
                    "down",
                    f"engine exited (code {code}); restarting in {backoff:.0f} s; "
                    f"see {self.log_path}: {_tail(self.log_path)}",
                )
                await asyncio.sleep(backoff)
        finally:
            await self._stop()

    async def _spawn(self) -> None:
        port = free_port()
        self.replica.url = f"http://127.0.0.1:{port}"
        self.replica.api_key = secrets.token_urlsafe(32)
        self.replica.set_state("starting", "loading the model")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = Settings.child_environ(database=False, **{ENGINE_KEY_VAR: self.replica.api_key})
        with open(self.log_path, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "serving.engine_main",
                str(self.settings_file),
                self.replica.base_model,
                str(port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.replica.pid = self.proc.pid
        log.info(
            "engine for %s starting on port %d (pid %d, log %s)",
            self.replica.base_model,
            port,
            self.proc.pid,
            self.log_path,
        )

    async def _until_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + self.settings.serving.startup_timeout_seconds
        while time.monotonic() < deadline:
            if await _exited(self.proc, 0.5):
                return False
            if await _healthy(self.http, self.replica):
                self.replica.set_state("ready", "healthy")
                return True
        self.replica.set_state("down", f"not healthy after {self.settings.serving.startup_timeout_seconds:.0f} s")
        return False

    async def _watch(self) -> None:
        assert self.proc is not None
        failures = 0
        while not await _exited(self.proc, self.settings.serving.health_interval_seconds):
            if self.replica.state == "down" or not await _healthy(self.http, self.replica):
                failures += 1  # a refused request marks the replica down at once; the check confirms it
                if failures >= FAILED_CHECKS_BEFORE_DOWN:
                    return
            else:
                failures = 0
                if self.replica.state != "ready":
                    self.replica.set_state("ready", "healthy")

    async def _stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # vLLM's own engine-core children are in the group
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except (TimeoutError, asyncio.CancelledError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.shield(proc.wait())
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
        self.replica.pid = None
        return proc.returncode


async def _exited(proc: asyncio.subprocess.Process, wait: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), wait)
    except TimeoutError:
        return False
    return True


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_bytes()[-4000:].decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])
