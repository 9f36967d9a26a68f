from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support import DATA, POSTGRES_URL, SHARED, LiveGateway, SpecRecorder, SpecValidator


@pytest.fixture(scope="session")
def spec() -> SpecValidator:
    assert (SHARED / "openai" / "openapi.yaml").is_file(), f"../shared not found at {SHARED}"
    return SpecValidator()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny chat model (own tokenizer, ChatML template, random weights) in a local HF directory."""
    from tests.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-chat", DATA))


@pytest.fixture(scope="session")
def edge_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model llama.cpp's converter and K-quants accept (tests/edge_support.py)."""
    from tests.edge_support import build_edge_model

    return str(build_edge_model(tmp_path_factory.mktemp("edge-model") / "edge-chat"))


@pytest.fixture
def recorder(spec: SpecValidator) -> Iterator[SpecRecorder]:
    rec = SpecRecorder(spec)
    yield rec
    assert not rec.violations, "responses violate the OpenAI spec:\n" + "\n".join(rec.violations)


def _fresh_postgres_database() -> tuple[str, callable]:
    """A new, empty database on the real Postgres; returns its URL and a dropper."""
    name = f"tunegate_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - turned into a clear failure
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is required (CI starts it): {exc}")

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # noqa: ANN001
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tunegate.db'}"
        return
    url, drop = _fresh_postgres_database()
    yield url
    drop()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """One live tunegate per test module and database backend."""
    data_dir = tmp_path_factory.mktemp(f"gw-{request.param}")
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'tunegate.db'}"
    else:
        url, drop = _fresh_postgres_database()
    gw = LiveGateway(data_dir, url)
    gw.start()
    yield gw
    gw.stop()
    if drop:
        drop()
