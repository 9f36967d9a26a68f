"""HF directory → GGUF with llama.cpp's own ``convert_hf_to_gguf.py`` (and its gguf-py, same llama.cpp commit as
the installed llama-cpp-python, vendored by ``scripts/setup``), then ``llama_model_quantize`` for other types."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from storage.errors import InvalidRequest

# what convert_hf_to_gguf writes directly, and what llama_model_quantize makes from an f16 file
CONVERTER_TYPES = ("f16", "bf16", "f32", "q8_0")
FLOAT_TYPES = ("f16", "bf16", "f32")  # exported straight from the converter; the rest via an f16 file
QUANT_TYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}
SUPPORTED = ("f16", "bf16", "f32", *QUANT_TYPES)


def llama_cpp_dir() -> Path:
    """The vendored converters: ``TUNEGATE_LLAMA_CPP_DIR`` or ``<venv>/share/tunegate/llama.cpp``."""
    path = Path(os.environ.get("TUNEGATE_LLAMA_CPP_DIR") or Path(sys.prefix) / "share" / "tunegate" / "llama.cpp")
    if not (path / "convert_hf_to_gguf.py").is_file():
        raise RuntimeError(
            f"llama.cpp converters not found in {path}: run scripts/setup full (it vendors them "
            "from the llama-cpp-python sdist)"
        )
    return path


def _run(script: str, args: list[str]) -> None:
    vendor = llama_cpp_dir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(vendor / "gguf-py"), str(vendor)]))
    done = subprocess.run(
        [sys.executable, str(vendor / script), *args], cwd=vendor, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"{script} failed: {tail}")


def convert(model_dir: str | Path, out_file: str | Path, outtype: str = "f16") -> Path:
    if outtype not in CONVERTER_TYPES:
        raise InvalidRequest(f"The converter writes {', '.join(CONVERTER_TYPES)}, not {outtype!r}.", param="quant")
    _run("convert_hf_to_gguf.py", [str(model_dir), "--outfile", str(out_file), "--outtype", outtype])
    return Path(out_file)


def convert_lora(adapter_dir: str | Path, base_dir: str | Path, out_file: str | Path, outtype: str = "f16") -> Path:
    """A GGUF LoRA adapter (for ``FROM base`` + ``ADAPTER`` in Ollama, ``--lora`` in llama.cpp)."""
    _run(
        "convert_lora_to_gguf.py",
        [str(adapter_dir), "--base", str(base_dir), "--outfile", str(out_file), "--outtype", outtype],
    )
    return Path(out_file)


def quantize(src: str | Path, dst: str | Path, quant: str, threads: int = 0) -> Path:
    if quant not in QUANT_TYPES:
        raise InvalidRequest(
            f"Unsupported quantization {quant!r}; one of {', '.join(QUANT_TYPES)}.",
            param="quant",
            code="unsupported_quantization",
        )
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant])
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({quant}) failed with {rc}")
    return Path(dst)


def export_gguf(
    model_dir: str | Path,
    out_dir: str | Path,
    quant: str = "f16",
    name: str = "model",
    *,
    threads: int = 0,
    on_quantize: Callable[[], None] | None = None,
) -> Path:
    """``<out_dir>/<name>-<quant>.gguf``: converted at f16 (or bf16/f32), quantized from f16 otherwise."""
    if quant not in SUPPORTED:
        raise InvalidRequest(
            f"Unsupported quantization {quant!r}; one of {', '.join(SUPPORTED)}.",
            param="quant",
            code="unsupported_quantization",
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quant in FLOAT_TYPES:
        return convert(model_dir, out / f"{name}-{quant}.gguf", quant)
    f16 = convert(model_dir, out / f".{name}-f16.for-{quant}.gguf", "f16")  # an intermediate, removed below
    try:
        if on_quantize:
            on_quantize()
        return quantize(f16, out / f"{name}-{quant}.gguf", quant, threads)
    finally:
        f16.unlink(missing_ok=True)
