"""A restart (and a kill -9) of the gateway keeps every file, key and organization."""

from __future__ import annotations

import pytest

from tests.support import LiveGateway, SpecRecorder
from tests.test_files_api import chat_jsonl


@pytest.mark.parametrize("kill", [False, True], ids=["terminate", "kill-9"])
def test_restart_keeps_files_and_keys(gateway: LiveGateway, recorder: SpecRecorder, kill: bool) -> None:
    org_id, _, secret = gateway.new_org_key("durable")
    client = gateway.client(secret, recorder)
    content = chat_jsonl(11)
    uploaded = client.files.create(file=("durable.jsonl", content), purpose="fine-tune")
    created = client.models.retrieve("HuggingFaceTB/SmolLM2-135M-Instruct").created

    gateway.stop(kill=kill)
    gateway.start()

    client = gateway.client(secret, recorder)  # the same key still works
    assert client.files.retrieve(uploaded.id).bytes == len(content)
    assert client.files.content(uploaded.id).content == content
    assert client.models.retrieve("HuggingFaceTB/SmolLM2-135M-Instruct").created == created
    with gateway.admin() as admin:
        assert org_id in [o["id"] for o in admin.get("/admin/organizations").json()["data"]]
