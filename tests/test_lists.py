"""List endpoints are bounded pages: 10 001 files page and auto-page through the openai client; job metadata
filters run in SQL (SQLite and Postgres), with keys no JSON path can spell."""

from __future__ import annotations

import openai
import pytest
from sqlalchemy import event, insert, text

from storage import migrate
from storage.accounts import Accounts
from storage.db import Database
from storage.ids import now
from storage.jobs import JobStore
from storage.tables import FineTuningJob, StoredFile
from tests.support import LiveGateway, SpecRecorder

N_FILES = 10_001  # one more than the largest page


@pytest.fixture(scope="module")
def many_files(gateway: LiveGateway) -> tuple[str, list[str]]:
    """An organization with N_FILES files (rows only: listing never reads blobs), ids newest first."""
    org_id, _, key = gateway.new_org_key("lists")
    db = Database(gateway.database_url)
    ids = [f"file-list{i:06d}" for i in range(N_FILES)]
    rows = [
        dict(
            id=i,
            organization_id=org_id,
            filename=f"{i}.jsonl",
            purpose="batch" if n % 2 else "user_data",
            bytes=1,
            created_at=now(),
            status="processed",
            blob_key=f"files/{i}/original",
        )
        for n, i in enumerate(ids)
    ]
    with db.engine.begin() as conn:
        conn.execute(insert(StoredFile), rows)
    db.dispose()
    return key, ids[::-1]


def test_default_page_is_bounded_and_auto_paging_sees_every_file(gateway: LiveGateway, many_files) -> None:
    key, newest_first = many_files
    client = gateway.client(key)
    first = client.files.list()
    assert len(first.data) == 10_000 and first.has_more  # OpenAI's default page, never the whole table
    assert [f.id for f in first.data] == newest_first[:10_000]
    assert [f.id for f in client.files.list(limit=1000)] == newest_first  # 11 pages, in order, no repeats
    assert [f.id for f in client.files.list(limit=2000, order="asc")] == newest_first[::-1]
    assert [f.id for f in client.files.list(purpose="batch", limit=3000)] == [
        i for i in newest_first if int(i[-6:]) % 2
    ]


def test_page_limits_and_anchors(gateway: LiveGateway, many_files, recorder: SpecRecorder) -> None:
    key, newest_first = many_files
    client = gateway.client(key, recorder)
    for limit in (0, 10_001):
        with pytest.raises(openai.BadRequestError):
            client.files.list(limit=limit)
    page = client.files.list(limit=3)
    assert [f.id for f in page.data] == newest_first[:3] and page.has_more
    # the anchor expires between two pages: paging goes on after it
    db = Database(gateway.database_url)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE files SET expires_at = 1 WHERE id = :id"), {"id": newest_first[2]})
    assert [f.id for f in client.files.list(limit=2, after=newest_first[2]).data] == newest_first[3:5]
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE files SET expires_at = NULL WHERE id = :id"), {"id": newest_first[2]})
    db.dispose()
    _, _, other = gateway.new_org_key("lists-other")
    with pytest.raises(openai.BadRequestError) as err:  # another organization's file is no anchor
        gateway.client(other, recorder).files.list(after=newest_first[0])
    assert err.value.body["param"] == "after"


KEYS = ["team", 'we"ird', "dot.key", "$[0]", "ünï", "back\\slash", "it's"]


def test_job_metadata_filter_runs_in_sql(database_url: str) -> None:
    db = Database(database_url)
    migrate.upgrade(db)
    accounts = Accounts(db)
    org, other = accounts.create_org("m").id, accounts.create_org("o").id
    jobs = JobStore(db)

    def job(n: int, org_id: str, metadata: dict[str, str] | None) -> str:
        jobs.insert(
            FineTuningJob(
                id=f"ftjob-m{n:04d}",
                organization_id=org_id,
                model="m",
                training_file="file-x",
                seed=1,
                metadata_=metadata,
                created_at=now(),
            ),
            "created",
        )
        return f"ftjob-m{n:04d}"

    plain = [job(n, org, None if n % 3 else {"team": "ops"}) for n in range(30)]
    tagged = [job(100 + n, org, {k: f"v-{k}" for k in KEYS} | {"n": str(n % 2)}) for n in range(5)]
    job(200, other, {"team": "qa"})

    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))

    def ids(limit: int = 100, after: str | None = None, **metadata: str) -> list[str]:
        return [j.id for j in jobs.list(org, limit=limit, after=after, metadata=metadata).items]

    assert ids() == (plain + tagged)[::-1]
    assert ids(team="qa") == []  # the other organization's job stays theirs
    assert ids(team="ops") == [p for n, p in enumerate(plain) if n % 3 == 0][::-1]
    for k in KEYS:
        assert ids(**{k: f"v-{k}"}) == tagged[::-1], k
    assert ids(**{"ünï": "v-ünï", "n": "0"}) == [tagged[4], tagged[2], tagged[0]]
    assert ids(**{"ünï": "v-ünï", "n": "2"}) == []
    page = jobs.list(org, limit=2, after=None, metadata={"n": "0"})
    assert [j.id for j in page.items] == [tagged[4], tagged[2]] and page.has_more
    assert ids(limit=5, after=tagged[2], n="0") == [tagged[0]]
    assert ids(limit=5, after=plain[-1], n="1") == []  # an anchor outside the filter still anchors
    assert ids(limit=5, after=tagged[4], n="1") == [tagged[3], tagged[1]]

    job_selects = [s for s in statements if "FROM fine_tuning_jobs" in s and "metadata" in s.split("WHERE", 1)[-1]]
    assert job_selects and all("LIMIT" in s for s in job_selects), "metadata must be filtered by the database"
    db.dispose()
