"""The one error translator: its table, and framework errors rendered as the OpenAI envelope."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from gateway.app import create_app
from gateway.errors import status_of
from storage.errors import (
    AuthenticationFailed,
    InvalidFile,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    TunegateError,
    Unavailable,
)
from storage.settings import Settings
from tests.support import ADMIN_KEY, SpecValidator


@pytest.mark.parametrize(
    ("error", "status", "type_"),
    [
        (InvalidRequest("x"), 400, "invalid_request_error"),
        (InvalidFile("x"), 400, "invalid_request_error"),
        (AuthenticationFailed("x"), 401, "authentication_error"),
        (PermissionDenied("x"), 403, "permission_error"),
        (NotFound("x"), 404, "invalid_request_error"),
        (PayloadTooLarge("x"), 413, "invalid_request_error"),
        (RateLimited("x"), 429, "rate_limit_error"),
        (Unavailable("x"), 503, "service_unavailable_error"),
        (TunegateError("x"), 400, "invalid_request_error"),
    ],
)
def test_translation_table(error: TunegateError, status: int, type_: str) -> None:
    assert status_of(error) == (status, type_)


@pytest.fixture
def app_client(tmp_path) -> Iterator[TestClient]:  # noqa: ANN001
    settings = Settings(data_dir=tmp_path, admin_key=ADMIN_KEY)
    with TestClient(create_app(settings)) as client:
        org = client.post(
            "/admin/organizations", json={"name": "e"}, headers={"authorization": f"Bearer {ADMIN_KEY}"}
        ).json()
        key = client.post(
            f"/admin/organizations/{org['id']}/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"}
        ).json()
        client.headers["authorization"] = f"Bearer {key['secret']}"
        yield client


def _assert_envelope(spec: SpecValidator, response, status: int, type_: str) -> dict:  # noqa: ANN001
    assert response.status_code == status, response.text
    body = response.json()
    assert spec.errors("ErrorResponse", body) == [] and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_
    assert response.headers["x-request-id"]
    return body["error"]


def test_framework_errors_use_the_envelope(app_client: TestClient, spec: SpecValidator) -> None:
    assert _assert_envelope(spec, app_client.get("/v1/nowhere"), 404, "invalid_request_error")["code"] == "unknown_url"
    assert (
        _assert_envelope(spec, app_client.put("/v1/files"), 405, "invalid_request_error")["code"]
        == "method_not_allowed"
    )
    err = _assert_envelope(spec, app_client.get("/v1/files", params={"limit": "many"}), 400, "invalid_request_error")
    assert err["param"] == "limit"
    err = _assert_envelope(
        spec, app_client.get("/v1/files", params={"order": "sideways"}), 400, "invalid_request_error"
    )
    assert err["param"] == "order"
    err = _assert_envelope(
        spec,
        app_client.post("/admin/organizations", json={"nom": 1}, headers={"authorization": f"Bearer {ADMIN_KEY}"}),
        400,
        "invalid_request_error",
    )
    assert "name" in err["message"]
    _assert_envelope(
        spec,
        app_client.post("/v1/files", content=b"not multipart", headers={"content-type": "text/plain"}),
        400,
        "invalid_request_error",
    )


def test_unexpected_errors_are_500_envelopes(app_client: TestClient, spec: SpecValidator) -> None:
    services = app_client.app.state.services
    with services.db.engine.begin() as conn:
        conn.execute(text("DROP TABLE files"))
    err = _assert_envelope(spec, app_client.get("/v1/files"), 500, "server_error")
    assert "DROP" not in err["message"] and "files" not in err["message"]  # no internals leak
    assert app_client.get("/v1/models").status_code == 200  # the gateway keeps serving


def test_request_id_echo_post_200_and_docs(app_client: TestClient) -> None:
    r = app_client.get("/v1/models", headers={"x-request-id": "trace-123"})
    assert r.headers["x-request-id"] == "trace-123"
    assert app_client.get("/v1/models").headers["x-request-id"].startswith("req_")
    r = app_client.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "user_data"})
    assert r.status_code == 200
    schema = app_client.get("/docs/openapi.json")
    assert schema.status_code == 200 and "/v1/files" in schema.json()["paths"]
    assert app_client.get("/docs/swagger").status_code == 200
