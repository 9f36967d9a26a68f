"""What travels with an exported model: an Ollama ``Modelfile`` and a README with the commands that run it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from finetune.export import modelfile as mf


@dataclass
class Bundle:
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def ollama_name(model: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", model.lower()).strip("-.")[:64] or "model"


def write(
    out: Path,
    model_dir: Path,
    gguf_name: str,
    *,
    num_ctx: int,
    system: str | None,
    model: str,
    adapter_name: str | None = None,
) -> Bundle:
    """``Modelfile`` (when the chat template is one tunegate can express for Ollama) and ``README.md``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bundle = Bundle()
    try:
        fmt = mf.identify(mf.hf_renderer(tokenizer), mf.added_bos(tokenizer))
    except mf.UnknownTemplate as exc:
        fmt = None
        bundle.warnings.append(f"No Modelfile: {exc}")
    if fmt is not None:
        path = out / "Modelfile"
        path.write_text(
            mf.modelfile(
                gguf_name, fmt, num_ctx=num_ctx, system=system, adapter_name=adapter_name, eos=tokenizer.eos_token
            ),
            encoding="utf-8",
        )
        bundle.files.append(path)
    readme = out / "README.md"
    readme.write_text(_gguf_readme(model, gguf_name, adapter_name, num_ctx, fmt is not None), encoding="utf-8")
    bundle.files.append(readme)
    return bundle


def _gguf_readme(model: str, gguf_name: str, adapter_name: str | None, num_ctx: int, has_modelfile: bool) -> str:
    name = ollama_name(model)
    lora = f" --lora {adapter_name}" if adapter_name else ""
    files = [f"- `{gguf_name}`: the {'base ' if adapter_name else ''}model (GGUF, chat template embedded)"]
    if adapter_name:
        files.append(f"- `{adapter_name}`: the fine-tuned LoRA adapter (GGUF), applied on top of the base")
    if has_modelfile:
        files.append("- `Modelfile`: for Ollama (TEMPLATE, stop tokens, num_ctx and SYSTEM as in training)")
    ollama = (
        f"""## Ollama

```sh
ollama create {name} -f Modelfile
ollama run {name}
```
"""
        if has_modelfile
        else "## Ollama\n\nNo Modelfile: the chat template is not one tunegate can write for Ollama. "
        "Use llama.cpp below, which reads the template embedded in the GGUF.\n"
    )
    lora_py = f', lora_path="{adapter_name}"' if adapter_name else ""
    return f"""# {model}

Exported by tunegate. Put these files in one folder:

{chr(10).join(files)}

{ollama}
## llama.cpp

```sh
llama-server -m {gguf_name}{lora} --jinja -c {num_ctx} --port 8080   # OpenAI-compatible: http://localhost:8080/v1
llama-cli -m {gguf_name}{lora} --jinja -c {num_ctx} -cnv
```

## Python (llama-cpp-python)

```python
from llama_cpp import Llama
llm = Llama(model_path="{gguf_name}"{lora_py}, n_ctx={num_ctx})
print(llm.create_chat_completion(messages=[{{"role": "user", "content": "Hello"}}])["choices"][0]["message"]["content"])
```

`num_ctx` {num_ctx} is the context the model was trained on (the job's `cutoff_len`).
"""


def write_safetensors_readme(out: Path, folder: str, *, model: str) -> list[Path]:
    readme = out / "README.md"
    readme.write_text(
        f"""# {model}

Exported by tunegate: the LoRA adapter merged into its base model, as a Hugging Face folder (safetensors, tokenizer,
chat template). Unpack it with `tar xf {folder}.tar`, then:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{folder}")
tokenizer = AutoTokenizer.from_pretrained("{folder}")
```

or serve it: `python -m vllm.entrypoints.openai.api_server --model {folder}`.
""",
        encoding="utf-8",
    )
    return [readme]
