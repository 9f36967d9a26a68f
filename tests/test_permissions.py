"""Checkpoint permissions through the official client, three organizations on one gateway (Postgres) with a real
vLLM engine: the owner shares a fine-tuned model and a checkpoint; a grantee lists, chats with and evaluates them
(its usage counted to itself, the engine holding one copy of the adapter), cannot delete, export or share them, nor
see or manage their permissions; a third organization sees nothing; revoking ends access with the very next
request although the adapter stays loaded. A grantee fine-tunes from the shared checkpoint (the job starts from
its adapter and names its model after the base; a stranger cannot). Every body is validated against the spec; errors
name their field.
The same rules over SQLite are checked at the storage level (``test_storage_rules_on_sqlite``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import _fresh_postgres_database
from tests.finetune_support import TINY, adapter_dir, chat_jsonl, qa_pairs, upload, wait_for, wait_until
from tests.serving_support import engines, make_adapter, register_adapter, shared_serving_env, wait_engines_ready
from tests.support import LiveGateway, SpecRecorder

HELLO = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    url, drop = _fresh_postgres_database()
    gateway = LiveGateway(tmp_path_factory.mktemp("permissions"), url, **shared_serving_env(tiny_model))
    gateway.start()
    wait_engines_ready(gateway)
    yield gateway
    gateway.stop()
    drop()


@pytest.fixture(scope="module")
def orgs(gw: LiveGateway, tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """owner (a fine-tuned model and one of its checkpoints), grantee, stranger: (org id, key id, secret) each."""
    owner, grantee, stranger = gw.new_org_key("owner"), gw.new_org_key("grantee"), gw.new_org_key("stranger")
    adapter = make_adapter(tiny_model, tmp_path_factory.mktemp("adapter") / "a", seed=5)
    model = register_adapter(gw, owner[0], adapter, "shared")
    checkpoint = _register_checkpoint(gw, owner[0], model, adapter)
    return {"owner": owner, "grantee": grantee, "stranger": stranger, "model": model, "checkpoint": checkpoint}


def _register_checkpoint(gw: LiveGateway, org_id: str, model: str, adapter: Path) -> str:
    from storage.blobs import LocalBlobStore
    from storage.db import Database
    from storage.ids import now
    from storage.jobs import JobStore
    from storage.tables import FineTunedModel

    key = f"models/test-{uuid.uuid4().hex[:8]}/ckpt-step-2"
    LocalBlobStore(gw.data_dir / "blobs").commit_dir(adapter, key, ("adapter_config.json", "adapter_model.safetensors"))
    db = Database(gw.database_url)
    try:
        JobStore(db).add_model(
            FineTunedModel(
                id=f"{model}:ckpt-step-2",
                organization_id=org_id,
                base_model=TINY,
                kind="checkpoint",
                parent_id=model,
                adapter_key=key,
                created_at=now(),
            )
        )
    finally:
        db.dispose()
    return f"{model}:ckpt-step-2"


def _chat(client: openai.OpenAI, model: str) -> str:
    return (
        client.chat.completions.create(model=model, messages=HELLO, max_tokens=8, temperature=0, seed=1)
        .choices[0]
        .message.content
    )


def _error(exc: pytest.ExceptionInfo) -> dict:
    return exc.value.response.json()["error"]


def test_owner_grants_lists_pages_and_filters(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    owner = gw.client(orgs["owner"][2], recorder)
    perms = owner.fine_tuning.checkpoints.permissions
    made = perms.create(orgs["model"], project_ids=[orgs["grantee"][0]])
    assert made.object == "list" and made.has_more is False and len(made.data) == 1
    grant = made.data[0]
    assert (
        grant.object == "checkpoint.permission"
        and grant.id.startswith("cp_")
        and grant.project_id == orgs["grantee"][0]
    )
    assert made.first_id == made.last_id == grant.id
    again = perms.create(orgs["model"], project_ids=[orgs["grantee"][0], orgs["grantee"][0]])
    assert [p.id for p in again.data] == [grant.id]  # granting twice keeps the one permission
    ckpt = perms.create(orgs["checkpoint"], project_ids=[orgs["grantee"][0]]).data[0]
    assert ckpt.id != grant.id

    listed = perms.list(orgs["model"])
    assert [p.id for p in listed.data] == [grant.id] and listed.has_more is False
    assert [p.project_id for p in perms.list(orgs["checkpoint"]).data] == [orgs["grantee"][0]]
    assert perms.list(orgs["model"], project_id=orgs["stranger"][0]).data == []
    assert [p.id for p in perms.list(orgs["model"], project_id=orgs["grantee"][0]).data] == [grant.id]
    with pytest.warns(DeprecationWarning):
        assert [p.id for p in perms.retrieve(orgs["model"]).data] == [grant.id]  # the deprecated GET, same route
    assert "ListFineTuningCheckpointPermissionResponse" in recorder.checked


def test_list_order_and_pagination(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    """Three grants on a fresh model: newest first by default, ascending on request, pages through ``after``."""
    owner_id = orgs["owner"][0]
    extra = [gw.new_org_key(f"project-{i}")[0] for i in range(3)]
    model = register_adapter(gw, owner_id, _adapter_path(gw, orgs["model"]), "paged")
    perms = gw.client(orgs["owner"][2], recorder).fine_tuning.checkpoints.permissions
    for project in extra:
        perms.create(model, project_ids=[project])
    assert [p.project_id for p in perms.list(model).data] == extra[::-1]
    assert [p.project_id for p in perms.list(model, order="ascending").data] == extra
    first = perms.list(model, limit=2)
    assert first.has_more is True and [p.project_id for p in first.data] == extra[:0:-1]
    rest = perms.list(model, limit=2, after=first.last_id)
    assert rest.has_more is False and [p.project_id for p in rest.data] == extra[:1]
    assert [p.project_id for p in perms.list(model).data] == extra[::-1]  # auto-paging sees each once too
    assert [p.project_id for p in perms.list(model, limit=1)] == extra[::-1]


def _adapter_path(gw: LiveGateway, model: str) -> Path:
    """Where ``model``'s adapter is stored (to register a second model with the same weights)."""
    return gw.data_dir / "blobs" / "objects" / _adapter_key(gw, model)


