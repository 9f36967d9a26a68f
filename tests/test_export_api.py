"""Export end to end: fine-tune a model through the API, export it (``/v1/exports``, the ``tunegate export`` CLI),
download the files, run them with llama.cpp, serve the exported GGUF through tunegate's own llama.cpp engine."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.finetune_support import qa_pairs, upload, wait_for
from tests.serving_support import TARGETS, register_adapter
from tests.support import LiveGateway, SpecRecorder
from tests.test_modelfile import GO, go_render

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")
EDGE = "edge-chat"
SYSTEM = "You answer in one short sentence."
TRAINED_SYSTEM = "You are the edge assistant."  # in every training example: the Modelfile's default SYSTEM


def env(edge_model: str, **models: dict[str, Any]) -> dict[str, str]:
    return {
        "TUNEGATE_BASE_MODELS": json.dumps({EDGE: {"source": edge_model}, **models}),
        "TUNEGATE_WORKER__LEASE_SECONDS": "4",
        "TUNEGATE_WORKER__POLL_SECONDS": "0.3",
        "TUNEGATE_WORKER__CPU_THREADS": "2",
    }


@pytest.fixture(scope="module")
def gw(edge_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("export-api")
    broken = {"source": str(data_dir / "no-such-model")}
    gateway = LiveGateway(data_dir, f"sqlite:///{data_dir / 'tunegate.db'}", **env(edge_model, broken=broken))
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def org(gw: LiveGateway) -> tuple[str, str]:
    org_id, _, key = gw.new_org_key("edge")
    return org_id, key


@pytest.fixture(scope="module")
def tuned(gw: LiveGateway, org: tuple[str, str]) -> str:
    """A model fine-tuned through the API (cutoff_len 384: the Modelfile's num_ctx must say so)."""
    client = gw.client(org[1])
    rows = [
        {
            "messages": [
                {"role": "system", "content": TRAINED_SYSTEM},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in qa_pairs(12)
    ]
    file_id = upload(client, "".join(json.dumps(r) + "\n" for r in rows).encode())
    job = client.fine_tuning.jobs.create(
        model=EDGE,
        training_file=file_id,
        suffix="edge",
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 2, "batch_size": 4, "cutoff_len": 384, "learning_rate": 0.002}
            },
        },
    )
    return wait_for(client, job.id, ("succeeded",), timeout=600).fine_tuned_model


def create(client: openai.OpenAI, **body: Any) -> dict[str, Any]:
    return client.post("/exports", body=body, cast_to=object)


def wait_export(client: openai.OpenAI, export_id: str, timeout: float = 600) -> tuple[dict[str, Any], list[tuple]]:
    seen: list[tuple] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        export = client.get(f"/exports/{export_id}", cast_to=object)
        if not seen or seen[-1] != (export["status"], export["stage"], export["progress"]):
            seen.append((export["status"], export["stage"], export["progress"]))
        if export["status"] not in ("queued", "running"):
            return export, seen
        time.sleep(0.1)
    raise AssertionError(f"export {export_id} did not finish: {seen[-3:]}")


def download(client: openai.OpenAI, export: dict[str, Any], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for item in export["output_files"]:
        path = folder / item["filename"]
        path.write_bytes(client.files.content(item["id"]).content)
        assert path.stat().st_size == item["bytes"]
        paths[item["filename"]] = path
    return paths


def peft_logits(base: str, adapter: Path | None, ids: list[int]):  # noqa: ANN201
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


def prompt_ids(model_dir: str, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=True
    )["input_ids"]


def llama_logits(gguf: Path, ids: list[int], lora: Path | None = None):  # noqa: ANN201
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gguf),
        lora_path=str(lora) if lora else None,
        n_ctx=256,
        n_threads=1,
        logits_all=True,
        verbose=False,
        type_k=0,
        type_v=0,
    )  # f32 KV cache: measure the export only
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1]), llm.metadata


def adapter_of(gw: LiveGateway, model_id: str) -> Path:
    from sqlmodel import select

    from storage.db import Database
    from storage.tables import FineTunedModel

    db = Database(gw.database_url)
    try:
        with db.session() as s:
            key = s.exec(select(FineTunedModel.adapter_key).where(FineTunedModel.id == model_id)).one()
    finally:
        db.dispose()
    return gw.data_dir / "blobs" / "objects" / key


