"""A job's ``integrations`` (OpenAI's ``FineTuningIntegration``: Weights & Biases) and its TensorBoard events.

At create (``parse``): each entry is ``{"type": "wandb", "wandb": {"project", "name", "entity", "tags"}}``, checked
here (a 400 naming the field) and stored as given, normalized; the job object echoes them.

In the training child (``Tracker``): every metrics event the job records is also logged

- to TensorBoard event files (``tensorboardX``, always: a tunegate extension), attached to the job's results as
  ``tensorboard.tar.gz`` (``tensorboard --logdir`` on the unpacked folder shows the curves);
- to a W&B run when the job asked for one: online when the operator configured ``integrations.wandb_entity`` and
  the worker's environment has ``WANDB_API_KEY`` (and ``WANDB_BASE_URL`` for a self-hosted server), otherwise in
  offline mode, the run folder then attached as ``wandb-offline-run.tar.gz`` (unpack it and ``wandb sync <folder>``
  uploads it later, with the tenant's own key).

The key is the operator's, never the tenant's, so a tenant must not steer where it writes (``wandb_target``): an
online run always goes to the configured entity, into ``<organization id>-<project>``; a create naming another
``entity`` is a 400 while one is configured, and a stored job whose ``entity`` no longer matches (the setting
changed) logs offline. The operator's ``WANDB_ENTITY`` / ``WANDB_PROJECT`` never steer a tenant's run either.

Tracking never fails a job: a library that cannot start or log is a warning event, and training goes on.
The folders live under the job (``jobs/<id>/tracking``), shared by a resumed job's claims: TensorBoard gets one
event file per claim, W&B the same run id (the job id), resumed.
"""

from __future__ import annotations

import logging
import os
import tarfile
from pathlib import Path
from typing import Any

from storage.errors import InvalidRequest

log = logging.getLogger("tunegate.integrations")
MAX_INTEGRATIONS = 5  # FineTuningJob.integrations maxItems
MAX_TAGS = 50
MAX_TEXT = 256
MAX_PROJECT = 96  # W&B's 128 less the "<organization id>-" an online run's project is scoped by
BAD_PROJECT_CHARS = "/\\#?%:"  # W&B refuses these in a project name (wandb.Settings.validate_project)
NOT_FROM_OPERATOR = ("WANDB_ENTITY", "WANDB_PROJECT")  # the worker's defaults: never a tenant's run's target
NOT_LOGGED = ("step", "total_steps")  # the step is the x axis; every other number of a metrics event is a curve


def parse(raw: Any, wandb_entity: str | None = None) -> list[dict[str, Any]] | None:
    """The request's ``integrations``, checked and normalized (None when absent or empty). ``wandb_entity``: the
    operator's configured entity (``integrations.wandb_entity``); an ``entity`` naming another one is refused."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _bad("integrations must be an array of integration objects.", "integrations")
    if len(raw) > MAX_INTEGRATIONS:
        raise _bad(f"integrations holds at most {MAX_INTEGRATIONS} entries.", "integrations")
    return [_one(item, f"integrations[{i}]", wandb_entity) for i, item in enumerate(raw)] or None


def _one(item: Any, where: str, wandb_entity: str | None) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad(f"{where} must be an object.", where)
    unknown = sorted(set(item) - {"type", "wandb"})
    if unknown:
        raise _bad(f"Unknown parameter: '{where}.{unknown[0]}'.", f"{where}.{unknown[0]}", "unknown_parameter")
    if item.get("type") != "wandb":
        raise _bad(
            f"{where}.type must be 'wandb' (the only integration supported), not {item.get('type')!r}.", f"{where}.type"
        )
    wandb = item.get("wandb")
    if not isinstance(wandb, dict):
        raise _bad(
            f"{where}.wandb is required: an object with project (and name, entity, tags).",
            f"{where}.wandb",
            "missing_required_parameter" if wandb is None else "invalid_value",
        )
    unknown = sorted(set(wandb) - {"project", "name", "entity", "tags"})
    if unknown:
        raise _bad(
            f"Unknown parameter: '{where}.wandb.{unknown[0]}'.", f"{where}.wandb.{unknown[0]}", "unknown_parameter"
        )
    project = wandb.get("project")
    if (
        not isinstance(project, str)
        or not project.strip()
        or len(project) > MAX_PROJECT
        or any(c in project for c in BAD_PROJECT_CHARS)
    ):
        raise _bad(
            f"{where}.wandb.project is required: the W&B project name (1-{MAX_PROJECT} characters, none of "
            f"{' '.join(BAD_PROJECT_CHARS)}).",
            f"{where}.wandb.project",
            "missing_required_parameter" if project is None else "invalid_value",
        )
    shown: dict[str, Any] = {"project": project}
    for key in ("name", "entity"):
        value = wandb.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT):
            raise _bad(
                f"{where}.wandb.{key} must be a non-empty string of at most {MAX_TEXT} characters, or null.",
                f"{where}.wandb.{key}",
            )
        shown[key] = value
    if wandb_entity is not None and shown["entity"] not in (None, wandb_entity):
        raise _bad(
            f"{where}.wandb.entity must be null or {wandb_entity!r}: this server logs W&B runs with its own "
            f"key, only to that entity (into the project '<organization id>-<project>').",
            f"{where}.wandb.entity",
        )
    tags = wandb.get("tags")
    if tags is not None and (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in tags)
    ):
        raise _bad(
            f"{where}.wandb.tags must be an array of at most {MAX_TAGS} strings of 1-64 characters.",
            f"{where}.wandb.tags",
        )
    shown["tags"] = list(tags or [])
    return {"type": "wandb", "wandb": shown}


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def wandb_online(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether a run can be sent as it goes: the worker has an API key (and no WANDB_MODE=offline)."""
    return bool(env.get("WANDB_API_KEY")) and env.get("WANDB_MODE", "online") not in ("offline", "disabled")


