"""Fine-tuning end to end through the openai client: a real LoRA job on a tiny model, on CPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.finetune_support import (
    MEMORIZE,
    TINY,
    adapter_dir,
    all_events,
    chat_jsonl,
    gateway_env,
    qa_pairs,
    results_csv,
    shared_subset,
    upload,
    wait_for,
)
from tests.support import LiveGateway, SpecRecorder


@pytest.fixture(scope="module")
def gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("ft")
    gateway = LiveGateway(data_dir, f"sqlite:///{data_dir / 'tunegate.db'}", **gateway_env(tiny_model))
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def key(gw: LiveGateway) -> str:
    return gw.new_org_key("trainers")[2]


def greedy(model_dir: str, adapter: str | None, question: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_job_trains_memorizes_and_reports(gw: LiveGateway, key: str, recorder: SpecRecorder, tiny_model: str) -> None:
    client = gw.client(key, recorder)
    pairs = qa_pairs(20)
    file_id = upload(client, chat_jsonl(pairs))
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=file_id,
        validation_file=file_id,
        suffix="memo",
        seed=7,
        metadata={"team": "qa"},
        method={"type": "supervised", "supervised": {"hyperparameters": MEMORIZE}},
    )
    assert job.status == "validating_files" and job.hyperparameters.n_epochs == 30
    done = wait_for(client, job.id, ("succeeded",), timeout=400)

    # the job object
    org = client.models.list().data  # noqa: F841 - also spec-checks /v1/models
    assert done.fine_tuned_model == f"ft:{TINY}:{done.organization_id}:memo:{job.id.removeprefix('ftjob-')[:8]}"
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at
    assert done.method.supervised.hyperparameters.batch_size == 4
    # events: the OpenAI sequence, and a metrics event per step whose loss falls
    events = all_events(client, job.id)
    messages = [e.message for e in events]
    for expected in (
        "Created fine-tuning job",
        "Validating training file",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
        "Checkpoint created at step",
        "New fine-tuned model created",
        "The job has successfully completed",
    ):
        assert any(m.startswith(expected) for m in messages), (expected, messages)
    # no serving engine in this module (serving.local_engines off): the generation scores are skipped, visibly
    skipped = [e for e in events if e.message.startswith("Generation metrics skipped: no serving engine")]
    assert len(skipped) == 1 and skipped[0].level == "warn"
    metrics = [e.data for e in events if e.type == "metrics"]
    total = metrics[0]["total_steps"]
    assert [m["step"] for m in metrics] == list(range(1, total + 1))
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] / 5
    assert any("valid_loss" in m for m in metrics) and metrics[-1]["train_mean_token_accuracy"] > 0.9
    # checkpoints: one per epoch, the last 3 kept, each a model id
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [total, total - 5, total - 10]
    assert ckpts[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-{total}"
    assert ckpts[0].metrics.valid_loss is not None
    listed = {m.id for m in client.models.list().data}
    assert done.fine_tuned_model in listed and {c.fine_tuned_model_checkpoint for c in ckpts} <= listed
    # results CSV
    rows = results_csv(client, done)
    assert [int(r["step"]) for r in rows] == list(range(1, total + 1))
    assert float(rows[-1]["train_loss"]) == pytest.approx(metrics[-1]["train_loss"])
    assert client.files.retrieve(done.result_files[0]).purpose == "fine-tune-results"
    # the adapter reproduces the trained answers; the base model does not
    adapter = str(adapter_dir(gw, job.id))
    for question, answer in pairs[:6]:
        assert greedy(tiny_model, adapter, question) == answer
        assert greedy(tiny_model, None, question) != answer
    # list with a metadata filter
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "qa"})] == [job.id]
    assert list(client.fine_tuning.jobs.list(metadata={"team": "other"})) == []


def test_same_seed_same_loss_curve(gw: LiveGateway, key: str, recorder: SpecRecorder) -> None:
    client = gw.client(key, recorder)
    file_id = upload(client, chat_jsonl(qa_pairs(12)))
    hp = {"n_epochs": 2, "batch_size": 4, "learning_rate": 0.005}
    ids = [
        client.fine_tuning.jobs.create(
            model=TINY,
            training_file=file_id,
            seed=1234,
            method={"type": "supervised", "supervised": {"hyperparameters": hp}},
        ).id
        for _ in range(2)
    ]
    curves = []
    for job_id in ids:
        wait_for(client, job_id, ("succeeded",))
        curves.append([e.data["train_loss"] for e in all_events(client, job_id) if e.type == "metrics"])
    assert len(curves[0]) == 6 and curves[0] == pytest.approx(curves[1], rel=1e-4)


@pytest.mark.parametrize(
    ("dataset", "method"),
    [
        ("alpaca_zh_demo.json", "supervised"),
        ("glaive_toolcall_zh_demo.json", "supervised"),
        ("dpo_zh_demo.json", "dpo"),
    ],
)
def test_llama_factory_formats_train(
    gw: LiveGateway, key: str, recorder: SpecRecorder, dataset: str, method: str
) -> None:
    client = gw.client(key, recorder)
    file_id = upload(client, shared_subset(dataset, 16), name=dataset)
    hp = {"n_epochs": 1, "batch_size": 8, "cutoff_len": 256}
    if method == "dpo":
        hp["beta"] = 0.2
    job = client.fine_tuning.jobs.create(
        model=TINY, training_file=file_id, method={"type": method, method: {"hyperparameters": hp}}
    )
    done = wait_for(client, job.id, ("succeeded",))
    steps = [e.data for e in all_events(client, job.id) if e.type == "metrics"]
    assert [s["step"] for s in steps] == [1, 2] and all(s["train_loss"] > 0 for s in steps)
    assert done.fine_tuned_model and (adapter_dir(gw, job.id) / "adapter_model.safetensors").is_file()
    if method == "dpo":
        assert done.method.dpo.hyperparameters.beta == 0.2
