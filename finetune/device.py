"""Which device jobs train on, decided without importing torch (the gateway never loads it)."""

from __future__ import annotations

from storage.hardware import Device, resolve_device

__all__ = ["Device", "native_bf16", "training_device"]


def training_device(setting: str) -> Device:
    return resolve_device(setting)


def native_bf16(device: Device) -> bool:
    """Whether bf16 math is native here (imports torch: for the job's child process only)."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
