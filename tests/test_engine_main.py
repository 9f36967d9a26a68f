"""The local engine's command line: the dtype ``auto`` means on a CPU engine, and the CPU check behind it."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.engine_main import engine_command, engine_dtype
from storage.hardware import cpu_bf16_native
from storage.settings import BaseModelSpec, ServingSettings
from tests.finetune_support import TINY

X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma {extra}\nbugs\t\t: spectre_v1\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd {extra}\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    ("text", "native"),
    [
        (X86.format(extra=""), False),  # AVX2 only (AMD Zen 2/3, older Intel): bf16 is emulated
        (X86.format(extra="avx512f avx512_bf16"), True),  # Zen 4+, Cooper Lake
        (X86.format(extra="avx512f amx_bf16 amx_tile"), True),  # Sapphire Rapids
        (ARM.format(extra=""), False),
        (ARM.format(extra="bf16 i8mm"), True),
        ("processor\t: 0\n", None),  # no flags line: unknown
    ],
)
def test_cpu_bf16_native_reads_the_flags(tmp_path: Path, text: str, native: bool | None) -> None:
    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_bf16_native(str(tmp_path / "cpuinfo")) is native


def test_cpu_bf16_native_is_none_without_cpuinfo(tmp_path: Path) -> None:
    assert cpu_bf16_native(str(tmp_path / "absent")) is None


def test_this_cpu_agrees_with_torch() -> None:
    """The flags read without torch give torch's own answer (the checks finetune.device.native_bf16 uses)."""
    if cpu_bf16_native() is None:
        pytest.skip("no /proc/cpuinfo flags on this OS")
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    assert cpu_bf16_native() == any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def test_auto_is_float32_on_a_cpu_without_native_bf16() -> None:
    cpu_auto = "auto" if cpu_bf16_native() is not False else "float32"
    assert engine_dtype("auto", on_gpu=False) == cpu_auto
    assert engine_dtype("auto", on_gpu=True) == "auto"  # vLLM's choice on a GPU: the model's dtype
    for chosen in ("float32", "bfloat16", "float16"):  # a dtype set explicitly is passed on as it is
        assert engine_dtype(chosen, on_gpu=False) == chosen


def test_engine_command_carries_the_dtype_and_a_models_own_choice_comes_last(tiny_model: str) -> None:
    spec = BaseModelSpec(source=tiny_model, engine_args=["--dtype", "bfloat16"])
    argv = engine_command(TINY, tiny_model, 8000, spec, ServingSettings(dtype="auto"), False)
    first = argv.index("--dtype")
    assert argv[first + 1] == engine_dtype("auto", on_gpu=False)
    assert argv[-2:] == ["--dtype", "bfloat16"]  # argparse keeps the last: the model's own setting wins
