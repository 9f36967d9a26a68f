#!/usr/bin/env bash
# tunegate vs LLaMA-Factory 0.9.5 on the same LoRA job (bench/peer.py), LLaMA-Factory in its own venv.
#
#   bench/peer.sh [--rounds 2] [--precisions fp32,bf16] [--write-docs]
#
# The venv ($PEER_VENV, default .cache/llamafactory-0.9.5) is built once: torch first, the same CPU build
# scripts/setup installs (so pip never pulls a CUDA torch), then llamafactory's requirements without
# torch/torchvision/torchaudio (text-only: bench/peer_lf.py stands in an empty torchaudio module for its one
# unconditional import), then llamafactory itself with --no-deps. Needs tunegate's .venv (scripts/setup).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${PEER_VENV:-.cache/llamafactory-0.9.5}"
version="${PEER_LLAMAFACTORY_VERSION:-0.9.5}"
python="${PYTHON:-python3}"
quiet=(--quiet --disable-pip-version-check)

if ! "$venv/bin/python" -c "import llamafactory" >/dev/null 2>&1; then
  echo "peer: installing LLaMA-Factory $version into $venv (a few minutes)"
  "$python" -m venv "$venv"
  pip() { "$venv/bin/python" -m pip "$@"; }
  torch="torch==${TUNEGATE_TORCH_VERSION:-2.13.0}"
  pip install "${quiet[@]}" "$torch+cpu" \
    || pip install "${quiet[@]}" ${TUNEGATE_TORCH_INDEX:+--index-url "$TUNEGATE_TORCH_INDEX"} "$torch"
  work="$(mktemp -d)"
  pip download "${quiet[@]}" --no-deps "llamafactory==$version" -d "$work"
  "$venv/bin/python" - "$work"/llamafactory-*.whl > "$work/requirements.txt" <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    for line in whl.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist: ") and "extra ==" not in line:
            req = line.removeprefix("Requires-Dist: ")
            if re.match(r"(torch|torchvision|torchaudio)\b(?![-_])", req) is None:
                print(req)
PY
  pip install "${quiet[@]}" -r "$work/requirements.txt" "$torch"  # the torch pin keeps the CPU build
  pip install "${quiet[@]}" --no-deps "$work"/llamafactory-*.whl
  rm -rf "$work"
fi
# one lock for the whole benchmark: no other heavy run on this shared machine overlaps any of its runs
exec flock "${TUNEGATE_HEAVY_LOCK:-/tmp/tg-heavy.lock}" .venv/bin/python bench/peer.py --lf-python "$venv/bin/python" "$@"
