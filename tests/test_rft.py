"""Reinforcement fine-tuning through the openai client: a GRPO job on the tiny CPU model whose grader rewards a
fixed word, its worker killed -9 at the first checkpoint and the job resumed by another; invalid requests.

The reward is learnable in a few dozen steps: ``string_check`` ``like`` "for" (the word appears inside many
English subwords, so a random model already writes it in a few percent of its 8-token completions, and GRPO's
group-relative advantage pushes those up; measured 0 → 1.0 train reward in ~17 steps, docs/NOTES.md).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.finetune_support import (
    TINY,
    all_events,
    chat_jsonl,
    gateway_env,
    qa_pairs,
    results_csv,
    upload,
    wait_for,
    worker,
)
from tests.support import DATA, LiveGateway, SpecRecorder

GRADER = {
    "type": "string_check",
    "name": "says_for",
    "input": "{{sample.output_text}}",
    "reference": "{{item.word}}",
    "operation": "like",
}
VERDICT = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT}}


def _says(word: str) -> dict[str, Any]:
    return {
        "type": "string_check",
        "name": word,
        "input": "{{sample.output_json.answer}}",
        "reference": word,
        "operation": "eq",
    }


# rewards "yes"; the "no" half is logged only (train_grader_no_mean): yes + no = 1 on every schema-valid sample
YES_NO = {
    "type": "multi",
    "name": "verdict",
    "graders": {"yes": _says("yes"), "no": _says("no")},
    "calculate_output": "yes + 0 * no",
}
# 32 prompts, batch 8: 4 steps an epoch; 5 epochs = 20 steps, an evaluation (and a checkpoint) every 5
HP = {
    "n_epochs": 5,
    "batch_size": 8,
    "learning_rate": 0.02,
    "lr_scheduler_type": "constant",
    "lora_rank": 16,
    "compute_multiplier": 0.5,
    "eval_interval": 5,
    "eval_samples": 8,
    "max_completion_length": 8,
}


def prompts(start: int, n: int) -> bytes:
    questions = [e["instruction"] for e in json.loads((DATA / "alpaca_en_demo.json").read_text())][start : start + n]
    lines = [
        json.dumps({"messages": [{"role": "user", "content": q}], "word": "for", "id": i})
        for i, q in enumerate(questions)
    ]
    return ("\n".join(lines) + "\n").encode()


def rft(grader: Any = GRADER, **hp: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"hyperparameters": {**HP, **hp}}
    if grader is not None:
        section["grader"] = grader
    return {"type": "reinforcement", "reinforcement": section}


@pytest.fixture(scope="module")
def gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """Postgres, no embedded worker: the test starts (and kills) `tunegate worker` processes itself. The tiny
    model's vLLM engine runs (fp32, pinned as in the serving tests), so the jobs' rollouts are sampled there."""
    from tests.conftest import _fresh_postgres_database
    from tests.serving_support import shared_serving_env, wait_engines_ready

    url, drop = _fresh_postgres_database()
    shared = shared_serving_env(tiny_model)  # the engine's settings, and the base model served by the shared engine
    engine = {k: v for k, v in shared.items() if k.startswith("TUNEGATE_SERVING__") or k == "TUNEGATE_BASE_MODELS"}
    gateway = LiveGateway(
        tmp_path_factory.mktemp("rft"), url, **gateway_env(tiny_model, TUNEGATE_WORKER__EMBEDDED="false", **engine)
    )
    gateway.start()
    wait_engines_ready(gateway)
    yield gateway
    gateway.stop()
    drop()


@pytest.fixture(scope="module")
def key(gw: LiveGateway) -> str:
    return gw.new_org_key("rft")[2]


@pytest.fixture(scope="module")
def files(gw: LiveGateway, key: str) -> dict[str, str]:
    client = gw.client(key)
    return {
        "train": upload(client, prompts(0, 32), "rft_train.jsonl"),
        "valid": upload(client, prompts(100, 8), "rft_valid.jsonl"),
        "chat": upload(client, chat_jsonl(qa_pairs(12))),
    }


def test_an_rft_file_is_a_reinforcement_file(
    gw: LiveGateway, key: str, files: dict[str, str], recorder: SpecRecorder
) -> None:
    client = gw.client(key, recorder)
    assert client.files.retrieve(files["train"]).status == "processed"
    content = client.files.content(files["train"]).text.splitlines()
    assert json.loads(content[0])["word"] == "for"  # the item fields are kept for the grader


@pytest.mark.slow
def test_rft_job_learns_the_reward_and_resumes_after_kill_9(
    gw: LiveGateway, key: str, files: dict[str, str], recorder: SpecRecorder
) -> None:
    client = gw.client(key, recorder)
    job = client.fine_tuning.jobs.create(
        model=TINY, training_file=files["train"], validation_file=files["valid"], seed=3, suffix="rft", method=rft()
    )
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.name == "says_for"
    shown = job.method.reinforcement.hyperparameters
    assert (shown.compute_multiplier, shown.eval_interval, shown.eval_samples, shown.reasoning_effort) == (
        0.5,
        5,
        8,
        "default",
    )
    assert shown.model_extra["num_generations"] == 4 and shown.model_extra["beta"] == 0.04
    assert job.hyperparameters.batch_size == 8 and job.hyperparameters.n_epochs == 5
    # the worker dies (kill -9) right after the first checkpoint's adapter is stored, before it is recorded
    doomed = worker(gw, "doomed", TUNEGATE_WORKER__FAULT_PHASE="checkpoint", TUNEGATE_WORKER__FAULT_JOB=job.id)
    try:
        assert doomed.wait(timeout=300) == -signal.SIGKILL, "the worker was not killed at the checkpoint"
    finally:
        doomed.kill()
    survivor = worker(gw, "survivor")
    try:
        done = wait_for(client, job.id, ("succeeded",), timeout=400)
        events = all_events(client, job.id)
        messages = [e.message for e in events]
        assert any(m == "Resuming from the checkpoint at step 5" for m in messages), messages
        # both attempts sampled through the engine, the policy of each step hot-loaded (finetune/recipe/rollouts.py)
        assert sum(m.startswith("Rollouts are sampled by the base model's serving engine") for m in messages) == 2
        assert not [m for m in messages if "HF generate" in m], messages  # the engine never failed
        metrics = [e.data for e in events if e.type == "metrics"]
        assert [m["step"] for m in metrics] == list(range(1, 21)), "steps repeated, lost or out of order"
        assert all("train_reward_mean" in m and "train_completion_tokens_mean" in m for m in metrics)
        evals = [m for m in metrics if "valid_reward_mean" in m]
        assert [m["step"] for m in evals] == [5, 10, 15, 20]
        first, last = evals[0]["valid_reward_mean"], evals[-1]["valid_reward_mean"]
        assert last >= first + 0.25, f"the reward did not rise: {[m['valid_reward_mean'] for m in evals]}"
        train = [m["train_reward_mean"] for m in metrics]
        assert sum(train[-5:]) / 5 > sum(train[:5]) / 5 + 0.3, train
        # checkpoints at each evaluation after the resume (step 5's was never recorded), reward in their metrics
        ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in ckpts] == [20, 15, 10]
        assert ckpts[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-20"
        assert ckpts[0].metrics.model_extra["valid_reward_mean"] == evals[-1]["valid_reward_mean"]
        listed = {m.id for m in client.models.list().data}
        assert done.fine_tuned_model in listed and {c.fine_tuned_model_checkpoint for c in ckpts} <= listed
        rows = results_csv(client, done)
        assert [int(r["step"]) for r in rows] == list(range(1, 21))
        assert float(rows[-1]["valid_reward_mean"]) == pytest.approx(last)
        # a fine-tuned model the organization owns cannot be a judge (the training child reaches base engines only)
        judge = {
            "type": "score_model",
            "name": "j",
            "model": done.fine_tuned_model,
            "input": [{"role": "user", "content": "Rate: {{sample.output_text}}"}],
        }
        for grader, param in (
            (judge, "method.reinforcement.grader.model"),
            (
                {"type": "multi", "name": "m", "graders": {"w": GRADER, "j": judge}, "calculate_output": "w + j"},
                "method.reinforcement.grader.graders.j.model",
            ),
        ):
            with pytest.raises(openai.BadRequestError) as err:
                client.fine_tuning.jobs.create(model=TINY, training_file=files["train"], method=rft(grader=grader))
            assert (err.value.body["param"], err.value.body["code"]) == (param, "unsupported_value"), err.value.body
        # a supervised file for an RFT job: the job fails naming the file (validated by the worker)
        wrong = client.fine_tuning.jobs.create(model=TINY, training_file=files["chat"], method=rft())
        failed = wait_for(client, wrong.id, ("failed",), timeout=120)
        assert failed.error.code == "invalid_training_file" and "reinforcement" in failed.error.message
        # and an RFT file for a supervised job
        wrong = client.fine_tuning.jobs.create(model=TINY, training_file=files["train"])
        failed = wait_for(client, wrong.id, ("failed",), timeout=120)
        assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    finally:
        survivor.kill()
        survivor.wait()
    # another organization sees none of it
    other = gw.client(gw.new_org_key("other")[2])
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(job.id)


PY_BAD = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return (\n"}
BAD = [
    ("no-grader", rft(grader=None), "method.reinforcement.grader", "missing_required_parameter"),
    ("grader-type", rft(grader={**GRADER, "type": "regex"}), "method.reinforcement.grader.type", None),
    (
        "grader-operation",
        rft(grader={**GRADER, "operation": "contains"}),
        "method.reinforcement.grader.operation",
        None,
    ),
    ("python-syntax", rft(grader=PY_BAD), "method.reinforcement.grader.source", None),
    (
        "multi-formula",
        rft(grader={"type": "multi", "name": "m", "graders": {"a": GRADER}, "calculate_output": "a +"}),
        "method.reinforcement.grader.calculate_output",
        None,
    ),
    (
        "compute-multiplier",
        rft(compute_multiplier=0),
        "method.reinforcement.hyperparameters.compute_multiplier",
        "invalid_hyperparameter",
    ),
    (
        "reasoning-effort",
        rft(reasoning_effort="extreme"),
        "method.reinforcement.hyperparameters.reasoning_effort",
        "invalid_hyperparameter",
    ),
    (
        "eval-interval",
        rft(eval_interval=0),
        "method.reinforcement.hyperparameters.eval_interval",
        "invalid_hyperparameter",
    ),
    ("packing", rft(packing=True), "method.reinforcement.hyperparameters.packing", "invalid_hyperparameter"),
    (
        "unknown-key",
        {"type": "reinforcement", "reinforcement": {"grader": GRADER, "reward": 1}},
        "method.reinforcement.reward",
        None,
    ),
    (
        "response-format",
        {"type": "reinforcement", "reinforcement": {"grader": GRADER, "response_format": {"type": "yaml"}}},
        "method.reinforcement.response_format.type",
        None,
    ),
    (
        "rft-knob-on-supervised",
        {"type": "supervised", "supervised": {"hyperparameters": {"eval_interval": 3}}},
        "method.supervised.hyperparameters.eval_interval",
        "invalid_hyperparameter",
    ),
]


@pytest.mark.parametrize(("case", "method", "param", "code"), BAD, ids=[c[0] for c in BAD])
def test_invalid_rft_requests_are_400s_naming_the_field(
    gw: LiveGateway,
    key: str,
    files: dict[str, str],
    recorder: SpecRecorder,
    case: str,
    method: dict,
    param: str,
    code: str | None,
) -> None:
    client = gw.client(key, recorder)
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=TINY, training_file=files["train"], method=method)  # type: ignore[arg-type]
    body = err.value.body
    assert body["param"] == param, (case, body)
    if code:
        assert body["code"] == code, (case, body)


def test_a_judge_the_organization_cannot_use_is_a_404(
    gw: LiveGateway, key: str, files: dict[str, str], recorder: SpecRecorder
) -> None:
    client = gw.client(key, recorder)
    judge = {
        "type": "score_model",
        "name": "j",
        "model": "no-such-model",
        "input": [{"role": "user", "content": "Rate: {{sample.output_text}}"}],
    }
    with pytest.raises(openai.NotFoundError) as err:
        client.fine_tuning.jobs.create(model=TINY, training_file=files["train"], method=rft(grader=judge))
    assert err.value.body["code"] == "model_not_found"


def test_a_base_model_judge_is_accepted(
    gw: LiveGateway, key: str, files: dict[str, str], recorder: SpecRecorder
) -> None:
    client = gw.client(key, recorder)
    judge = {
        "type": "score_model",
        "name": "j",
        "model": TINY,
        "input": [{"role": "user", "content": "Rate: {{sample.output_text}}"}],
    }
    job = client.fine_tuning.jobs.create(model=TINY, training_file=files["train"], method=rft(grader=judge))
    assert job.method.reinforcement.grader.model == TINY
    client.fine_tuning.jobs.cancel(job.id)


def test_response_formats_are_echoed_and_a_bad_schema_is_a_400(
    gw: LiveGateway, key: str, files: dict[str, str], recorder: SpecRecorder
) -> None:
    client = gw.client(key, recorder)
    for fmt in ({"type": "text"}, {"type": "json_object"}, JSON_FORMAT):
        job = client.fine_tuning.jobs.create(
            model=TINY,
            training_file=files["train"],
            method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "response_format": fmt}},
        )  # type: ignore[typeddict-unknown-key]
        raw = client.fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.json()
        assert raw["method"]["reinforcement"]["response_format"] == fmt
        client.fine_tuning.jobs.cancel(job.id)
    bad_schema = {"type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "objekt"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model=TINY,
            training_file=files["train"],
            method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "response_format": bad_schema}},
        )  # type: ignore[typeddict-unknown-key]
    body = err.value.body
    assert (body["param"], body["code"]) == ("method.reinforcement.response_format.json_schema.schema", "invalid_value")
    assert "objekt" in body["message"], body


@pytest.mark.slow
def test_a_json_schema_constrains_every_rollout_and_output_json_is_graded(
    gw: LiveGateway, key: str, files: dict[str, str], recorder: SpecRecorder
) -> None:
    """A json_schema response_format: the engine samples every rollout (training and evaluation) as JSON of the
    schema, and the grader reads ``sample.output_json.answer`` — no sample errored it (a completion that is not
    JSON, or JSON without the field, is a grader error). The HF path's test checks the enum too (multi grader)."""
    client = gw.client(key, recorder)
    train = upload(client, prompts(0, 10), "rft_json.jsonl")  # 10: the fewest a training file may have
    hp = {"n_epochs": 1, "batch_size": 5, "compute_multiplier": 0.25, "eval_interval": 2, "eval_samples": 2}
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=train,
        validation_file=files["valid"],
        seed=1,
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": _says("yes"),
                "response_format": JSON_FORMAT,
                "hyperparameters": {**HP, **hp, "max_completion_length": 24},
            },
        },  # type: ignore[typeddict-unknown-key]
    )
    runner = worker(gw, "json")
    try:
        wait_for(client, job.id, ("succeeded",), timeout=240)
    finally:
        runner.kill()
        runner.wait()
    events = all_events(client, job.id)
    assert any(e.message.startswith("Rollouts are sampled by the base model's serving engine") for e in events)
    assert not [e.message for e in events if "HF generate" in e.message]
    metrics = [e.data for e in events if e.type == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2] and "valid_reward_mean" in metrics[-1]
    assert all(m["train_grader_errors"] == 0 for m in metrics) and metrics[-1]["valid_grader_errors"] == 0, metrics


