"""Base-model aliases through the official client: ``base_models.<id>.aliases`` lets existing code's model names
(``gpt-4o-mini-2024-07-18``) work unchanged. ``/v1/models`` lists them (owned_by ``system``); chat with an alias is
the base model (the response echoes the alias); a job created with an alias keeps it and names its model
``ft:<alias>:<org>:<suffix>:<id>`` as OpenAI would; that model and its checkpoints are served and evaluated."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.finetune_support import TINY, chat_jsonl, qa_pairs, upload, wait_for, wait_until
from tests.serving_support import shared_serving_env, wait_engines_ready
from tests.support import LiveGateway, SpecRecorder

ALIAS, OTHER_ALIAS = "gpt-4o-mini-2024-07-18", "gpt-4.1-nano"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("aliases")
    models = {TINY: {"source": tiny_model, "aliases": [ALIAS, OTHER_ALIAS]}}
    gateway = LiveGateway(
        data_dir,
        f"sqlite:///{data_dir / 'tunegate.db'}",
        **shared_serving_env(tiny_model, TUNEGATE_BASE_MODELS=json.dumps(models), TUNEGATE_WORKER__LOG_EVERY_STEPS="1"),
    )
    gateway.start()
    wait_engines_ready(gateway)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def org(gw: LiveGateway) -> tuple[str, str, str]:
    return gw.new_org_key("aliased")


def test_models_list_shows_the_aliases(gw: LiveGateway, org, recorder: SpecRecorder) -> None:
    client = gw.client(org[2], recorder)
    owners = {m.id: m.owned_by for m in client.models.list()}
    assert owners[TINY] == "tunegate" and owners[ALIAS] == owners[OTHER_ALIAS] == "system"
    alias = client.models.retrieve(ALIAS)
    assert (alias.id, alias.owned_by) == (ALIAS, "system") and alias.created == client.models.retrieve(TINY).created
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete(ALIAS)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")  # only the names configured


def test_chat_with_an_alias_is_the_base_model(gw: LiveGateway, org, recorder: SpecRecorder) -> None:
    client = gw.client(org[2], recorder)
    kwargs = {"messages": HELLO, "max_tokens": 8, "temperature": 0, "extra_body": {"return_token_ids": True}}
    by_alias = client.chat.completions.create(model=ALIAS, **kwargs)
    by_id = client.chat.completions.create(model=TINY, **kwargs)
    assert by_alias.model == ALIAS and by_id.model == TINY
    assert by_alias.choices[0].token_ids == by_id.choices[0].token_ids
    streamed = list(client.chat.completions.create(model=OTHER_ALIAS, stream=True, **kwargs))
    assert {c.model for c in streamed} == {OTHER_ALIAS}


def test_job_with_an_alias_is_named_after_it(gw: LiveGateway, org, recorder: SpecRecorder) -> None:
    client = gw.client(org[2], recorder)
    training = upload(client, chat_jsonl(qa_pairs(10)))
    job = client.fine_tuning.jobs.create(
        model=ALIAS,
        training_file=training,
        suffix="weather",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 5}}},
    )
    assert job.model == ALIAS
    done = wait_for(client, job.id, ("succeeded",), timeout=240)
    assert done.model == ALIAS
    assert done.fine_tuned_model == f"ft:{ALIAS}:{org[0]}:weather:{job.id.removeprefix('ftjob-')[:8]}"
    checkpoints = [c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert checkpoints and all(c.startswith(done.fine_tuned_model + ":ckpt-step-") for c in checkpoints)
    listed = {m.id for m in client.models.list()}
    assert done.fine_tuned_model in listed and set(checkpoints) <= listed

    answer = client.chat.completions.create(model=done.fine_tuned_model, messages=HELLO, max_tokens=6, temperature=0)
    assert answer.model == done.fine_tuned_model and answer.usage.completion_tokens > 0
    assert client.chat.completions.create(model=checkpoints[-1], messages=HELLO, max_tokens=3).choices

    evaluation = client.evals.create(
        name="aliases",
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "any",
                "input": "{{sample.output_text}}",
                "reference": "never",
                "operation": "ne",
            }
        ],
    )
    content = [{"item": {"q": "Say hi."}}]
    runs = [
        client.evals.runs.create(
            evaluation.id,
            data_source={
                "type": "completions",
                "model": model,
                "source": {"type": "file_content", "content": content},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
                "sampling_params": {"max_completion_tokens": 4, "temperature": 0},
            },
        )
        for model in (ALIAS, done.fine_tuned_model)
    ]
    for run in runs:
        finished = wait_until(
            lambda r=run: (
                (x := client.evals.runs.retrieve(r.id, eval_id=evaluation.id)).status
                in ("completed", "failed", "canceled")
                and x
            ),
            180,
            "the eval run",
        )
        assert finished.status == "completed" and finished.result_counts.errored == 0, finished


def test_unknown_names_stay_refused(gw: LiveGateway, org, recorder: SpecRecorder) -> None:
    client = gw.client(org[2], recorder)
    training = upload(client, chat_jsonl(qa_pairs(10)))
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training)
    assert exc.value.response.json()["error"]["code"] == "model_not_available"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=2)


def test_settings_refuse_clashing_aliases() -> None:
    from pydantic import ValidationError

    from storage.settings import Settings

    ok = Settings(base_models={"a": {"source": "x", "aliases": ["gpt-x"]}, "b": {"source": "y"}})
    assert (ok.base_model_id("gpt-x"), ok.base_model_id("a"), ok.base_model_id("c")) == ("a", "a", None)
    for models in (
        {"a": {"source": "x", "aliases": ["b"]}, "b": {"source": "y"}},  # another model's id
        {"a": {"source": "x", "aliases": ["n"]}, "b": {"source": "y", "aliases": ["n"]}},  # twice
        {"a": {"source": "x", "aliases": ["ft:a"]}},
        {"a": {"source": "x", "aliases": [" n"]}},
    ):
        with pytest.raises(ValidationError, match="alias"):
            Settings(base_models=models)
