"""``tunegate`` command line: serve, and local administration straight on the database."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from storage.errors import TunegateError
from storage.settings import ORG_LIMIT_FIELDS, LimitSettings, Settings


def _services(settings: Settings):  # noqa: ANN202 - lazy import keeps `tunegate --help` fast
    from gateway.services import Services
    from storage import migrate

    services = Services.build(settings)
    migrate.upgrade(services.db)
    return services


def _emit(obj: Any) -> None:
    print(json.dumps(msgspec.to_builtins(obj), indent=2, ensure_ascii=False))


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    if args.workers > 1:
        return _serve_workers(settings, args, host, port)
    app = create_app(settings)
    print(
        f"tunegate listening on http://{host}:{port}/v1  (docs: http://{host}:{port}/docs)", file=sys.stderr, flush=True
    )
    uvicorn.run(app, host=host, port=port, log_level=args.log_level, timeout_graceful_shutdown=10)
    return 0


def _serve_workers(settings: Settings, args: argparse.Namespace, host: str, port: int) -> int:
    """``serve --workers N``: N gateway processes on one listening socket (uvicorn's supervisor restarts one that
    dies). This process first migrates and makes the admin key (once, not N times at once), runs the embedded
    worker if there is one (one, not N), and points prometheus_client's multiprocess mode at a fresh directory so
    that /metrics, answered by any process, sums all of them (gateway/metrics.py). Engines must be external
    (engine_urls): N processes would otherwise each spawn their own."""
    import shutil

    import uvicorn

    local = [m for m, spec in settings.base_models.items() if not spec.engine_urls and settings.serving.local_engines]
    if local:
        print(
            f"error: --workers {args.workers} needs external engines: base model(s) {', '.join(local)} have no "
            "engine_urls (start engines with `python -m serving.engine_main`, or set serving.local_engines=false)",
            file=sys.stderr,
        )
        return 2
    metrics_dir = (settings.data_dir / "run" / f"prometheus-{port}").resolve()
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters of an earlier run must not be summed in
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # before anything imports prometheus_client
    from gateway.app import print_admin_key

    services = _services(settings)
    secret = services.prepare()
    if secret:
        print_admin_key(secret)
    workers = None
    if settings.worker.embedded:
        from finetune.leased import start_workers

        workers = start_workers(settings, services)
    os.environ["TUNEGATE_WORKER__EMBEDDED"] = "false"  # the gateway processes read their settings again
    if args.config:
        os.environ["TUNEGATE_CONFIG"] = str(Path(args.config).resolve())
    print(f"tunegate listening on http://{host}:{port}/v1 with {args.workers} processes", file=sys.stderr, flush=True)
    try:
        uvicorn.run(
            "gateway.cli:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=args.workers,
            log_level=args.log_level,
            timeout_graceful_shutdown=10,
        )
    finally:
        if workers is not None:
            workers.stop()
            workers.join(timeout=30)
        services.close()
    return 0


def worker_app():  # noqa: ANN201 - a Litestar app; the factory each ``serve --workers`` process calls
    from gateway.app import create_app

    logging.getLogger("alembic").setLevel(logging.WARNING)  # as main() does for one process
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return create_app(Settings.load())


def cmd_worker(settings: Settings, _: argparse.Namespace) -> int:
    """A standalone fine-tuning worker (several may run, on several hosts, against one Postgres)."""
    import signal
    import threading

    from finetune.leased import start_workers

    # jobs, eval runs and exports each in a thread: eval runs use the engines and exports the CPU, so both run
    # beside a training job
    workers = start_workers(settings, _services(settings))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    print(
        f"tunegate worker {workers.workers[0].id} waiting for jobs, eval runs, exports and batches",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stopped.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        workers.stop()
        workers.join(timeout=30)
    return 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    """Export through a running gateway's API, wait for it, download the bundle into a folder."""
    from gateway.export_client import run_export

    base_url = args.base_url or os.environ.get("OPENAI_BASE_URL") or f"http://127.0.0.1:{settings.port}/v1"
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        print("error: an API key is needed: --api-key or OPENAI_API_KEY", file=sys.stderr)
        return 2
    return run_export(
        base_url, api_key, model=args.model, fmt=args.format, quant=args.quant, system=args.system, output=args.output
    )


def cmd_db_upgrade(settings: Settings, _: argparse.Namespace) -> int:
    from storage import migrate

    services = _services(settings)
    print(f"database at revision {migrate.current_revision(services.db)}")
    return 0