# --- unit level (no gateway, no training) ------------------------------------------------------------------------


def _normalized(tmp_path: Any, lines: list[dict]) -> Any:
    from finetune.formats import normalize

    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return normalize(path, lambda _: None)


def test_prompt_lines_make_a_reinforcement_file_only_when_the_whole_file_is(tmp_path: Any) -> None:
    prompt = {"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"}
    chat = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    rft_file = _normalized(tmp_path, [prompt, prompt])
    assert (rft_file.format, rft_file.kind, rft_file.n_examples, bool(rft_file.problems)) == (
        "openai_reinforcement",
        "reinforcement",
        2,
        False,
    )
    for lines, line in (([prompt, chat, chat], 1), ([chat, chat, prompt], 3)):  # a supervised file missing answers
        result = _normalized(tmp_path, lines)
        assert result.kind == "supervised" and result.problems.total == 1
        assert (
            f"line {line}" in result.problems.render()
            and "example_missing_assistant_message" in result.problems.render()
        )


def test_reinforcement_hyperparameters_resolve() -> None:
    from finetune import hyperparams

    def resolved(reasoning: bool = False, **raw: Any) -> Any:
        hp = hyperparams.parse(raw, "reinforcement", "hp")
        return hyperparams.resolve(hp, n_examples=100, method="reinforcement", device="cpu", reasoning=reasoning)

    auto = resolved(batch_size=10)  # 3 epochs × 10 steps
    assert (auto.num_generations, auto.eval_interval, auto.eval_samples, auto.max_completion_length, auto.beta) == (
        8,
        3,
        32,
        256,
        0.04,
    )
    assert (
        resolved(compute_multiplier=0.1).num_generations == 2 and resolved(compute_multiplier=2).num_generations == 16
    )
    assert resolved(reasoning_effort="high").max_completion_length == 512
    assert resolved(True, reasoning_effort="low").max_completion_length == 1024
    assert resolved(max_completion_length=8, reasoning_effort="high").max_completion_length == 8
    supervised = hyperparams.resolve(
        hyperparams.parse({}, "supervised", "hp"), n_examples=100, method="supervised", device="cpu"
    )
    assert supervised.num_generations is None and supervised.beta is None


