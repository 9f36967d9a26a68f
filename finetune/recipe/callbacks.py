"""The one bridge between the Trainer and the job: metrics, checkpoints, progress, cancel/pause.

The recipe knows nothing about databases: it calls a ``Reporter`` (the job's child process implements it
over the job store; the benchmark uses a silent one).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, Protocol

from transformers import TrainerCallback

Stop = Literal["cancel", "pause"] | None


class Reporter(Protocol):
    def event(self, message: str, level: str = "info") -> None: ...
    def metrics(self, step: int, total_steps: int, data: dict[str, float]) -> None: ...
    def checkpoint(self, step: int, directory: Path, metrics: dict[str, float]) -> None: ...
    def progress(self, trained_tokens: int, estimated_finish: int | None) -> None: ...
    def stop_requested(self) -> Stop: ...


class SilentReporter:
    def event(self, message: str, level: str = "info") -> None: ...
    def metrics(self, step: int, total_steps: int, data: dict[str, float]) -> None: ...
    def checkpoint(self, step: int, directory: Path, metrics: dict[str, float]) -> None: ...
    def progress(self, trained_tokens: int, estimated_finish: int | None) -> None: ...
    def stop_requested(self) -> Stop:
        return None


def _num(logs: dict[str, float], key: str) -> float | None:
    value = logs.get(key)
    return None if value is None else round(float(value), 6)


class JobCallback(TrainerCallback):
    """Turns Trainer logs into OpenAI metrics events and epoch saves into checkpoints; polls for cancel/pause.

    A step's train log, eval log and save arrive one after another; the step's metrics event is written once
    all are in (at the next step, a save, or the end), so a checkpoint carries the validation numbers too.
    Job checkpoints come from epoch-end saves (``checkpoint_every_save``: from every save but a pause's).
    """

    checkpoint_every_save = False

    def __init__(self, reporter: Reporter, poll_seconds: float = 1.0) -> None:
        self.reporter, self.poll_seconds = reporter, poll_seconds
        self.pending: dict[str, float | None] = {}  # a metric a log lacks is None (left out at the flush)
        self.pending_step = 0
        self.last_metrics: dict[str, float] = {}
        self.stopped: Stop = None
        self._last_poll = 0.0
        self._started = time.monotonic()
        self._start_step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._started, self._start_step = time.monotonic(), state.global_step
        self._poll(control, force=True)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._flush(state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._poll(control)
        done = state.global_step - self._start_step
        if done:
            per_step = (time.monotonic() - self._started) / done
            eta = int(time.time() + per_step * (state.max_steps - state.global_step))
            self.reporter.progress(int(state.num_input_tokens_seen or 0), eta)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        logs = logs or {}
        if self.pending_step != state.global_step:
            self._flush(state)
            self.pending_step = state.global_step
        if "loss" in logs:
            lr = logs.get("learning_rate")  # for the console's learning-rate curve; 6 significant digits (1e-7 stays)
            self.pending.update(
                train_loss=_num(logs, "loss"),
                train_mean_token_accuracy=_num(logs, "mean_token_accuracy"),
                learning_rate=None if lr is None else float(f"{float(lr):.6g}"),
            )
        if "eval_loss" in logs:
            valid = {
                "valid_loss": _num(logs, "eval_loss"),
                "valid_mean_token_accuracy": _num(logs, "eval_mean_token_accuracy"),
            }
            self.pending.update(valid, **{f"full_{k}": v for k, v in valid.items()})

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._flush(state)
        at_epoch_end = state.epoch is not None and abs(state.epoch - round(state.epoch)) < 1e-6
        if (at_epoch_end or self.checkpoint_every_save) and self.stopped is None:
            directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.reporter.checkpoint(state.global_step, directory, {"step": state.global_step, **self.last_metrics})

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._flush(state)

    def _flush(self, state: Any) -> None:
        if not self.pending or not self.pending_step:
            return
        data = {k: v for k, v in self.pending.items() if v is not None}
        self.last_metrics = data
        self.reporter.metrics(self.pending_step, state.max_steps, data)
        self.pending = {}

    def _poll(self, control: Any, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_poll < self.poll_seconds:
            return
        self._last_poll = time.monotonic()
        stop = self.reporter.stop_requested()
        if stop is not None and self.stopped is None:
            self.stopped = stop
            control.should_training_stop = True
            control.should_save = stop == "pause"  # a paused job resumes from exactly this step
