"""Which device jobs train on, decided without importing torch (the gateway never loads it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from finetune.hyperparams import Footprint
from storage.hardware import Device, resolve_device

__all__ = ["Device", "model_footprint", "native_bf16", "training_device"]


def training_device(setting: str) -> Device:
    return resolve_device(setting)


def native_bf16(device: Device) -> bool:
    """Whether bf16 math is native here (imports torch: for the job's child process only)."""
    import torch

    if device == "cuda":  # emulated bf16 (pre-Ampere GPUs, which torch reports as supported by default) is slow
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def model_footprint(device: Device, model_dir: str) -> Footprint | None:
    """The shape and size of a local HF model and the memory free for it (None for a hub id: nothing to read)."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    hidden = int(config["hidden_size"])
    return Footprint(
        layers=int(config["num_hidden_layers"]),
        hidden=hidden,
        intermediate=int(config.get("intermediate_size") or 4 * hidden),
        parameters=parameter_count(Path(model_dir)),
        free_bytes=free_memory(device),
    )


def free_memory(device: Device) -> int:
    """Free CUDA memory of the current device, or the host's MemAvailable (bytes)."""
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parameter_count(model_dir: Path) -> int:
    """Parameters in the model's safetensors files (their headers only: nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total