def test_the_reward_is_the_grader_engine_and_sub_graders_are_logged() -> None:
    from finetune.graders.engine import GraderEngine
    from finetune.recipe.rft import GraderReward, reward_metrics

    multi = {
        "type": "multi",
        "name": "m",
        "graders": {"word": GRADER, "exact": {**GRADER, "operation": "eq"}},
        "calculate_output": "0.5 * word + 0.5 * exact",
    }
    logged: dict[str, float] = {}
    reward = GraderReward(multi, "org", True, GraderEngine())
    scores = reward(
        prompts=[[]] * 3,
        item=[json.dumps({"word": "for"})] * 3,
        completions=[[{"content": "<think>no</think>for"}], [{"content": "before"}], [{"content": "x"}]],
        log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    assert scores == [1.0, 0.5, 0.0]  # the <think> part of a reasoning model's completion is not graded
    assert logged == {"grader_errors": 0.0, "grader/exact": pytest.approx(1 / 3), "grader/word": pytest.approx(2 / 3)}
    assert reward_metrics({"reward": 0.5, "eval_reward": 0.25, "grader/word": 0.75, "eval_loss": 3.0}) == {
        "train_reward_mean": 0.5,
        "valid_reward_mean": 0.25,
        "train_grader_word_mean": 0.75,
    }


def test_judges_must_be_base_models() -> None:
    from types import SimpleNamespace

    from finetune import reinforcement
    from storage.errors import InvalidRequest
    from storage.settings import RequestLimits

    settings: Any = SimpleNamespace(base_model_id={"base": "base", "alias": "base"}.get, requests=RequestLimits())
    judge = {
        "type": "label_model",
        "name": "j",
        "model": "base",
        "labels": ["a", "b"],
        "passing_labels": ["a"],
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
    }
    nested = {
        "type": "multi",
        "name": "m",
        "calculate_output": "w + j",
        "graders": {"w": GRADER, "j": {**judge, "model": "ft:base:org::abc"}},
    }
    assert reinforcement.check({"grader": {**judge, "model": "alias"}}, lambda _: None, settings)["grader"]
    for section, param in (
        ({"grader": {**judge, "model": "ft:base:org::abc"}}, "method.reinforcement.grader.model"),
        ({"grader": nested}, "method.reinforcement.grader.graders.j.model"),
    ):
        with pytest.raises(InvalidRequest) as err:
            reinforcement.check(section, lambda _: None, settings)
        assert (err.value.param, err.value.code) == (param, "unsupported_value")


def test_response_formats_are_checked_at_create() -> None:
    """text, json_object and json_schema are stored as given; a json_schema needs a name and a schema that is a
    valid JSON Schema (its draft's meta-schema), each problem a 400 naming the field."""
    from types import SimpleNamespace

    from finetune import reinforcement
    from storage.errors import InvalidRequest
    from storage.settings import RequestLimits

    settings: Any = SimpleNamespace(base_model_id=lambda _: None, requests=RequestLimits())
    param = "method.reinforcement.response_format"
    for fmt in ({"type": "text"}, {"type": "json_object"}, JSON_FORMAT):
        assert (
            reinforcement.check({"grader": GRADER, "response_format": fmt}, lambda _: None, settings)["response_format"]
            == fmt
        )
    schema = {"name": "v", "schema": VERDICT}
    for fmt, where, code in (
        ({"type": "yaml"}, f"{param}.type", "invalid_value"),
        ({"type": "json_schema", "json_schema": {"schema": VERDICT}}, f"{param}.json_schema.name", None),
        ({"type": "json_schema", "json_schema": {**schema, "name": "a b"}}, f"{param}.json_schema.name", None),
        ({"type": "json_schema", "json_schema": {"name": "v"}}, f"{param}.json_schema.schema", None),
        ({"type": "json_schema", "json_schema": {**schema, "schema": []}}, f"{param}.json_schema.schema", None),
        (
            {"type": "json_schema", "json_schema": {**schema, "schema": {**VERDICT, "required": "answer"}}},
            f"{param}.json_schema.schema",
            "invalid_value",
        ),
        ({"type": "json_schema", "json_schema": {**schema, "strict": "yes"}}, f"{param}.json_schema.strict", None),
        (
            {"type": "json_schema", "json_schema": {**schema, "schema": {**VERDICT, "$schema": ["x"]}}},
            f"{param}.json_schema.schema",
            "invalid_value",
        ),
        (  # valid JSON Schema, but no grammar can follow a $ref to nothing: a 400, not a job failing at step 1
            {"type": "json_schema", "json_schema": {**schema, "schema": {"$ref": "#/$defs/missing"}}},
            f"{param}.json_schema.schema",
            "invalid_value",
        ),
        (  # a pattern that is not a regular expression
            {
                "type": "json_schema",
                "json_schema": {**schema, "schema": {"type": "object", "properties": {"a": {"pattern": "(("}}}},
            },
            f"{param}.json_schema.schema",
            "invalid_value",
        ),
    ):
        with pytest.raises(InvalidRequest) as err:
            reinforcement.check({"grader": GRADER, "response_format": fmt}, lambda _: None, settings)
        assert err.value.param == where, (fmt, err.value.message)
        if code:
            assert err.value.code == code


class FakeEngine:
    """A vLLM OpenAI server at the HTTP seam: runtime LoRA load/unload and ``/v1/completions`` over token ids,
    every sample the token ids of ``answer`` (each with logprob -0.5); ``refuse``: every adapter load is a 500."""

    def __init__(self, answer: list[int], refuse: bool = False, readable: Any = None) -> None:
        """``readable(lora_path)``: the policy is there to load (default: a local directory with its config)."""
        self.answer, self.refuse = answer, refuse
        self.readable = readable or (lambda path: (Path(path) / "adapter_config.json").is_file())
        self.loaded: list[str] = []
        self.calls: list[tuple[str, dict]] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":  # asked before each load (max_adapters_per_engine); not in calls
            return httpx.Response(200, json={"data": [{"id": n, "parent": "base"} for n in self.loaded]})
        body = json.loads(request.content)
        self.calls.append((request.url.path, body))
        assert request.headers["authorization"] == "Bearer engine-key"
        if request.url.path == "/v1/load_lora_adapter":
            if self.refuse:
                return httpx.Response(500, json={"error": {"message": "LoRA rank 16 is greater than max_lora_rank 8"}})
            assert self.readable(body["lora_path"]), body["lora_path"]  # the policy, saved before loading
            self.loaded.append(body["lora_name"])
            return httpx.Response(200, text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
        if request.url.path == "/v1/unload_lora_adapter":
            self.loaded.remove(body["lora_name"])
            return httpx.Response(200, text="Success")
        assert request.url.path == "/v1/completions" and body["model"] == self.loaded[-1]
        assert body["return_token_ids"] is True and all(isinstance(t, int) for t in body["prompt"])
        choices = [
            {
                "index": i,
                "text": "",
                "token_ids": self.answer,
                "logprobs": {"token_logprobs": [-0.5] * len(self.answer)},
            }
            for i in range(body["n"])
        ]
        return httpx.Response(200, json={"id": "cmpl-1", "object": "text_completion", "choices": choices})


def _rft_steps(
    tiny_model: str,
    tmp_path: Any,
    engine: FakeEngine,
    warnings: list[str],
    grader: dict[str, Any] = GRADER,
    response_format: dict[str, Any] | None = None,
    completion_tokens: int = 4,
    policies: Any = None,
) -> list[dict]:
    """Two GRPO steps of 2 prompts × 2 completions through ``engine``; the metrics of each step."""
    from finetune import hyperparams
    from finetune.recipe.callbacks import SilentReporter
    from finetune.recipe.rollouts import EngineRollouts
    from finetune.recipe.run import TrainSpec, train
    from storage.engines import EngineAddress

    class Recorder(SilentReporter):
        def __init__(self) -> None:
            self.steps: list[dict] = []

        def metrics(self, step: int, total_steps: int, data: dict[str, float]) -> None:
            self.steps.append(data)

    data = tmp_path / "train.jsonl"
    data.write_bytes(prompts(0, 2))
    raw = {
        "n_epochs": 2,
        "batch_size": 2,
        "compute_multiplier": 0.25,
        "eval_interval": 100,
        "max_completion_length": completion_tokens,
        "precision": "fp32",
    }
    hp = hyperparams.resolve(
        hyperparams.parse(raw, "reinforcement", "hp"), n_examples=2, method="reinforcement", device="cpu"
    )
    rollouts = EngineRollouts(
        EngineAddress("http://engine", "engine-key"),
        tmp_path / "policy",
        "rft-job",
        max_adapters=8,
        warn=warnings.append,
        transport=engine.transport,
        policies=policies,
    )
    reporter = Recorder()
    train(
        TrainSpec(
            method="reinforcement",
            base_path=tiny_model,
            chat_template=None,
            hp=hp,
            seed=0,
            train_file=data,
            valid_file=None,
            work_dir=tmp_path / "work",
            device="cpu",
            log_every=1,
            cpu_threads=1,
            grader=grader,
            owner="org",
            rollouts=rollouts,
            response_format=response_format,
        ),
        reporter,
    )
    return reporter.steps


def test_engine_rollouts_load_each_steps_policy_and_feed_its_samples_to_the_grader(
    tiny_model: str, tmp_path: Any
) -> None:
    """The rollout function at the HTTP seam, inside a real GRPO run: the policy of each step is loaded under its
    own name (the previous one unloaded, the last one at the end), each prompt asks once for n samples as token ids
    of the trainer's own chat template, and the engine's tokens are what the grader scores."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    engine = FakeEngine(tokenizer.encode(" for", add_special_tokens=False)[:4])
    warnings: list[str] = []
    steps = _rft_steps(tiny_model, tmp_path, engine, warnings)
    assert warnings == [] and [s["train_reward_mean"] for s in steps] == [1.0, 1.0]  # " for" says for
    assert [s["train_completion_tokens_mean"] for s in steps] == [len(engine.answer)] * 2
    adapters = [(path, body.get("lora_name")) for path, body in engine.calls if "lora" in path]
    assert adapters == [
        ("/v1/load_lora_adapter", "rft-job-step-0"),
        ("/v1/load_lora_adapter", "rft-job-step-1"),
        ("/v1/unload_lora_adapter", "rft-job-step-0"),
        ("/v1/unload_lora_adapter", "rft-job-step-1"),
    ]
    sampled = [body for path, body in engine.calls if path == "/v1/completions"]
    assert len(sampled) == 4 and {b["n"] for b in sampled} == {2}  # 2 steps × 2 distinct prompts, 2 samples each
    first = json.loads(prompts(0, 2).splitlines()[0])["messages"]
    assert any(
        b["prompt"]
        == tokenizer.apply_chat_template(first, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        for b in sampled
    )
    assert not (tmp_path / "policy").exists() or not any((tmp_path / "policy").iterdir())  # versions deleted


def test_an_engine_that_refuses_the_policy_hands_the_run_to_hf_generate(tiny_model: str, tmp_path: Any) -> None:
    engine = FakeEngine([1, 2], refuse=True)
    warnings: list[str] = []
    steps = _rft_steps(tiny_model, tmp_path, engine, warnings)
    assert len(steps) == 2 and all("train_reward_mean" in s for s in steps)  # trained on HF generate's samples
    assert len(warnings) == 1 and "HF generate" in warnings[0] and "max_lora_rank" not in warnings[0]
    assert [path for path, _ in engine.calls] == ["/v1/load_lora_adapter"]  # tried once, never again


def _verdicts_are_schema_valid(steps: list[dict]) -> None:
    """Every sample of every step had ``output_json.answer`` (no grader error) and it was "yes" or "no"."""
    for step in steps:
        assert step["train_grader_errors"] == 0, step
        assert step["train_grader_yes_mean"] + step["train_grader_no_mean"] == pytest.approx(1.0), step


def test_engine_rollouts_send_the_response_formats_grammar(tiny_model: str, tmp_path: Any) -> None:
    """Under a json_schema response_format every ``/v1/completions`` request carries the schema's grammar as
    ``structured_outputs`` (the engine's samples are then JSON); the grader reads ``sample.output_json``."""
    from transformers import AutoConfig, AutoTokenizer

    from finetune.recipe.constrained import Constraint

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    engine = FakeEngine(tokenizer.encode('{"answer":"yes"}', add_special_tokens=False) + [tokenizer.eos_token_id])
    warnings: list[str] = []
    steps = _rft_steps(tiny_model, tmp_path, engine, warnings, YES_NO, JSON_FORMAT, completion_tokens=24)
    assert warnings == [] and [s["train_reward_mean"] for s in steps] == [1.0, 1.0]
    _verdicts_are_schema_valid(steps)
    grammar = Constraint(VERDICT, tokenizer, AutoConfig.from_pretrained(tiny_model).vocab_size).ebnf
    sampled = [body for path, body in engine.calls if path == "/v1/completions"]
    assert len(sampled) == 4 and all(b["structured_outputs"] == {"grammar": grammar} for b in sampled)
    assert '\\"answer\\"' in grammar and "yes" in grammar  # the schema's own grammar (EBNF), compact


def test_hf_rollouts_under_a_json_schema_are_schema_valid_json(tiny_model: str, tmp_path: Any) -> None:
    """The HF generate path (here: after the engine refused the policy) samples under the same grammar: the random
    tiny model writes nothing but the schema's JSON."""
    engine = FakeEngine([1, 2], refuse=True)
    warnings: list[str] = []
    steps = _rft_steps(tiny_model, tmp_path, engine, warnings, YES_NO, JSON_FORMAT, completion_tokens=24)
    assert len(warnings) == 1 and "HF generate" in warnings[0]
    assert [path for path, _ in engine.calls] == ["/v1/load_lora_adapter"]
    _verdicts_are_schema_valid(steps)


def test_a_schema_the_rollouts_cannot_follow_fails_the_job_at_start(tiny_model: str) -> None:
    from transformers import AutoTokenizer

    from finetune.recipe.constrained import Constraint, ConstraintError

    with pytest.raises(ConstraintError) as err:
        Constraint(
            {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
            AutoTokenizer.from_pretrained(tiny_model),
            2048,
        )
    assert (err.value.code, err.value.param) == ("invalid_response_format", "method.reinforcement.response_format")


def test_a_reasoning_model_thinks_before_its_json(tiny_model: str) -> None:
    """For a reasoning model the grammar is a free ``…</think>`` block, then the schema's JSON: the model can think
    (the grader reads the answer after it), and an answer without the block, or outside the schema, is refused."""
    import xgrammar as xgr
    from transformers import AutoTokenizer

    from finetune.recipe.constrained import Constraint

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    plain = Constraint(VERDICT, tokenizer, len(tokenizer))
    thinking = Constraint(VERDICT, tokenizer, len(tokenizer), reasoning=True)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))

    def accepts(constraint: Constraint, text: str) -> bool:
        grammar = xgr.GrammarCompiler(info, max_threads=1).compile_grammar(constraint.ebnf)
        matcher = xgr.GrammarMatcher(grammar, terminate_without_stop_token=True)
        return all(matcher.accept_token(t) for t in tokenizer.encode(text, add_special_tokens=False)) and (
            matcher.is_terminated()
        )

    answer = '{"answer": "yes"}'
    assert accepts(plain, answer) and not accepts(plain, "hm</think>" + answer)
    assert accepts(thinking, "Is 2 < 3? The tag </thin is not the end.</think>\n\n" + answer)
    assert accepts(thinking, "<think>\nshort</think>" + answer)
    assert not accepts(thinking, answer), "the reasoning block comes first"
    assert not accepts(thinking, 'ok</think>{"answer": "maybe"}'), "the answer still follows the schema"


def test_engines_that_read_the_blob_store_get_each_policy_from_it(tiny_model: str, tmp_path: Any) -> None:
    """With ``blob_url = s3://…`` the engine does not see the worker's files: each step's policy is committed to
    the real S3-compatible server before it is loaded (the engine is handed its s3:// URL, which its adapter fetch
    resolves), and deleted once replaced — nothing of the run is left in the bucket."""
    from finetune.recipe.rollouts import BlobPolicies
    from storage.s3blobs import S3BlobStore
    from storage.settings import S3Settings
    from tests.s3_support import BUCKET, S3Server

    server = S3Server.start(tmp_path / "weed")
    try:
        store = S3BlobStore(f"s3://{BUCKET}/rft", S3Settings(**server.s3_settings()), tmp_path / "cache")
        policies = BlobPolicies(store, "rollouts/ftjob-1/a1", lambda key: f"{store.url}/{key}")
        seen: list[str] = []

        def readable(path: str) -> bool:
            seen.append(path)
            return store.exists(path.removeprefix(store.url + "/") + "/adapter_config.json")

        engine = FakeEngine([1, 2], readable=readable)
        warnings: list[str] = []
        _rft_steps(tiny_model, tmp_path, engine, warnings, policies=policies)
        assert warnings == []
        assert seen == [f"s3://{BUCKET}/rft/rollouts/ftjob-1/a1/rft-job-step-{n}" for n in (0, 1)]
        assert server.keys("rft/rollouts/") == [], "every version deleted once replaced (the last at the end)"
    finally:
        server.stop()
