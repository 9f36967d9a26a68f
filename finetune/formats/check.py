"""Normalize an uploaded file in a child process: the gateway's second guard around tenant data.

``normalize`` already holds one example at a time; running it here as well keeps its CPU off the gateway's
event loop (no GIL shared with requests) and puts a hard cap on its memory (``RLIMIT_AS``): a file that would
still need more, through some path nobody foresaw, fails this child with a MemoryError, never the gateway.

    python -m finetune.formats.check SOURCE TARGET MAX_EXAMPLE_BYTES MEMORY_LIMIT_BYTES

writes the normalized JSONL to TARGET and prints the result as one JSON line; exit status 3 means the memory
limit was hit.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

OUT_OF_MEMORY = 3
MIB = 1 << 20


def memory_limit(max_example_bytes: int) -> int:
    """Address space for the child: the interpreter (~40 MiB), and room for one parsed example at its worst
    (a 2 MiB example of empty lists is ~45 MiB of objects)."""
    return 128 * MIB + 64 * max_example_bytes


@dataclass(frozen=True)
class Checked:
    format: str
    kind: str
    n_examples: int
    problems: str | None  # the rendered problem list; None when the file is usable


async def check_in_child(
    source: Path, target: Path, max_example_bytes: int, memory_limit: int, env: dict[str, str]
) -> Checked | None:
    """Normalize ``source`` into ``target`` in a child; None when the child ran out of its memory."""
    root = str(Path(__file__).resolve().parents[2])  # this checkout, installed or not
    env = env | {"PYTHONPATH": os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "finetune.formats.check",
        str(source),
        str(target),
        str(max_example_bytes),
        str(memory_limit),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await child.communicate()
    except BaseException:  # the request was cancelled (client gone): the child goes too
        child.kill()
        await child.wait()
        raise
    if child.returncode == OUT_OF_MEMORY:
        return None
    if child.returncode != 0:
        raise RuntimeError(f"file check child failed ({child.returncode}): {err.decode(errors='replace')[-2000:]}")
    return Checked(**json.loads(out))


def main(argv: list[str]) -> int:
    source, target, max_example_bytes, memory_limit = argv
    resource.setrlimit(resource.RLIMIT_AS, (int(memory_limit), int(memory_limit)))
    from finetune.formats import normalize

    try:
        with open(target, "wb") as out:
            result = normalize(Path(source), out.write, int(max_example_bytes))
    except MemoryError:
        return OUT_OF_MEMORY
    problems = result.problems.render() if result.problems else None
    print(
        json.dumps(
            {"format": result.format, "kind": result.kind, "n_examples": result.n_examples, "problems": problems}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