def _adapter_key(gw: LiveGateway, model: str) -> str:
    from sqlmodel import select

    from storage.db import Database
    from storage.tables import FineTunedModel

    db = Database(gw.database_url)
    try:
        with db.session() as s:
            key = s.exec(select(FineTunedModel.adapter_key).where(FineTunedModel.id == model)).one()
    finally:
        db.dispose()
    return key


def test_bad_requests_name_their_field(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    owner = gw.client(orgs["owner"][2], recorder)
    perms = owner.fine_tuning.checkpoints.permissions
    cases = [
        ({"project_ids": []}, "project_ids", "invalid_value"),
        ({"project_ids": "org-x"}, "project_ids", "invalid_value"),
        ({"project_ids": [orgs["grantee"][0], 7]}, "project_ids[1]", "invalid_type"),
        ({"project_ids": ["org-doesnotexist"]}, "project_ids[0]", "invalid_project_id"),
        ({"project_ids": [orgs["owner"][0]]}, "project_ids[0]", "invalid_project_id"),
        ({"project_ids": [orgs["grantee"][0]], "role": "admin"}, "role", "unknown_parameter"),
        ({}, "project_ids", "missing_required_parameter"),
    ]
    for body, param, code in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            owner.post(f"/fine_tuning/checkpoints/{orgs['model']}/permissions", body=body, cast_to=object)
        assert (_error(exc)["param"], _error(exc)["code"]) == (param, code), body
    with pytest.raises(openai.BadRequestError) as exc:
        perms.list(orgs["model"], order="sideways")  # type: ignore[arg-type]
    assert _error(exc)["param"] == "order"
    with pytest.raises(openai.NotFoundError) as exc:  # a base model has no permissions
        perms.create(TINY, project_ids=[orgs["grantee"][0]])
    assert _error(exc)["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as exc:
        perms.delete("cp_nosuchpermission", fine_tuned_model_checkpoint=orgs["model"])
    assert _error(exc)["param"] == "permission_id"
    with pytest.raises(openai.NotFoundError):  # a list anchored on a permission of another model
        perms.list(orgs["model"], after="cp_nosuchpermission")
    key = {"authorization": f"Bearer {orgs['owner'][2]}"}
    for path in (f"/v1/fine_tuning/checkpoints/{orgs['model']}", f"/v1/fine_tuning/checkpoints/{orgs['model']}/perms"):
        response = httpx.get(gw.url + path, headers=key)
        assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_url"


def test_grantee_lists_chats_and_is_charged(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    owner, grantee = gw.client(orgs["owner"][2]), gw.client(orgs["grantee"][2], recorder)
    owner.fine_tuning.checkpoints.permissions.create(orgs["model"], project_ids=[orgs["grantee"][0]])
    seen = {m.id: m.owned_by for m in grantee.models.list()}
    assert seen[orgs["model"]] == orgs["owner"][0] and seen[orgs["checkpoint"]] == orgs["owner"][0]
    assert grantee.models.retrieve(orgs["model"]).owned_by == orgs["owner"][0]
    expected = _chat(owner, orgs["model"])
    answer = grantee.chat.completions.create(model=orgs["model"], messages=HELLO, max_tokens=8, temperature=0, seed=1)
    assert answer.model == orgs["model"] and answer.choices[0].message.content == expected
    assert _chat(grantee, orgs["checkpoint"]) == _chat(owner, orgs["checkpoint"])
    # one copy of the adapter on the engine, whoever asks (its name is the blob key, not the caller)
    [engine] = engines(gw)
    assert engine["adapters"].count(_adapter_key(gw, orgs["model"])) == 1

    def usage(org: tuple[str, str, str]) -> list[dict]:
        with gw.admin() as admin:
            rows = admin.get("/admin/usage", params={"organization_id": org[0]}).raise_for_status().json()["data"]
        return [r for r in rows if r["model"] == orgs["model"] and r["api_key_id"] == org[1]]

    rows = wait_until(lambda: usage(orgs["grantee"]), 15, "the grantee's usage row")
    assert rows[0]["requests"] == 1 and rows[0]["completion_tokens"] == answer.usage.completion_tokens
    assert wait_until(lambda: usage(orgs["owner"]), 15, "the owner's usage row")[0]["requests"] >= 1


def test_grantee_evaluates_the_shared_model(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    gw.client(orgs["owner"][2]).fine_tuning.checkpoints.permissions.create(
        orgs["model"], project_ids=[orgs["grantee"][0]]
    )
    grantee = gw.client(orgs["grantee"][2], recorder)
    criteria = [
        {
            "type": "string_check",
            "name": "any",
            "input": "{{sample.output_text}}",
            "reference": "never",
            "operation": "ne",
        }
    ]
    evaluation = grantee.evals.create(
        name="shared",
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=criteria,
    )
    content = [{"item": {"q": f"Say {w}."}} for w in ("one", "two")]
    source = {
        "type": "completions",
        "model": orgs["model"],
        "source": {"type": "file_content", "content": content},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
        "sampling_params": {"max_completion_tokens": 4, "temperature": 0},
    }
    run = grantee.evals.runs.create(evaluation.id, data_source=source)
    done = wait_until(
        lambda: (
            (r := grantee.evals.runs.retrieve(run.id, eval_id=evaluation.id)).status
            in ("completed", "failed", "canceled")
            and r
        ),
        180,
        "the eval run",
    )
    assert done.status == "completed" and done.result_counts.total == 2 and done.result_counts.errored == 0, done
    stranger = gw.client(orgs["stranger"][2])
    other_eval = stranger.evals.create(
        name="x", data_source_config={"type": "custom", "item_schema": {"type": "object"}}, testing_criteria=criteria
    )
    with pytest.raises(openai.NotFoundError):  # not shared with the stranger
        stranger.evals.runs.create(other_eval.id, data_source=source)


def test_grantee_cannot_delete_export_or_manage(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    owner = gw.client(orgs["owner"][2])
    grant = owner.fine_tuning.checkpoints.permissions.create(orgs["model"], project_ids=[orgs["grantee"][0]]).data[0]
    grantee = gw.client(orgs["grantee"][2], recorder)
    perms = grantee.fine_tuning.checkpoints.permissions
    with pytest.raises(openai.PermissionDeniedError) as exc:
        grantee.models.delete(orgs["model"])
    assert (_error(exc)["code"], _error(exc)["type"]) == ("model_not_owned", "permission_error")
    with pytest.raises(openai.PermissionDeniedError) as exc:
        grantee.post("/exports", body={"model": orgs["model"], "format": "gguf_adapter"}, cast_to=object)
    assert _error(exc)["code"] == "model_not_owned"
    for call in (
        lambda: perms.list(orgs["model"]),
        lambda: perms.create(orgs["model"], project_ids=[orgs["stranger"][0]]),
        lambda: perms.delete(grant.id, fine_tuned_model_checkpoint=orgs["model"]),
    ):
        with pytest.raises(openai.PermissionDeniedError) as exc:
            call()
        assert _error(exc)["param"] == "fine_tuned_model_checkpoint"
    # the stranger: the model does not exist for it, whatever it tries
    stranger = gw.client(orgs["stranger"][2], recorder)
    assert orgs["model"] not in {m.id for m in stranger.models.list()}
    for call in (
        lambda: stranger.models.retrieve(orgs["model"]),
        lambda: stranger.models.delete(orgs["model"]),
        lambda: _chat(stranger, orgs["model"]),
        lambda: stranger.fine_tuning.checkpoints.permissions.list(orgs["model"]),
        lambda: stranger.fine_tuning.checkpoints.permissions.delete(
            grant.id, fine_tuned_model_checkpoint=orgs["model"]
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [p.id for p in owner.fine_tuning.checkpoints.permissions.list(orgs["model"]).data] == [grant.id]
    assert _chat(owner, orgs["model"])  # nothing the grantee tried changed the owner's model


def test_revoking_ends_access_at_once(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    owner = gw.client(orgs["owner"][2], recorder)
    perms = owner.fine_tuning.checkpoints.permissions
    grant = perms.create(orgs["checkpoint"], project_ids=[orgs["grantee"][0]]).data[0]
    grantee = gw.client(orgs["grantee"][2])
    assert _chat(grantee, orgs["checkpoint"])  # loaded on the engine now, and (were it cached) routed
    deleted = perms.delete(grant.id, fine_tuned_model_checkpoint=orgs["checkpoint"])
    assert (deleted.id, deleted.object, deleted.deleted) == (grant.id, "checkpoint.permission", True)
    with pytest.raises(openai.NotFoundError) as exc:  # the very next request: no grace period, no cached route
        _chat(grantee, orgs["checkpoint"])
    assert _error(exc)["code"] == "model_not_found"
    assert orgs["checkpoint"] not in {m.id for m in grantee.models.list()}
    with pytest.raises(openai.NotFoundError):
        grantee.models.retrieve(orgs["checkpoint"])
    assert _adapter_key(gw, orgs["checkpoint"]) in engines(gw)[0]["adapters"]  # still loaded: no back door
    assert _chat(owner, orgs["checkpoint"])
    with pytest.raises(openai.NotFoundError):
        perms.delete(grant.id, fine_tuned_model_checkpoint=orgs["checkpoint"])
    assert perms.list(orgs["checkpoint"]).data == []


def test_deleting_the_model_deletes_its_permissions(gw: LiveGateway, orgs, tmp_path: Path) -> None:
    owner = gw.client(orgs["owner"][2])
    model = register_adapter(gw, orgs["owner"][0], _adapter_path(gw, orgs["model"]), "doomed")
    owner.fine_tuning.checkpoints.permissions.create(model, project_ids=[orgs["grantee"][0]])
    grantee = gw.client(orgs["grantee"][2])
    assert model in {m.id for m in grantee.models.list()}
    assert owner.models.delete(model).deleted is True
    assert model not in {m.id for m in grantee.models.list()}
    with pytest.raises(openai.NotFoundError):
        owner.fine_tuning.checkpoints.permissions.list(model)
    from sqlmodel import select

    from storage.db import Database
    from storage.tables import CheckpointPermission

    db = Database(gw.database_url)
    try:
        with db.session() as s:
            assert s.exec(select(CheckpointPermission).where(CheckpointPermission.model_id == model)).all() == []
    finally:
        db.dispose()


def test_grantee_fine_tunes_from_the_shared_checkpoint(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    """``model: "ft:…:ckpt-step-N"`` shared with the grantee: the job trains on from that adapter (at a learning rate
    too small to move it, its final weights are the parent's, not a fresh LoRA's zero B), the new model is the
    grantee's and named after the base; a stranger's create is refused like an unknown model."""
    from safetensors.torch import load_file

    owner = gw.client(orgs["owner"][2])
    owner.fine_tuning.checkpoints.permissions.create(orgs["checkpoint"], project_ids=[orgs["grantee"][0]])
    grantee, stranger = gw.client(orgs["grantee"][2], recorder), gw.client(orgs["stranger"][2])
    data = chat_jsonl(qa_pairs(10))
    with pytest.raises(openai.BadRequestError) as exc:
        stranger.fine_tuning.jobs.create(model=orgs["checkpoint"], training_file=upload(stranger, data))
    assert (_error(exc)["param"], _error(exc)["code"]) == ("model", "model_not_available")
    job = grantee.fine_tuning.jobs.create(
        model=orgs["checkpoint"],
        training_file=upload(grantee, data),
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5, "learning_rate_multiplier": 0.01}},
        },
    )
    assert job.model == orgs["checkpoint"] and "FineTuningJob" in recorder.checked
    done = wait_for(grantee, job.id, ("succeeded", "failed", "cancelled"), timeout=300)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith(f"ft:{TINY}:{orgs['grantee'][0]}::")
    assert grantee.models.retrieve(done.fine_tuned_model).owned_by == orgs["grantee"][0]
    parent = load_file(str(_adapter_path(gw, orgs["checkpoint"]) / "adapter_model.safetensors"))
    child = load_file(str(adapter_dir(gw, job.id) / "adapter_model.safetensors"))
    assert set(child) == set(parent)
    assert max(float(parent[k].abs().max()) for k in parent if "lora_B" in k) > 0.05
    assert max(float((child[k] - parent[k]).abs().max()) for k in parent) < 1e-3
    assert _chat(grantee, done.fine_tuned_model)
    own = grantee.fine_tuning.jobs.create(model=done.fine_tuned_model, training_file=upload(grantee, data))
    assert own.model == done.fine_tuned_model  # continuing its own model is accepted too (not run here)
    grantee.fine_tuning.jobs.cancel(own.id)


def test_continued_models_are_named_after_the_base() -> None:
    from finetune.submit import _check_model, base_name
    from storage.errors import InvalidRequest, NotFound
    from storage.settings import BaseModelSpec, Settings

    assert base_name(f"ft:{TINY}:org-a:sfx:abcd1234") == TINY
    assert base_name(f"ft:{TINY}:org-a::abcd1234:ckpt-step-20") == TINY
    assert base_name("ft:a:b:org-a::abcd1234") == "a:b" and base_name(TINY) == TINY
    settings = Settings(base_models={TINY: BaseModelSpec(source="x")})

    def lookup(model: str) -> object:
        if model != "ft:shared":
            raise NotFound("no", param="model")
        return type("Entry", (), {"base_model": TINY, "adapter_key": "models/x/final"})()

    assert _check_model(settings, "ft:shared", lookup) == TINY
    for model, found in (("ft:other", lookup), ("ft:shared", None)):
        with pytest.raises(InvalidRequest) as exc:
            _check_model(settings, model, found)
        assert exc.value.code == "model_not_available"


def test_storage_rules_on_sqlite(tmp_path: Path) -> None:
    """The same SQL over SQLite: visible to owner and grantee only, listed for the grantee, a grant of another
    organization's model cannot be made, revoking hides it again — also from a job continuing it, whose training
    child asks again when it starts (``finetune.child.parent_adapter``)."""
    from types import SimpleNamespace

    from finetune.child import parent_adapter
    from storage import migrate
    from storage.accounts import Accounts
    from storage.db import Database
    from storage.errors import NotFound, PermissionDenied, TunegateError
    from storage.ids import now
    from storage.jobs import JobStore
    from storage.permissions import PermissionStore, granted_models, visible_model
    from storage.settings import BaseModelSpec, Settings
    from storage.tables import FineTunedModel

    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        migrate.upgrade(db)
        accounts = Accounts(db)
        a, b, c = (accounts.create_org(n).id for n in ("a", "b", "c"))
        JobStore(db).add_model(
            FineTunedModel(
                id="ft:m:a::1", organization_id=a, base_model="m", adapter_key="models/j/final", created_at=now()
            )
        )
        store = PermissionStore(db)
        grant = store.create(a, "ft:m:a::1", [b])[0]
        with db.session() as s:
            assert [visible_model(s, o, "ft:m:a::1") is not None for o in (a, b, c)] == [True, True, False]
            assert [m.id for m in granted_models(s, b)] == ["ft:m:a::1"] and granted_models(s, a) == []
        ctx = SimpleNamespace(
            settings=Settings(base_models={"m": BaseModelSpec(source="x")}),
            db=db,
            worker="w",
            job=SimpleNamespace(id="ftjob-1", organization_id=b, model="ft:m:a::1"),
            jobs=SimpleNamespace(add_event=lambda *_a, **_k: None),
            base_id="ft:m:a::1",
            blobs=SimpleNamespace(local_path=lambda key: tmp_path / key),
        )
        assert parent_adapter(ctx) == tmp_path / "models/j/final" and ctx.base_id == "m"  # type: ignore[arg-type]
        with pytest.raises(PermissionDenied):
            store.create(b, "ft:m:a::1", [c])
        with pytest.raises(NotFound):
            store.create(c, "ft:m:a::1", [b])
        store.delete(a, "ft:m:a::1", grant.id)
        with db.session() as s:
            assert visible_model(s, b, "ft:m:a::1") is None
        with pytest.raises(TunegateError) as exc:
            parent_adapter(ctx)  # type: ignore[arg-type]
        assert (exc.value.code, exc.value.param) == ("model_not_available", "model")
    finally:
        db.dispose()
