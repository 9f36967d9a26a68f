"""glibc's mmap threshold for training on CPU (finetune/recipe/host_memory.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from finetune.recipe.host_memory import fix_mmap_threshold

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS.split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
print(fix_mmap_threshold())
libc.free(libc.malloc(16 << 20))  # freeing a 16 MiB mmapped block raises glibc's dynamic threshold to 16 MiB
before = libc.mallinfo2().hblks  # blocks served by mmap, alive
block = libc.malloc(int(sys.argv[1]))  # a block between the fixed threshold and the raised one
print(libc.mallinfo2().hblks - before)
"""


def probe(env: dict[str, str]) -> tuple[str, int]:
    import os

    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(4 << 20)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_blocks_over_the_threshold_stay_on_mmap_after_a_large_free() -> None:
    # glibc's default: once a 16 MiB mmapped block is freed, a 4 MiB block comes from the heap (whose pages go back
    # to the system only from its top); with the fixed threshold it is mmapped, as before any free
    assert probe({"TUNEGATE_MMAP_THRESHOLD": "0"}) == ("None", 0)
    assert probe({}) == (str(1 << 20), 1)
