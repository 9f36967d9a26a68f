"""Settings sources, and the CLI's organization / key administration used against a live gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from pydantic import ValidationError

from storage.settings import DEFAULT_BASE_MODEL, Settings
from tests.support import LiveGateway, SpecRecorder


def test_defaults_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(Settings().base_models) == {DEFAULT_BASE_MODEL}
    assert Settings(data_dir=tmp_path).resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'tunegate.db'}"

    config = tmp_path / "tunegate.toml"
    config.write_text('port = 9001\nmax_upload_bytes = 1024\n[base_models."org/m:v1"]\nsource = "/models/m"\n')
    monkeypatch.setenv("TUNEGATE_PORT", "9002")  # the environment beats the file
    settings = Settings.load(config)
    assert settings.port == 9002 and settings.max_upload_bytes == 1024
    assert settings.base_models["org/m:v1"].source == "/models/m"

    monkeypatch.setenv("TUNEGATE_BASE_MODELS__extra__SOURCE", "/x")
    monkeypatch.setenv("TUNEGATE_CONFIG", str(config))
    assert set(Settings.load().base_models) == {"org/m:v1", "extra"}


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(port=70000)
    with pytest.raises(ValidationError):
        Settings(base_models={"ft:sneaky": {"source": "x"}})
    with pytest.raises(ValidationError):
        Settings(no_such_setting=1)
    with pytest.raises(FileNotFoundError):
        Settings.load(tmp_path / "missing.toml")


def _cli(data_dir: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEGATE_")} | {"TUNEGATE_DATA_DIR": str(data_dir)}
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_cli_keys_work_against_the_gateway(tmp_path: Path, spec) -> None:  # noqa: ANN001
    org = _cli(tmp_path, "orgs", "create", "cli-org")
    key = _cli(tmp_path, "keys", "create", "--org", org["id"], "--name", "laptop")
    assert key["secret"].startswith("sk-tg-") and key["organization_id"] == org["id"]
    listed = _cli(tmp_path, "keys", "list", "--org", org["id"])
    assert [k["id"] for k in listed] == [key["id"]] and listed[0]["secret"] is None  # never shown again

    # the CLI is another process, and the gateway keeps a verified key for auth_cache_seconds (an hour here: the
    # CLI's start alone can outlast the default 5 s): the CLI's revocation reaches that cache through
    # <data_dir>/key-revocations, so the very next request is a 401 (the gateway's own admin API: test_bad_input.py)
    gateway = LiveGateway(tmp_path, f"sqlite:///{tmp_path / 'tunegate.db'}", TUNEGATE_AUTH_CACHE_SECONDS="3600")
    gateway.start()
    try:
        client = gateway.client(key["secret"], SpecRecorder(spec))
        assert client.models.list().data and client.models.list().data  # the second from the gateway's cache
        _cli(tmp_path, "keys", "revoke", key["id"])
        with pytest.raises(openai.AuthenticationError) as err:
            client.models.list()
        assert err.value.body["code"] == "revoked_api_key"
    finally:
        gateway.stop()


# Every read of the process environment outside storage/settings.py, and why it is not a setting.
ENVIRONMENT_READS = {
    "gateway/cli.py": "the export client takes OPENAI_BASE_URL / OPENAI_API_KEY as the openai tools do",
    "serving/engine_main.py": "the engine hands its (already scrubbed) environment and its key variable to vLLM",
    "finetune/export/gguf.py": "the converter subprocess gets PYTHONPATH; TUNEGATE_LLAMA_CPP_DIR locates the install",
    "finetune/recipe/run.py": "sets TOKENIZERS_PARALLELISM for the tokenizers library",
    "serving/adapter_fetch.py": "inside vLLM, the middleware finds the engine's settings file "
    "(engine_main sets the path)",
    "finetune/integrations.py": "the training child: W&B's own WANDB_API_KEY/WANDB_MODE decide online or offline, and "
    "its WANDB_DIR/… are pointed into the job's folder; the worker's WANDB_ENTITY/"
    "WANDB_PROJECT are dropped (a tenant's run is aimed by integrations.wandb_entity)",
    "gateway/metrics.py": "prometheus_client's PROMETHEUS_MULTIPROC_DIR (set by `serve --workers`) selects the "
    "multiprocess collector",
}


def test_only_settings_reads_the_environment() -> None:
    """storage/settings.py is the one place tunegate's configuration comes from (STYLE.md 6); the exceptions are
    listed above with their reason, so a new ``os.environ`` read fails here until it is a setting or listed."""
    import ast

    from tests.support import REPO

    found = set()
    for path in sorted(REPO.glob("*/**/*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.split("/")[0] not in ("gateway", "serving", "finetune", "storage") or rel == "storage/settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("environ", "getenv")
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                found.add(rel)
    assert found == set(ENVIRONMENT_READS), (
        f"environment read outside settings: {sorted(found ^ set(ENVIRONMENT_READS))}"
    )
