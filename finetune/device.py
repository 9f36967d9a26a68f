"""Which device jobs train on, decided without importing torch (the gateway never loads it)."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from typing import Literal

Device = Literal["cuda", "cpu"]


def training_device(setting: str) -> Device:
    if setting in ("cuda", "cpu"):
        return setting  # type: ignore[return-value]
    return "cuda" if _nvidia_gpu_present() else "cpu"


@cache
def _nvidia_gpu_present() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "GPU" in out


def native_bf16(device: Device) -> bool:
    """Whether bf16 math is native here (imports torch: for the job's child process only)."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
