"""The Models API through the `openai` client: base models from settings, fine-tuned models per organization."""

from __future__ import annotations

import openai
import pytest

from storage.db import Database
from storage.ids import now
from storage.tables import FineTunedModel
from tests.support import LiveGateway, SpecRecorder

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def add_fine_tuned(gateway: LiveGateway, org_id: str, model_id: str, kind: str = "fine-tuned") -> None:
    """Seed a fine-tuned model row (until jobs produce them) through the real storage layer."""
    db = Database(gateway.database_url)
    with db.session() as s:
        s.add(FineTunedModel(id=model_id, organization_id=org_id, base_model=BASE, kind=kind, created_at=now()))
    db.dispose()


@pytest.fixture
def tenant(gateway: LiveGateway) -> tuple[str, str]:
    org_id, _, secret = gateway.new_org_key("models")
    return org_id, secret


def test_list_retrieve_delete(gateway: LiveGateway, tenant, recorder: SpecRecorder) -> None:
    org_id, secret = tenant
    client = gateway.client(secret, recorder)
    tuned = f"ft:{BASE}:{org_id}:news:abcd1234"
    ckpt = f"{tuned}:ckpt-step-10"
    add_fine_tuned(gateway, org_id, tuned)
    add_fine_tuned(gateway, org_id, ckpt, kind="checkpoint")

    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {BASE, tuned, ckpt}
    assert listed[BASE].owned_by == "tunegate" and listed[tuned].owned_by == org_id

    for model_id in (BASE, tuned, ckpt):  # ids with '/' and ':' route as one path parameter
        assert client.models.retrieve(model_id).id == model_id

    with pytest.raises(openai.PermissionDeniedError) as err:
        client.models.delete(BASE)
    assert err.value.body["param"] == "model"

    deleted = client.models.delete(tuned)
    assert deleted.deleted is True and deleted.id == tuned
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve(tuned)
    assert err.value.body["code"] == "model_not_found"
    assert {m.id for m in client.models.list()} == {BASE, ckpt}


def test_other_organizations_models_are_invisible(gateway: LiveGateway, tenant, recorder: SpecRecorder) -> None:
    org_id, secret = tenant
    theirs = f"ft:{BASE}:{org_id}:private:ffff0000"
    add_fine_tuned(gateway, org_id, theirs)
    _, _, other_secret = gateway.new_org_key("other")
    other = gateway.client(other_secret, recorder)
    assert theirs not in {m.id for m in other.models.list()}
    for call in (other.models.retrieve, other.models.delete):
        with pytest.raises(openai.NotFoundError) as err:
            call(theirs)
        assert err.value.body["code"] == "model_not_found"
    assert gateway.client(secret, recorder).models.retrieve(theirs).id == theirs


def test_unknown_model(gateway: LiveGateway, tenant, recorder: SpecRecorder) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        gateway.client(tenant[1], recorder).models.retrieve("no-such/model:x")
    assert "no-such/model:x" in err.value.body["message"]
