#!/usr/bin/env bash
# The CUDA check of the fine-tuning recipe in one command (bench/gpu_check.py says what it runs and reports).
#
#   bench/gpu_check.sh --prepare        # here, with network: fill .cache/gpu_check (≈ 10 MiB) for the GPU machine
#   bench/gpu_check.sh [--write-docs]   # on the GPU machine (carry .cache/gpu_check): 1.5B + 7B shapes
#   bench/gpu_check.sh --device cpu --steps 2 --shapes tiny --tokenizer DIR   # the CPU dry-run
#
# The GPU machine has torch, transformers, peft and accelerate but no network: .cache/gpu_check carries the
# tokenizer (SmolLM2's, no hub), alpaca_zh_demo.json and wheels of what the recipe imports beyond those
# (pydantic, for finetune/hyperparams.py; pydantic-core is compiled, so one wheel per CPython 3.10–3.13).
set -euo pipefail
cd "$(dirname "$0")/.."
carried=.cache/gpu_check
python="${PYTHON:-}"
[[ -n $python ]] || { [[ -x .venv/bin/python ]] && python=.venv/bin/python || python=python3; }

if [[ ${1:-} == --prepare ]]; then
  mkdir -p "$carried/wheels"
  for py in 3.10 3.11 3.12 3.13; do
    "$python" -m pip download --quiet --disable-pip-version-check --only-binary :all: --python-version "$py" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$carried/wheels" "pydantic>=2.13"
  done
  cp -f ../shared/data/alpaca_zh_demo.json "$carried/"
  "$python" - "$carried/tokenizer" <<'PY'
import sys
sys.path.insert(0, "bench"); sys.path.insert(0, ".")
from transformers import AutoTokenizer
from train import default_model  # SmolLM2-135M-Instruct materialized from its wheel
AutoTokenizer.from_pretrained(default_model()).save_pretrained(sys.argv[1])
PY
  du -sh "$carried"
  exit 0
fi

if ! "$python" -c "import pydantic" >/dev/null 2>&1; then
  site="$(mktemp -d)"
  "$python" -m pip install --quiet --no-index --find-links "$carried/wheels" --target "$site" pydantic
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$python" bench/gpu_check.py "$@"
