"""One export, as files in a folder: merge → convert/quantize (llama.cpp's tools) → Modelfile + README.

Pure of the database: the export child drives it for ``/v1/exports``; ``bench/export.py`` drives it directly.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finetune.export import bundle

Step = Callable[[float, str], None]


@dataclass(frozen=True)
class Request:
    model: str  # the id, for names and the README
    format: str  # gguf | gguf_adapter | safetensors
    quant: str | None
    base_id: str
    base_dir: Path
    adapter_dir: Path | None
    chat_template: str | None = None  # the base model's configured template (name or Jinja), as in training
    system: str | None = None
    num_ctx: int = 4096
    threads: int = 0


def slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-.") or "model"


def run(req: Request, work: Path, step: Step = lambda p, s: None) -> bundle.Bundle:
    """Write the outputs into ``work/out`` (scratch in ``work``); the returned bundle lists them in order."""
    from finetune.export import gguf
    from finetune.export.merge import merge

    out = work / "out"
    out.mkdir(parents=True)
    name = slug(req.model)
    if req.format == "gguf_adapter":
        if req.adapter_dir is None:
            raise ValueError("a GGUF adapter export needs an adapter")
        step(0.05, f"converting the base model to GGUF {req.quant}")
        prepared = merge(req.base_dir, None, work / "base", chat_template=req.chat_template)
        base_gguf = gguf.export_gguf(prepared, out, req.quant or "f16", slug(req.base_id), threads=req.threads)
        step(0.7, "converting the LoRA adapter to GGUF")
        lora = gguf.convert_lora(
            fixed_adapter(req.adapter_dir, work / "adapter"), prepared, out / f"{name}-lora-f16.gguf"
        )
        step(0.9, "writing the Modelfile")
        extras = bundle.write(
            out,
            prepared,
            base_gguf.name,
            adapter_name=lora.name,
            num_ctx=req.num_ctx,
            system=req.system,
            model=req.model,
        )
        return bundle.Bundle([base_gguf, lora, *extras.files], extras.warnings)
    step(0.05, "merging the adapter into the base model" if req.adapter_dir else "loading the model")
    merged = merge(req.base_dir, req.adapter_dir, work / "merged", chat_template=req.chat_template)
    if req.format == "safetensors":
        step(0.6, "packing the merged model")
        tar = out / f"{name}-merged.tar"
        with tarfile.open(tar, "w") as archive:
            archive.add(merged, arcname=f"{name}-merged")
        return bundle.Bundle([tar, *bundle.write_safetensors_readme(out, f"{name}-merged", model=req.model)])
    quant = req.quant or "f16"
    step(0.35, f"converting to GGUF {quant if quant in gguf.FLOAT_TYPES else 'f16'}")
    model_gguf = gguf.export_gguf(
        merged, out, quant, name, threads=req.threads, on_quantize=lambda: step(0.7, f"quantizing to {quant}")
    )
    step(0.9, "writing the Modelfile")
    extras = bundle.write(out, merged, model_gguf.name, num_ctx=req.num_ctx, system=req.system, model=req.model)
    return bundle.Bundle([model_gguf, *extras.files], extras.warnings)


def fixed_adapter(adapter: Path, scratch: Path) -> Path:
    """rsLoRA scales by alpha/sqrt(r), llama.cpp by alpha/r: an rsLoRA adapter gets alpha·sqrt(r) written instead."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    if not config.get("use_rslora"):
        return adapter
    shutil.copytree(adapter, scratch)
    config["lora_alpha"] = config["lora_alpha"] * math.sqrt(config["r"])  # alpha'/r == alpha/sqrt(r)
    config["use_rslora"] = False
    (scratch / "adapter_config.json").write_text(json.dumps(config))
    return scratch
