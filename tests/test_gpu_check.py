"""bench/gpu_check.sh, the one-command CUDA check, proven here by its CPU dry-run (no GPU in CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DATA

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def test_cpu_dry_run_trains_every_variant(tiny_model: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            "bash",
            str(REPO / "bench" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--shapes",
            "tiny",
            "--tokenizer",
            tiny_model,
            "--data",
            str(DATA / "alpaca_zh_demo.json"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = {r["variant"]: r for r in map(json.loads, (tmp_path / "gpu_check.jsonl").read_text().splitlines())}
    assert set(rows) == {"baseline", "tunegate", "tunegate-packed", "tunegate-ckpt-on", "tunegate-ckpt-off"}
    assert all(r["steps"] == 2 and r["tokens"] > 0 and r["tokens_per_s"] > 0 for r in rows.values())
    assert rows["tunegate-ckpt-on"]["checkpointing"] and not rows["tunegate-ckpt-off"]["checkpointing"]
    assert rows["tunegate-packed"]["mean_loss"] == pytest.approx(rows["tunegate"]["mean_loss"], rel=0.2)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| tiny | tunegate-packed |" in table and "failed" not in table


def test_recipe_imports_without_the_gateway_stack() -> None:
    """The GPU machine has torch, transformers, peft, accelerate (and pydantic, carried): nothing else."""
    absent = [
        "trl",
        "litestar",
        "vllm",
        "sqlmodel",
        "sqlalchemy",
        "pydantic_settings",
        "datasets",
        "httpx",
        "alembic",
        "psycopg",
        "jieba",
        "nltk",
        "rouge_score",
        "llama_cpp",
        "openai",
    ]
    code = (
        f"import sys\nfor name in {absent!r}: sys.modules[name] = None\n"
        "import finetune.recipe.run, finetune.recipe.trainer, finetune.recipe.model, finetune.device\n"
        "import finetune.formats, bench.gpu_check, bench.train"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("shape", ["tiny", "qwen2.5-1.5b", "qwen2.5-7b"])
def test_mfu_counts_every_linear_parameter(shape: str) -> None:
    import torch
    from gpu_check import linear_parameters
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = json.loads((REPO / "bench" / "configs" / f"{shape}.json").read_text())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec))
    linear = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())
    assert linear_parameters(spec) == linear
    if shape == "qwen2.5-7b":
        assert 7.0e9 < linear < 7.7e9  # the real Qwen2.5-7B: 7.6 B parameters with its embeddings
