"""Storage: migrations keep data, the schema matches the tables, blobs are atomic, crashes leave no dangling rows."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from storage import migrate
from storage.accounts import Accounts, KeyCache, Principal
from storage.blobs import LocalBlobStore
from storage.db import Database
from storage.errors import AuthenticationFailed
from storage.files import Files, NewFile


def test_migrations_build_exactly_the_declared_schema(database_url: str) -> None:
    db = Database(database_url)
    migrate.upgrade(db)
    assert migrate.current_revision(db) == migrate.head_revision()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], f"tables and migrations disagree; run storage.migrate.revise: {diff}"
    db.dispose()


def test_upgrade_is_idempotent_and_keeps_data(database_url: str) -> None:
    db = Database(database_url)
    migrate.upgrade(db)
    org = Accounts(db).create_org("kept")
    issued = Accounts(db).create_key(org.id)
    migrate.upgrade(db)  # a second start
    assert Accounts(db).authenticate(issued.secret).organization_id == org.id
    if db.dialect == "sqlite":
        with db.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    db.dispose()


def test_keys_are_stored_only_as_hashes(database_url: str) -> None:
    db = Database(database_url)
    migrate.upgrade(db)
    accounts = Accounts(db)
    issued = accounts.create_key(accounts.create_org("o").id, "ci")
    with db.engine.connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(text("SELECT * FROM api_keys")) for v in row)
    assert issued.secret not in dump and issued.secret[12:] not in dump
    db.dispose()


def test_verified_keys_are_cached_and_revocation_drops_them(database_url: str) -> None:
    """The gateway's key cache (``Accounts(db, key_cache_seconds)``): a verified key needs no database read for
    its TTL; revoking it through the same ``Accounts`` refuses it at once, through another (a second gateway, the
    CLI) once the TTL has run out. Unknown and revoked keys are never kept."""
    db = Database(database_url)
    migrate.upgrade(db)
    here, elsewhere = Accounts(db, key_cache_seconds=60), Accounts(db)
    org = here.create_org("c").id
    first, second = here.create_key(org), here.create_key(org)
    assert here.cached(first.secret) is None and here.cached("sk-tg-unknown") is None and here.cached(None) is None
    who = here.authenticate(first.secret)
    assert here.cached(first.secret) == who == Principal(org, first.key.id)

    here.revoke_key(first.key.id)
    assert here.cached(first.secret) is None
    with pytest.raises(AuthenticationFailed) as err:
        here.authenticate(first.secret)
    assert err.value.code == "revoked_api_key" and here.cached(first.secret) is None

    short = Accounts(db, key_cache_seconds=0.3)
    assert short.authenticate(second.secret) == Principal(org, second.key.id)
    elsewhere.revoke_key(second.key.id)  # another process: this one trusts its entry until it expires
    assert short.cached(second.secret) == Principal(org, second.key.id)
    time.sleep(0.35)
    assert short.cached(second.secret) is None
    with pytest.raises(AuthenticationFailed):
        short.authenticate(second.secret)
    assert Accounts(db, key_cache_seconds=0).keys.ttl_s == 0
    db.dispose()


def test_a_revocation_by_another_process_of_the_host_empties_the_key_cache(database_url: str, tmp_path: Path) -> None:
    """Two ``Accounts`` sharing ``<data_dir>/key-revocations`` (a gateway and the CLI, or two ``serve --workers``
    processes): a key revoked by one is refused by the other on its next lookup, not after the TTL; a missing
    marker file (nothing revoked yet, or the data directory not writable) leaves the cache working."""
    db = Database(database_url)
    migrate.upgrade(db)
    marker = tmp_path / "data" / "key-revocations"
    gateway, cli = Accounts(db, 60, revocations=marker), Accounts(db, revocations=marker)
    org = cli.create_org("m").id
    first, second = cli.create_key(org), cli.create_key(org)
    assert gateway.authenticate(first.secret) == gateway.cached(first.secret) == Principal(org, first.key.id)
    gateway.authenticate(second.secret)
    cli.revoke_key(first.key.id)
    assert marker.stat().st_size == 1
    assert gateway.cached(first.secret) is None and gateway.cached(second.secret) is None
    with pytest.raises(AuthenticationFailed) as err:
        gateway.authenticate(first.secret)
    assert err.value.code == "revoked_api_key"
    assert gateway.authenticate(second.secret) == gateway.cached(second.secret)  # kept again until the next one
    cli.revoke_key(second.key.id)  # the same size check, whatever the file's timestamps' resolution
    assert gateway.cached(second.secret) is None
    db.dispose()


def test_key_cache_is_bounded_and_a_read_racing_a_revocation_is_not_kept() -> None:
    cache = KeyCache(ttl_s=60, max_entries=3)
    for i in range(5):
        cache.put(f"d{i}", Principal("org", f"key{i}"), cache.generation)
    assert [cache.get(f"d{i}") is not None for i in range(5)] == [False, False, True, True, True]
    began = cache.generation  # a verification reads the key row ...
    cache.forget("key3")  # ... while another request revokes some key
    cache.put("d9", Principal("org", "key9"), began)  # the read may predate the revocation: not kept
    assert cache.get("d9") is None and cache.get("d3") is None and cache.get("d4") is not None
    disabled = KeyCache(ttl_s=0)
    disabled.put("d", Principal("org", "key"), disabled.generation)
    assert disabled.get("d") is None


@pytest.fixture
def files(tmp_path: Path) -> Files:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate.upgrade(db)
    org = Accounts(db).create_org("f")
    store = LocalBlobStore(tmp_path / "blobs")
    f = Files(db, store)
    f.org_id = org.id  # type: ignore[attr-defined]
    return f


def _staged(store: LocalBlobStore, data: bytes):  # noqa: ANN202
    staged = store.stage()
    staged.write(data)
    return staged


def test_failed_row_insert_leaves_no_blob(files: Files) -> None:
    store = files.blobs
    new = NewFile(
        organization_id="org-does-not-exist", filename="a", purpose="user_data", original=_staged(store, b"x")
    )
    with pytest.raises(Exception):  # noqa: B017 - the foreign key violation, whatever the driver calls it
        files.create(new)
    assert list(store.objects.rglob("*.*")) == [] and not any(p.is_file() for p in store.objects.rglob("*"))


def test_crash_leftovers_are_swept(files: Files) -> None:
    store = files.blobs
    half = store.stage()
    half.write(b"half an upload")  # a process killed mid-upload leaves only this
    half.close()
    orphan = _staged(store, b"blob whose row never landed")
    store.commit(orphan, "files/file-orphan/original")
    kept = files.create(
        NewFile(organization_id=files.org_id, filename="k", purpose="user_data", original=_staged(store, b"k"))
    )
    old = 10 * 3600
    for path in (half.path, store.local_path("files/file-orphan")):
        os.utime(path, (os.path.getmtime(path) - old,) * 2)

    assert store.sweep_staging() == 1 and not half.path.exists()
    assert files.reap_orphans() == 1 and not store.exists("files/file-orphan/original")
    assert store.exists(kept.blob_key)  # a file with a row is never touched


def test_blob_keys_cannot_escape(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    for key in ("../x", "/etc/passwd", "files/../../x", "a//b", ""):
        with pytest.raises(ValueError):
            store.local_path(key)


def test_expired_files_are_hidden_then_purged(files: Files) -> None:
    row = files.create(
        NewFile(
            organization_id=files.org_id,
            filename="e",
            purpose="user_data",
            original=_staged(files.blobs, b"e"),
            expires_after_s=3600,
        )
    )
    with files.db.session() as s:
        s.exec(text("UPDATE files SET expires_at = 1 WHERE id = :id").bindparams(id=row.id))
    assert files.list(files.org_id).items == []
    assert files.sweep_expired() == 1 and not files.blobs.exists(row.blob_key)


def test_tables_present(database_url: str) -> None:
    db = Database(database_url)
    migrate.upgrade(db)
    names = set(inspect(db.engine).get_table_names())
    assert {"organizations", "api_keys", "files", "models", "base_models", "alembic_version"} <= names
    db.dispose()