def cmd_orgs_create(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.admin.protocol import OrganizationObject

    _emit(OrganizationObject.of(_services(settings).accounts.create_org(args.name)))
    return 0


def cmd_orgs_list(settings: Settings, _: argparse.Namespace) -> int:
    from gateway.admin.protocol import OrganizationObject

    _emit([OrganizationObject.of(o) for o in _services(settings).accounts.list_orgs()])
    return 0


def cmd_orgs_limits(settings: Settings, args: argparse.Namespace) -> int:
    """Show, set (merged into the stored overrides) or reset (all, or the named) limit overrides of an organization.
    A running gateway applies a change within seconds."""
    from gateway.admin.protocol import LimitsObject

    services = _services(settings)
    accounts = services.accounts
    overrides = accounts.limit_overrides(args.org)
    if args.limits_command == "set":
        changes = {f: getattr(args, f) for f in ORG_LIMIT_FIELDS if getattr(args, f) is not None}
        if not changes:
            print("error: name at least one limit, e.g. --requests-per-minute 600", file=sys.stderr)
            return 2
        overrides = accounts.set_limit_overrides(args.org, {**overrides, **changes})
    elif args.limits_command == "reset":
        unknown = set(args.fields) - set(ORG_LIMIT_FIELDS)
        if unknown:
            print(
                f"error: unknown limit(s) {', '.join(sorted(unknown))}; known: {', '.join(ORG_LIMIT_FIELDS)}",
                file=sys.stderr,
            )
            return 2
        kept = {f: v for f, v in overrides.items() if args.fields and f not in args.fields}
        overrides = accounts.set_limit_overrides(args.org, kept)
    effective = accounts.effective_limits(args.org, settings.limits)
    _emit(LimitsObject.of(args.org, overrides, effective, services.quota.used(args.org)))
    return 0


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.admin.protocol import KeyObject

    issued = _services(settings).accounts.create_key(args.org, args.name)
    _emit(KeyObject.of(issued.key, issued.secret))
    print("The secret above is shown once; tunegate stores only its hash.", file=sys.stderr)
    return 0


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.admin.protocol import KeyObject

    _emit([KeyObject.of(k) for k in _services(settings).accounts.list_keys(args.org)])
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.admin.protocol import KeyObject

    _emit(KeyObject.of(_services(settings).accounts.revoke_key(args.key_id)))
    return 0


def cmd_admin_rotate(settings: Settings, _: argparse.Namespace) -> int:
    if settings.admin_key:
        print("TUNEGATE_ADMIN_KEY is set: the admin credential comes from settings.", file=sys.stderr)
        return 2
    print(_services(settings).accounts.rotate_admin_credential())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunegate", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (overrides TUNEGATE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        path: list[str], func: Callable[[Settings, argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        parent = sub
        for depth in range(1, len(path)):
            parent = _group(parent, path[:depth])
        p = parent.add_parser(path[-1], help=help_)
        p.set_defaults(func=func)
        return p

    serve = add(["serve"], cmd_serve, "run the gateway (embedded defaults: SQLite + ./data)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="gateway processes behind the one port (engines must be external: engine_urls)",
    )
    add(["worker"], cmd_worker, "run a worker (claims queued fine-tuning jobs, eval runs, exports and batches)")
    export = add(
        ["export"],
        cmd_export,
        "export a model (GGUF + Modelfile, GGUF adapter, merged safetensors) "
        "through a running gateway and download the files",
    )
    export.add_argument("model", help="a base model or a fine-tuned model id (ft:…)")
    export.add_argument("--format", default="gguf", choices=["gguf", "gguf_adapter", "safetensors"])
    export.add_argument(
        "--quant", help="GGUF type: f16, bf16, f32, q8_0, q6_k, q5_k_m, q4_k_m (default), q4_0, q3_k_m, q2_k"
    )
    export.add_argument("--system", help="the Modelfile's SYSTEM prompt")
    export.add_argument("--output", "-o", help="folder for the files (default: ./<model>-<quant>)")
    export.add_argument("--base-url", help="the gateway's /v1 URL (default: OPENAI_BASE_URL or this config's port)")
    export.add_argument("--api-key", help="default: OPENAI_API_KEY")
    add(["db", "upgrade"], cmd_db_upgrade, "apply schema migrations")
    add(["orgs", "create"], cmd_orgs_create, "create an organization").add_argument("name")
    add(["orgs", "list"], cmd_orgs_list, "list organizations")
    add(
        ["orgs", "limits", "show"], cmd_orgs_limits, "an organization's limits: overrides, in force, storage used"
    ).add_argument("org")
    limits_set = add(["orgs", "limits", "set"], cmd_orgs_limits, "override some of an organization's limits")
    limits_set.add_argument("org")
    for name in ORG_LIMIT_FIELDS:
        limits_set.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=int,
            metavar="N",
            help=LimitSettings.model_fields[name].description,
        )
    limits_reset = add(
        ["orgs", "limits", "reset"], cmd_orgs_limits, "back to the settings defaults (all, or the named)"
    )
    limits_reset.add_argument("org")
    limits_reset.add_argument("fields", nargs="*", metavar="LIMIT")
    keys_create = add(["keys", "create"], cmd_keys_create, "issue an API key (shown once)")
    keys_create.add_argument("--org", required=True)
    keys_create.add_argument("--name", default="")
    add(["keys", "list"], cmd_keys_list, "list an organization's keys").add_argument("--org", required=True)
    add(["keys", "revoke"], cmd_keys_revoke, "revoke an API key").add_argument("key_id")
    add(["admin", "rotate"], cmd_admin_rotate, "replace the generated admin credential (printed once)")
    return parser


_groups: dict[str, Any] = {}


def _group(sub: Any, path: list[str]) -> Any:
    key, name = " ".join(path), path[-1]
    if key not in _groups:
        _groups[key] = sub.add_parser(name, help=f"{key} commands").add_subparsers(
            dest=f"{name}_command", required=True
        )
    return _groups[key]


def main(argv: list[str] | None = None) -> int:
    _groups.clear()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine health check otherwise
    try:
        settings = Settings.load(args.config)
        return args.func(settings, args)
    except TunegateError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
