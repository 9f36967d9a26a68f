"""Which device a setting of ``auto | cuda | cpu`` means here, decided without importing torch."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Literal

Device = Literal["cuda", "cpu"]


def resolve_device(setting: str) -> Device:
    if setting == "cuda":
        return "cuda"
    if setting == "cpu":
        return "cpu"
    return "cuda" if nvidia_gpu_present() else "cpu"


@cache
def nvidia_gpu_present() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "GPU" in out


# /proc/cpuinfo flags of native bf16 math: x86 AVX512-BF16 or AMX, Arm's BF16 extension. torch checks the same
# (torch.cpu._is_avx512_bf16_supported, _is_amx_tile_supported) but would cost the caller an import of torch.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@cache
def cpu_bf16_native(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU does bf16 math natively; None where its flags cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            return not BF16_FLAGS.isdisjoint(value.split())
    return None
