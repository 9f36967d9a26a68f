"""The Python grader sandbox against hostile graders: each is contained, its item errors with a message, the next
item grades normally, and the pool (and this process) carry on. Throughput with a trivial grader."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from finetune.graders.sandbox import Limits, SandboxPool

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def pool() -> SandboxPool:
    pool = SandboxPool(Limits(timeout_seconds=TIMEOUT, cpu_seconds=TIMEOUT, memory_mib=512), size=3)
    yield pool
    pool.close()


def hostile(body: str) -> str:
    """A grader that misbehaves on items marked evil and grades the others 1.0."""
    indented = "\n".join("        " + line for line in body.strip().splitlines())
    head = "import os, sys, ctypes, socket\n\ndef grade(sample, item):\n    if item.get('evil'):\n"
    return f"{head}{indented}\n    return 1.0\n"


CATALOGUE = {
    "network (socket)": ("socket.create_connection(('127.0.0.1', 5432), timeout=1)\nreturn 1.0", "network"),
    "network (raw syscall)": (
        "fd = ctypes.CDLL(None).socket(2, 1, 0)\nassert fd >= 0, 'no socket'\nreturn 1.0",
        "no socket",
    ),
    "/etc/passwd": ("return float(len(open('/etc/passwd').read()))", "Permission denied"),
    "tunegate's database": ("return float(len(open(item['db'], 'rb').read()))", "Permission denied"),
    "tunegate's code": ("return float(len(os.listdir(item['repo'])))", "Permission denied"),
    "os.fork loop": ("while True:\n    os.fork()", "Resource temporarily unavailable"),
    "10 GB allocation": ("x = bytearray(10 * 1024 ** 3)\nreturn 1.0", "MemoryError"),
    "while True": ("while True:\n    pass", "timed out"),
    "printing 1 GB": ("for _ in range(1024):\n    print('x' * (1024 ** 2))\nreturn 0.5", None),
    "sys.exit": ("sys.exit(3)", "sys.exit(3)"),
    "os._exit": ("os._exit(0)", "exited (code 0)"),
    "segfault via ctypes": ("ctypes.string_at(0)", "segmentation fault"),
    "signal the parent": ("os.kill(item['parent'], 9)\nreturn 1.0", "not permitted"),
    "a 100 MB file": ("open('f', 'wb').write(b'x' * (100 * 1024 ** 2))\nreturn 1.0", "File too large"),
    "returns a string": ("return 'high'", "not a number"),
    "raises": ("raise ValueError('bad item')", "ValueError: bad item"),
}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_hostile_grader_errors_its_item_only(pool: SandboxPool, name: str, tmp_path: Path) -> None:
    body, message = CATALOGUE[name]
    db = tmp_path / "tunegate.db"
    sqlite3.connect(db).execute("create table secrets (x)").connection.commit()
    repo = str(Path(__file__).resolve().parents[1])
    item = {"db": str(db), "repo": repo, "parent": os.getpid()}
    started = time.monotonic()
    replies = pool.grade("org-evil", hostile(body), [({}, {**item, "evil": True}), ({}, item), ({}, item)])
    if message is None:  # output is discarded: the grade itself is fine
        assert replies[0].score == 0.5
    else:
        assert replies[0].score is None and message in replies[0].error, replies[0]
    assert [r.score for r in replies[1:]] == [1.0, 1.0], replies
    assert time.monotonic() - started < TIMEOUT + 10
    assert pool.grade("org-evil", hostile(body), [({}, item)])[0].score == 1.0  # the pool carries on


def test_sandbox_environment_is_scrubbed_and_isolated(pool: SandboxPool) -> None:
    os.environ["TUNEGATE_ADMIN_KEY_PROBE"] = "secret"
    try:
        source = "import os\ndef grade(s, i):\n    return float(any('TUNEGATE' in k for k in os.environ))"
        assert pool.grade("org-a", source, [({}, {})])[0].score == 0.0
    finally:
        del os.environ["TUNEGATE_ADMIN_KEY_PROBE"]
    assert set(pool.protections()) >= {"user+network namespace", "seccomp"}
    assert any(p.startswith("landlock abi") for p in pool.protections())


def test_organizations_never_share_an_interpreter(pool: SandboxPool) -> None:
    """Org A's grader leaves state in its interpreter's builtins; org B's (same source) never sees it."""
    source = (
        "import builtins\ndef grade(s, i):\n"
        "    seen = getattr(builtins, 'stash', None)\n    builtins.stash = i['secret']\n"
        "    return 1.0 if seen is None else 0.0\n"
    )
    a = pool.grade("org-a", source, [({}, {"secret": "A's data"})] * 2)
    b = pool.grade("org-b", source, [({}, {"secret": "B's data"})])
    assert [r.score for r in a] == [1.0, 0.0] and b[0].score == 1.0


def test_trivial_grader_throughput(pool: SandboxPool) -> None:
    source = "def grade(sample, item):\n    return float(sample['output_text'] == item['label'])\n"
    rows = [({"output_text": str(i % 7)}, {"label": "3"}) for i in range(5000)]
    pool.grade("org-fast", source, rows[:10])  # warm
    started = time.perf_counter()
    replies = pool.grade("org-fast", source, rows)
    rate = len(rows) / (time.perf_counter() - started)
    assert sum(r.score for r in replies) == sum(1 for i in range(5000) if i % 7 == 3)
    assert rate >= 200, f"{rate:.0f} items/s"


def test_concurrent_callers(pool: SandboxPool) -> None:
    source = "def grade(sample, item):\n    return item['n'] * 2.0\n"
    results: dict[int, list[float]] = {}

    def work(k: int) -> None:
        results[k] = [
            r.score for r in pool.grade(f"org-{k % 2}", source, [({}, {"n": k * 100 + i}) for i in range(300)])
        ]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k] == [(k * 100 + i) * 2.0 for i in range(300)] for k in range(6))
