"""Peak memory of a gateway validating large fine-tune uploads, side by side, in one run.

    .venv/bin/python bench/upload_memory.py [--mib 512] [--cases small,jsonl,array,empty-objects]

One `tunegate serve` subprocess (SQLite, no engines, the default 512 MiB upload limit). For each case, an upload
generated while it is sent (tests/upload_support.py), with the RSS of the gateway and all its children sampled
every 10 ms (plus the main process's kernel high-water mark, reset before each case):

- small          a 1 MiB JSONL file: the baseline of any upload
- jsonl          --mib of valid chat JSONL (~1 KiB examples), accepted and normalized
- array          --mib of the same examples as one JSON array, accepted and normalized
- empty-objects  --mib of `[{},{},…]` (the issue's case), refused after 1000 problems

Then, as the baseline, `normalize` alone in a fresh process (its ru_maxrss) on the same jsonl and array files
written to disk: finetune/formats as of --before (the whole-file array reader) and as it is now.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import LiveGateway  # noqa: E402
from tests.upload_support import MIB, RssSampler, array_body, jsonl_body, upload  # noqa: E402

CASES = {
    "small": lambda mib: (jsonl_body(MIB), "small.jsonl"),
    "jsonl": lambda mib: (jsonl_body(mib * MIB), "big.jsonl"),
    "array": lambda mib: (array_body(mib * MIB), "big.json"),
    "empty-objects": lambda mib: (array_body(mib * MIB, [b"{}"]), "empty.json"),
}


NORMALIZE = """
import resource, sys, time
sys.path.insert(0, sys.argv[1])
from finetune.formats import normalize
t0 = time.monotonic()
with open(sys.argv[3], "wb") as out:
    result = normalize(__import__("pathlib").Path(sys.argv[2]), out.write)
print(result.n_examples, len(result.problems.items), round(time.monotonic() - t0, 1),
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def in_process(before: str, mib: int, tmp: Path) -> None:
    """``normalize`` in a fresh interpreter, finetune/formats at ``before`` vs now, on files on disk."""
    old = tmp / "before"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", before, "finetune/__init__.py", "finetune/formats"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    print("\n| normalize alone | file MiB | examples | seconds | peak RSS MiB |\n|---|---:|---:|---:|---:|")
    for name, body in (("jsonl", jsonl_body(mib * MIB)), ("array", array_body(mib * MIB))):
        source = tmp / f"{name}.data"
        with open(source, "wb") as fh:
            for chunk in body:
                fh.write(chunk)
        for label, root in ((f"before ({before})", old), ("now", REPO)):
            out = subprocess.run(
                [sys.executable, "-c", NORMALIZE, str(root), str(source), str(tmp / "out")],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            print(
                f"| {name}, {label} | {source.stat().st_size / MIB:.0f} | {out[0]} | {out[2]} | {out[3]} |", flush=True
            )
        source.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--before", default="857f5c6", help="git revision of the baseline finetune/formats ('' skips)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gateway = LiveGateway(Path(tmp), f"sqlite:///{tmp}/db.sqlite", TUNEGATE_MAX_UPLOAD_BYTES=str(512 * MIB))
        gateway.start()
        try:
            _, _, key = gateway.new_org_key()
            upload(gateway.url, key, *CASES["small"](0)).raise_for_status()  # warm: first-upload imports
            print("| case | file MiB | status | seconds | idle RSS MiB | peak RSS MiB | growth MiB |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            for name in args.cases.split(","):
                body, filename = CASES[name](args.mib)
                with RssSampler(gateway.proc.pid) as sampler:
                    t0 = time.monotonic()
                    r = upload(gateway.url, key, body, filename)
                    seconds = time.monotonic() - t0
                peak = sampler.result
                size = r.json().get("bytes") if r.status_code == 200 else None
                shown = f"{size / MIB:.0f}" if size else (f"{args.mib}" if name != "small" else "1")
                print(
                    f"| {name} | {shown} | {r.status_code} | {seconds:.1f} | {peak.idle_mib:.0f} | "
                    f"{peak.peak_mib:.0f} | {peak.growth_mib:.0f} |",
                    flush=True,
                )
                if r.status_code == 200:  # free the disk for the next case
                    httpx.delete(
                        f"{gateway.url}/v1/files/{r.json()['id']}", headers={"authorization": f"Bearer {key}"}
                    ).raise_for_status()
        finally:
            gateway.stop()
        if args.before:
            in_process(args.before, args.mib, Path(tmp))


if __name__ == "__main__":
    main()