def wandb_target(
    wandb: dict[str, Any], org_id: str, wandb_entity: str | None, env: dict[str, str] | os._Environ[str] = os.environ
) -> tuple[str, str | None, str, str | None]:
    """(mode, entity, project, why offline) of a job's W&B run. Online — with the operator's key — only to the
    configured entity, into ``<org_id>-<project>``; the tenant's ``entity`` only when it is that one. Offline (no
    key, no configured entity, or a stored entity that is not it) the run keeps what the tenant asked for: it is
    theirs to ``wandb sync`` with their own key."""
    asked = wandb.get("entity")
    if not wandb_online(env):
        return "offline", asked, wandb["project"], None
    if wandb_entity is None:
        return (
            "offline",
            asked,
            wandb["project"],
            ("this server has no integrations.wandb_entity configured, so its W&B key is not used for jobs"),
        )
    if asked not in (None, wandb_entity):
        return (
            "offline",
            asked,
            wandb["project"],
            (f"entity {asked!r} is not this server's W&B entity ({wandb_entity!r})"),
        )
    return "online", wandb_entity, f"{org_id}-{wandb['project']}", None


class Tracker:
    """The child's side: TensorBoard always, W&B when asked. Each method swallows the libraries' failures."""

    def __init__(
        self,
        folder: Path,
        job_id: str,
        model: str,
        integrations: list[dict[str, Any]] | None,
        warn: Any = None,
        config: dict[str, Any] | None = None,
        *,
        org_id: str,
        wandb_entity: str | None = None,
    ) -> None:
        self.folder, self.job_id, self.model = folder, job_id, model
        self.org_id, self.wandb_entity = org_id, wandb_entity
        self.warn = warn or (lambda message: log.warning("%s", message))
        self.tb: Any = None
        self.wandb_run: Any = None
        self.wandb_dir: Path | None = None
        self.online = False
        self._start_tensorboard()
        wandb = next((i["wandb"] for i in integrations or [] if i.get("type") == "wandb"), None)
        if wandb is not None:
            self._start_wandb(wandb, config or {})

    @property
    def tensorboard_dir(self) -> Path:
        return self.folder / "tensorboard"

    def _start_tensorboard(self) -> None:
        try:
            from tensorboardX import SummaryWriter

            self.tensorboard_dir.mkdir(parents=True, exist_ok=True)
            self.tb = SummaryWriter(logdir=str(self.tensorboard_dir), flush_secs=5)
        except Exception as exc:  # noqa: BLE001 - tracking never fails a job
            self.warn(f"TensorBoard events are not written: {type(exc).__name__}: {exc}")

    def _start_wandb(self, settings: dict[str, Any], config: dict[str, Any]) -> None:
        for name in NOT_FROM_OPERATOR:
            os.environ.pop(name, None)  # this process is the job's: wandb.init would fall back on them
        mode, entity, project, why = wandb_target(settings, self.org_id, self.wandb_entity)
        self.online = mode == "online"
        if why:
            self.warn(f"Weights & Biases logs this job offline (result file wandb-offline-run.tar.gz): {why}.")
        self.wandb_dir = self.folder / "wandb-root"
        self.wandb_dir.mkdir(parents=True, exist_ok=True)
        for name, sub in (("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_DATA_DIR", "wandb-data")):
            os.environ.setdefault(name, str(self.folder / sub))  # this process is the job's: keep W&B's files with it
        try:
            import wandb

            self.wandb_run = wandb.init(
                project=project,
                name=settings.get("name") or self.job_id,
                entity=entity,
                tags=[
                    "tunegate/finetune",
                    f"tunegate/{self.model}"[:64],
                    f"tunegate/{self.job_id}"[:64],
                    *settings.get("tags", []),
                ],
                id=self.job_id,
                resume="allow",
                dir=str(self.wandb_dir),
                mode="online" if self.online else "offline",
                config=config,
                settings=wandb.Settings(
                    console="off", x_disable_stats=True, silent=True, init_timeout=60, x_disable_meta=False
                ),
            )
        except Exception as exc:  # noqa: BLE001
            self.wandb_run = None
            self.warn(f"Weights & Biases logging is off for this job: {type(exc).__name__}: {exc}")

    def metrics(self, step: int, data: dict[str, float]) -> None:
        values = {
            k: float(v)
            for k, v in data.items()
            if k not in NOT_LOGGED and isinstance(v, int | float) and not isinstance(v, bool)
        }
        if self.tb is not None:
            try:
                for key, value in values.items():
                    self.tb.add_scalar(key, value, step)
            except Exception as exc:  # noqa: BLE001
                self.warn(f"TensorBoard logging stopped: {type(exc).__name__}: {exc}")
                self.tb = None
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(values, step=step)
            except Exception as exc:  # noqa: BLE001
                self.warn(f"Weights & Biases logging stopped: {type(exc).__name__}: {exc}")
                self.wandb_run = None

    def close(self) -> None:
        if self.tb is not None:
            try:
                self.tb.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the TensorBoard writer failed")
            self.tb = None
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish()
            except Exception:  # noqa: BLE001
                log.exception("finishing the W&B run failed")
            self.wandb_run = None

    def archives(self, into: Path) -> list[tuple[str, Path]]:
        """(file name, tar.gz path) of what the job's results should carry: the TensorBoard folder, and the W&B
        offline run folder(s) when the run was not sent online."""
        into.mkdir(parents=True, exist_ok=True)
        found: list[tuple[str, Path]] = []
        if self.tensorboard_dir.is_dir() and any(self.tensorboard_dir.iterdir()):
            found.append(("tensorboard.tar.gz", _tar(self.tensorboard_dir, into / "tensorboard.tar.gz", "tensorboard")))
        runs = sorted((self.wandb_dir / "wandb").glob("offline-run-*")) if self.wandb_dir and not self.online else []
        if runs:
            target = into / "wandb-offline-run.tar.gz"
            with tarfile.open(target, "w:gz") as tar:
                for run in runs:
                    _add_tree(tar, run, run.name)
            found.append(("wandb-offline-run.tar.gz", target))
        return found


def _tar(folder: Path, target: Path, arcname: str) -> Path:
    with tarfile.open(target, "w:gz") as tar:
        _add_tree(tar, folder, arcname)
    return target


def _add_tree(tar: tarfile.TarFile, folder: Path, arcname: str) -> None:
    """``folder`` as plain files: a symlink (W&B links its run's logs/debug-core.log to the service's log by absolute
    path) is stored as the file it points to, or left out when that is gone — never as a link into this server."""
    tar.add(folder, arcname=arcname, recursive=False)
    for path in sorted(folder.rglob("*")):
        name = f"{arcname}/{path.relative_to(folder).as_posix()}"
        if path.is_symlink():
            if path.resolve().is_file():
                tar.add(path.resolve(), arcname=name)
        elif path.is_dir():
            tar.add(path, arcname=name, recursive=False)
        elif path.is_file():
            tar.add(path, arcname=name)