def test_gguf_export_job_files_modelfile_and_logits(
    gw: LiveGateway, org: tuple[str, str], tuned: str, edge_model: str, tmp_path: Path, recorder: SpecRecorder
) -> None:
    import numpy as np

    client = gw.client(org[1], recorder)
    export = create(client, model=tuned, format="gguf", quant="f16", system=SYSTEM)
    assert export["object"] == "export" and export["status"] == "queued" and export["quant"] == "f16"
    done, seen = wait_export(client, export["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"] == 1.0 and done["stage"] == "done" and done["finished_at"] >= done["created_at"]
    progress = [p for status, _, p in seen if status == "running"]
    assert progress == sorted(progress) and len({stage for _, stage, _ in seen}) >= 3, seen
    files = download(client, done, tmp_path)
    gguf = next(p for name, p in files.items() if name.endswith("-f16.gguf"))
    assert set(files) == {gguf.name, "Modelfile", "README.md"}
    for item in done["output_files"]:  # ordinary files of the organization
        assert client.files.retrieve(item["id"]).purpose == "fine-tune-results"
    modelfile = files["Modelfile"].read_text()
    assert modelfile.startswith(f"FROM ./{gguf.name}\n")
    assert "PARAMETER num_ctx 384\n" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert f'SYSTEM """{SYSTEM}"""' in modelfile and "<|im_start|>assistant\n" in modelfile
    if GO:  # what Ollama would feed llama.cpp (TEMPLATE rendered, SYSTEM prepended, BOS by the tokenizer) is what
        #     the model was trained on, token for token
        template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
        chat = [
            {"role": "user", "content": "Bonjour"},
            {"role": "assistant", "content": "Salut."},
            {"role": "user", "content": "你好"},
        ]
        rendered = go_render(template, [chat], default_system=SYSTEM)[0]
        from llama_cpp import Llama
        from transformers import AutoTokenizer

        vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
        trained = AutoTokenizer.from_pretrained(edge_model).apply_chat_template(
            [{"role": "system", "content": SYSTEM}, *chat], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        assert vocab.tokenize(rendered.encode(), add_bos=True, special=True) == trained
    readme = files["README.md"].read_text()
    assert "ollama create" in readme and f"llama-server -m {gguf.name}" in readme
    # llama.cpp computes what transformers + the job's adapter compute, with the training template embedded
    adapter = adapter_of(gw, tuned)
    for text in ("What is the capital of France?", "你好，请介绍一下你自己。"):
        ids = prompt_ids(edge_model, text)
        reference = peft_logits(edge_model, adapter, ids)
        logits, metadata = llama_logits(gguf, ids)
        assert np.abs(logits - reference).max() / np.abs(reference).max() < 1e-3  # measured ~3e-4
    from transformers import AutoTokenizer

    assert metadata["tokenizer.chat_template"] == AutoTokenizer.from_pretrained(edge_model).chat_template


def test_gguf_adapter_and_safetensors_exports(
    gw: LiveGateway, org: tuple[str, str], tuned: str, edge_model: str, tmp_path: Path
) -> None:
    import numpy as np

    client = gw.client(org[1])
    ids = prompt_ids(edge_model, "List three colours.")
    reference = peft_logits(edge_model, adapter_of(gw, tuned), ids)

    done, _ = wait_export(client, create(client, model=tuned, format="gguf_adapter", quant="f16")["id"])
    assert done["status"] == "succeeded", done["error"]
    files = download(client, done, tmp_path / "adapter")
    base = next(p for n, p in files.items() if n.startswith(EDGE))
    lora = next(p for n, p in files.items() if "-lora-" in n)
    modelfile = files["Modelfile"].read_text()
    assert f"FROM ./{base.name}\nADAPTER ./{lora.name}\n" in modelfile
    assert f'SYSTEM """{TRAINED_SYSTEM}"""' in modelfile  # none asked for: the one it was trained with
    logits, _ = llama_logits(base, ids, lora)
    assert np.abs(logits - reference).max() / np.abs(reference).max() < 2e-3  # measured ~3e-4

    done, _ = wait_export(client, create(client, model=tuned, format="safetensors")["id"])
    assert done["status"] == "succeeded", done["error"]
    files = download(client, done, tmp_path / "merged")
    tar = next(p for n, p in files.items() if n.endswith(".tar"))
    with tarfile.open(tar) as archive:
        archive.extractall(tmp_path / "merged", filter="data")
    folder = tmp_path / "merged" / tar.stem
    assert np.abs(peft_logits(str(folder), None, ids) - reference).max() < 1e-4


def test_bad_export_requests_are_400s_and_nothing_is_stored(
    gw: LiveGateway, org: tuple[str, str], tuned: str, edge_model: str, tmp_path: Path
) -> None:
    client = gw.client(org[1])
    before = client.get("/exports", cast_to=object)["data"]
    other_org_model = register_adapter(
        gw, gw.new_org_key("other")[0], _dora(edge_model, tmp_path / "x"), "x", base=EDGE
    )
    dora = register_adapter(gw, org[0], _dora(edge_model, tmp_path / "dora"), "dora", base=EDGE)
    cases = [
        ({"model": "no-such-model"}, "model", "model_not_found"),
        ({"model": other_org_model}, "model", "model_not_found"),
        ({"model": tuned, "quant": "q9_x"}, "quant", "unsupported_quantization"),
        ({"model": tuned, "format": "onnx"}, "format", "unsupported_format"),
        ({"model": tuned, "format": "safetensors", "quant": "q4_k_m"}, "quant", "invalid_value"),
        ({"model": EDGE, "format": "gguf_adapter"}, "format", "invalid_value"),
        ({"model": dora, "format": "gguf_adapter"}, "format", "unsupported_adapter"),
        ({"model": tuned, "system": 'a """ b'}, "system", "invalid_value"),
        ({"model": tuned, "colour": "red"}, "colour", "unknown_parameter"),
        ({}, "model", "missing_required_parameter"),
    ]
    for body, param, code in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            create(client, **body)
        error = bad.value.body
        assert (error["param"], error["code"]) == (param, code), (body, error)
        assert error["message"]
    assert "merged" in _message(client, {"model": dora, "format": "gguf_adapter"})
    assert client.get("/exports", cast_to=object)["data"] == before
    with pytest.raises(openai.NotFoundError):
        client.get("/exports/export-nope", cast_to=object)


def _message(client: openai.OpenAI, body: dict[str, Any]) -> str:
    try:
        create(client, **body)
    except openai.BadRequestError as exc:
        return exc.body["message"]
    raise AssertionError("expected a 400")


def _dora(edge_model: str, target: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(edge_model), LoraConfig(r=4, target_modules=TARGETS, use_dora=True)
    )
    model.save_pretrained(target)
    return target


def test_a_failing_export_fails_alone_and_cancel_works(gw: LiveGateway, org: tuple[str, str], tuned: str) -> None:
    client = gw.client(org[1])
    failed, _ = wait_export(client, create(client, model="broken", format="gguf", quant="q8_0")["id"])
    assert failed["status"] == "failed" and failed["output_files"] == []
    assert failed["error"]["code"] == "export_failed" and "no-such-model" in failed["error"]["message"]
    export = create(client, model=tuned, format="gguf", quant="q4_k_m")
    cancelled = client.post(f"/exports/{export['id']}/cancel", cast_to=object)
    assert cancelled["status"] == "cancelled"
    time.sleep(3)  # a worker that had claimed it stops; nothing is stored for it
    again = client.get(f"/exports/{export['id']}", cast_to=object)
    assert again["status"] == "cancelled" and again["output_files"] == []
    with pytest.raises(openai.BadRequestError):
        client.post(f"/exports/{export['id']}/cancel", cast_to=object)
    assert httpx.get(f"{gw.url}/health").status_code == 200


def test_cli_export_then_tunegate_serves_the_gguf_with_llama_cpp(
    gw: LiveGateway, org: tuple[str, str], tuned: str, edge_model: str, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "export",
            tuned,
            "--format",
            "gguf",
            "--quant",
            "q8_0",
            "-o",
            str(out),
            "--base-url",
            f"{gw.url}/v1",
        ],
        env={**os.environ, "OPENAI_API_KEY": org[1]},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cli.returncode == 0, cli.stderr
    gguf = out / next(n for n in os.listdir(out) if n.endswith("-q8_0.gguf"))
    assert (out / "Modelfile").is_file() and (out / "README.md").is_file()
    assert str(gguf) in cli.stdout and "100.0%  done" in cli.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "export", tuned, "--quant", "q9", "--base-url", f"{gw.url}/v1"],
        env={**os.environ, "OPENAI_API_KEY": org[1]},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "Unsupported quantization 'q9'" in bad.stderr

    # the exported GGUF, served by tunegate itself through its llama.cpp engine
    # (only that base model: a local vLLM engine for the others is not what this test is about)
    gw.extra_env.update(
        TUNEGATE_BASE_MODELS=json.dumps({"edge-gguf": {"source": str(gguf), "engine": "llama.cpp"}}),
        TUNEGATE_SERVING__LOCAL_ENGINES="true",
        TUNEGATE_SERVING__MAX_MODEL_LEN="512",
        TUNEGATE_SERVING__ENGINE_CPUS="0",
    )
    gw.restart()
    client = gw.client(org[1])
    deadline = time.monotonic() + 120
    while True:
        try:
            reply = client.chat.completions.create(
                model="edge-gguf", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
            )
            break
        except openai.APIStatusError as exc:
            if exc.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(1)
    from llama_cpp import Llama

    direct = Llama(model_path=str(gguf), n_ctx=512, n_threads=1, verbose=False).create_chat_completion(
        messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    assert reply.model == "edge-gguf"
    assert reply.choices[0].message.content == direct["choices"][0]["message"]["content"]
    stream = client.chat.completions.create(
        model="edge-gguf", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    assert all(c.model == "edge-gguf" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert "edge-gguf" in {m.id for m in client.models.list().data}
    with gw.admin() as admin:
        [engine] = admin.get("/admin/engines").raise_for_status().json()["data"]
    assert (engine["base_model"], engine["engine"], engine["state"]) == ("edge-gguf", "llama.cpp", "ready")
    with pytest.raises(openai.BadRequestError) as bad:  # a GGUF-served model is exported already
        create(client, model="edge-gguf")
    assert bad.value.body["code"] == "unsupported_model"


@pytest.mark.postgres
def test_exports_on_postgres_newest_first_paginated(edge_model: str, tmp_path: Path) -> None:
    """The same job machinery on the real Postgres (claims with FOR UPDATE SKIP LOCKED), and list pagination."""
    from tests.conftest import _fresh_postgres_database

    url, drop = _fresh_postgres_database()
    gateway = LiveGateway(tmp_path / "pg", url, **env(edge_model))
    gateway.start()
    try:
        client = gateway.client(gateway.new_org_key("pg")[2])
        ids = [create(client, model=EDGE, format="gguf", quant=quant)["id"] for quant in ("q8_0", "f16")]
        for export_id in ids:
            done, _ = wait_export(client, export_id)
            assert done["status"] == "succeeded", done["error"]
            gguf = next(f for f in done["output_files"] if f["filename"].endswith(".gguf"))
            assert client.files.content(gguf["id"]).content[:4] == b"GGUF"
        first = client.get("/exports", options={"params": {"limit": 1}}, cast_to=object)
        assert [e["id"] for e in first["data"]] == [ids[1]] and first["has_more"]
        rest = client.get("/exports", options={"params": {"limit": 5, "after": first["last_id"]}}, cast_to=object)
        assert [e["id"] for e in rest["data"]] == [ids[0]] and not rest["has_more"]
    finally:
        gateway.stop()
        drop()


def test_cli_export_says_clearly_when_no_gateway_answers() -> None:
    from tests.support import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "export", "some-model", "--base-url", url],
        env={**os.environ, "OPENAI_API_KEY": "sk-none"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "is `tunegate serve` running there?" in done.stderr
    assert "Traceback" not in done.stderr
