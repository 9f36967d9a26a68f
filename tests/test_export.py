"""Edge export building blocks: merge a LoRA into its base, convert with llama.cpp's own converter, quantize, and
check that llama.cpp computes what transformers computes.

The test model is a random Llama (hidden 256, so K-quants are real) with SmolLM2's tokenizer (tests/edge_support.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.serving_support import TARGETS

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")
PROMPTS = ["What is the capital of France?", "请用一句话介绍你自己。", "List three colours."]
GREEDY = 12  # tokens compared greedily


@pytest.fixture(scope="module")
def model_and_adapter(edge_model: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = Path(edge_model)
    model = LlamaForCausalLM.from_pretrained(base)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    adapter = tmp_path_factory.mktemp("export") / "adapter"
    peft_model.save_pretrained(adapter)
    return base, adapter


def _prompt_ids(model_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=True
    )["input_ids"]


def _hf(model_dir: Path, adapter: Path | None = None, **kwargs: str):  # noqa: ANN202
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model


def _hf_last_logits(model, ids: list[int]):  # noqa: ANN001, ANN202
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


def _hf_greedy(model, ids: list[int], n: int = GREEDY) -> list[int]:  # noqa: ANN001
    import torch

    return model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0][len(ids) :].tolist()


def _llama(gguf: Path, lora: Path | None = None):  # noqa: ANN202
    from llama_cpp import Llama

    # an f32 KV cache: the comparison is about the exported weights, not llama.cpp's f16 cache
    return Llama(
        model_path=str(gguf),
        lora_path=str(lora) if lora else None,
        n_ctx=256,
        n_threads=1,
        logits_all=True,
        verbose=False,
        type_k=0,
        type_v=0,
    )


def _llama_last_logits(llm, ids: list[int]):  # noqa: ANN001, ANN202
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1])


def _llama_greedy(llm, ids: list[int], n: int = GREEDY) -> list[int]:  # noqa: ANN001
    llm.reset()
    out = []
    for token in llm.generate(ids, top_k=1, temp=0.0):
        out.append(token)
        if len(out) == n:
            return out
    return out


def _error(logits, reference) -> float:  # noqa: ANN001
    """The largest logit difference, relative to the largest reference logit (the tolerance unit used here)."""
    import numpy as np

    return float(np.abs(logits - reference).max() / np.abs(reference).max())


def test_merge_then_gguf_f16_and_q8_0_match_transformers(model_and_adapter: tuple[Path, Path], tmp_path: Path) -> None:
    import numpy as np

    from finetune.export.gguf import export_gguf
    from finetune.export.merge import merge

    base, adapter = model_and_adapter
    merged = merge(base, adapter, tmp_path / "merged")
    f16 = export_gguf(merged, tmp_path / "gguf", "f16")
    q8 = export_gguf(merged, tmp_path / "gguf", "q8_0")
    assert f16.stat().st_size > 1.6 * q8.stat().st_size  # 16 vs 8.5 bits per weight, plus the vocabulary
    reference_model, unmerged_model = _hf(merged), _hf(base, adapter)
    llm16, llm8 = _llama(f16), _llama(q8)
    for text in PROMPTS:
        ids = _prompt_ids(merged, text)
        reference = _hf_last_logits(reference_model, ids)
        assert np.abs(reference - _hf_last_logits(unmerged_model, ids)).max() < 1e-5, "merging changed the model"
        # measured here: f16 7-9e-4 (f16 weights, and llama.cpp rounds activations to f16 for f16 matmuls),
        # q8_0 ~1.7e-2 (8-bit weights and activations)
        assert _error(_llama_last_logits(llm16, ids), reference) < 1e-3, text
        assert _error(_llama_last_logits(llm8, ids), reference) < 5e-2, text
        assert _llama_greedy(llm16, ids) == _hf_greedy(reference_model, ids), text


def test_transformers_loads_the_gguf_back(model_and_adapter: tuple[Path, Path], tmp_path: Path) -> None:
    from finetune.export.gguf import export_gguf
    from finetune.export.merge import merge

    base, adapter = model_and_adapter
    merged = merge(base, adapter, tmp_path / "merged")
    f16 = export_gguf(merged, tmp_path / "gguf", "f16")
    loaded = _hf(f16.parent, gguf_file=f16.name)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(f16.parent, gguf_file=f16.name)
    reference_model = _hf(merged)
    for text in PROMPTS:
        ids = _prompt_ids(merged, text)
        assert (
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=True
            )["input_ids"]
            == ids
        )
        assert _error(_hf_last_logits(loaded, ids), _hf_last_logits(reference_model, ids)) < 1e-3, text


def test_q4_k_m_is_real_and_unknown_quant_is_a_400(model_and_adapter: tuple[Path, Path], tmp_path: Path) -> None:
    from finetune.export.gguf import export_gguf
    from storage.errors import InvalidRequest

    base, _ = model_and_adapter
    q4 = export_gguf(base, tmp_path, "q4_k_m")
    f16 = export_gguf(base, tmp_path, "f16")
    assert q4.stat().st_size < 0.45 * f16.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-f16.gguf", "model-q4_k_m.gguf"]  # no leftovers
    with pytest.raises(InvalidRequest) as bad:
        export_gguf(base, tmp_path, "q9_x")
    assert bad.value.code == "unsupported_quantization"


@pytest.mark.parametrize("rslora", [False, True])
def test_gguf_lora_adapter_on_the_base_gguf_equals_the_merged_model(
    model_and_adapter: tuple[Path, Path], tmp_path: Path, rslora: bool
) -> None:
    """What Ollama's FROM base + ADAPTER (and llama.cpp's --lora) compute: the same as the merged weights. An rsLoRA
    adapter (scale alpha/sqrt(r); llama.cpp knows alpha/r only) gets its alpha rewritten on the way."""
    import json

    from finetune.export.gguf import convert, convert_lora
    from finetune.export.merge import merge
    from finetune.export.pipeline import fixed_adapter

    base, adapter = model_and_adapter
    if rslora:
        import shutil

        shutil.copytree(adapter, tmp_path / "rslora")
        config = json.loads((tmp_path / "rslora" / "adapter_config.json").read_text())
        (tmp_path / "rslora" / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
        adapter = tmp_path / "rslora"
    base_gguf = convert(base, tmp_path / "base-f16.gguf")
    lora_gguf = convert_lora(fixed_adapter(adapter, tmp_path / "fixed"), base, tmp_path / "adapter-f16.gguf")
    merged = merge(base, adapter, tmp_path / "merged")
    llm, reference_model, unmerged = _llama(base_gguf, lora_gguf), _hf(merged), _hf(base, adapter)
    for text in PROMPTS:
        ids = _prompt_ids(merged, text)
        reference = _hf_last_logits(reference_model, ids)
        assert _error(_hf_last_logits(unmerged, ids), reference) < 1e-5
        # base and adapter are two f16 paths (measured 0.8-1.2e-3; the merged f16 file stays under 1e-3)
        assert _error(_llama_last_logits(llm, ids), reference) < 2e-3, text
        assert _llama_greedy(llm, ids) == _hf_greedy(reference_model, ids), text
    if rslora:  # without the fix llama.cpp would scale the adapter by alpha/r: a different model
        unfixed = _llama(base_gguf, convert_lora(adapter, base, tmp_path / "unfixed-f16.gguf"))
        ids = _prompt_ids(merged, PROMPTS[0])
        assert _error(_llama_last_logits(unfixed, ids), _hf_last_logits(reference_model, ids)) > 1e-2


def test_dora_merges_exactly(model_and_adapter: tuple[Path, Path], tmp_path: Path) -> None:
    """DoRA has no GGUF adapter form (the API refuses it), but its merged export is exact."""
    import torch
    from peft import LoraConfig, get_peft_model

    from finetune.export.merge import merge

    base, _ = model_and_adapter
    torch.manual_seed(2)
    peft_model = get_peft_model(
        _hf(base), LoraConfig(r=4, target_modules=TARGETS, use_dora=True, init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "dora")
    merged = merge(base, tmp_path / "dora", tmp_path / "merged")
    ids = _prompt_ids(merged, PROMPTS[0])
    reference = _hf_last_logits(_hf(base, tmp_path / "dora"), ids)
    assert _error(_hf_last_logits(_hf(merged), ids), reference) < 1e-5
    assert _error(_hf_last_logits(_hf(base), ids), reference) > 1e-3  # the adapter does change the model
