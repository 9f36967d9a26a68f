"""Running a unit of work (a fine-tuning job, an export) in a child process that a worker watches.

The child gets its own session (process group), so stopping it also stops whatever it started (llama.cpp's
converter, dataloader workers). Its output goes to a log file whose last error line explains a crash. Its
environment has none of tunegate's variables (no admin key; its settings come from ``Settings.write_for_child``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from storage.settings import Settings

log = logging.getLogger("tunegate.worker")
KILL_GRACE_S = 10.0


def poll_forever(run_once: Callable[[], bool], stop: threading.Event, poll_s: float, what: str) -> None:
    """Call ``run_once`` (True: it found work) until ``stop``; idle rounds wait ``poll_s``. The loop outlives any one
    unit's bookkeeping failure (a database restart, say): it logs and tries again."""
    while not stop.is_set():
        try:
            worked = run_once()
        except Exception:
            log.exception("%s iteration failed", what)
            worked = False
        if not worked:
            stop.wait(poll_s)


def supervise(argv: list[str], log_path: Path, keep_going: Callable[[], bool], interval: float) -> int | None:
    """Run ``argv``; every ``interval`` seconds ask ``keep_going()`` (renew a lease, check for cancel). Returns the
    exit code, or None when ``keep_going`` said stop and the child was stopped. A ``keep_going`` that raises (a
    database hiccup) keeps the child and asks again next time."""
    with open(log_path, "ab") as log_file:
        # training and exports write to the database; W&B's own variables (WANDB_API_KEY, WANDB_BASE_URL, WANDB_MODE…)
        # reach the child with the rest of the environment (only TUNEGATE_* are dropped): the training child logs a
        # job's wandb integration with them (finetune/integrations.py)
        child = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=Settings.child_environ(database=True),
        )
        while True:
            try:
                return child.wait(timeout=interval)
            except subprocess.TimeoutExpired:
                pass
            try:
                go_on = keep_going()
            except Exception:
                log.exception("supervision check failed for %s", argv)
                continue
            if not go_on:
                terminate(child)
                return None


def exit_with_parent() -> None:
    """In a child: if the worker dies (even kill -9), stop too — its lease will hand the work to another worker."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(75)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def terminate(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            pass
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def death(code: int) -> str:
    if code in (-signal.SIGKILL, 137):
        return "was killed (out of memory?)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exited with code {code}"


def last_error(log_path: Path) -> str:
    """The last meaningful line the child wrote (a Python exception, usually)."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:500]
    return lines[-1][:500] if lines else ""
