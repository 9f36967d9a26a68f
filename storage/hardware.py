"""Which device a setting of ``auto | cuda | cpu`` means here, decided without importing torch."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
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
