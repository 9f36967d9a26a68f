"""An Ollama ``Modelfile`` whose TEMPLATE renders exactly the prompt string the model was trained on.

A Jinja chat template cannot be translated to Go's ``text/template`` in general, so the trained template is
*identified* instead: it is rendered for probe conversations (system/user/assistant, multi-turn, with and without a
system message) and compared with each known turn format below; the one that renders every probe identically is
written out as a Go template. No match → no Modelfile (the export says why) rather than one that "talks nonsense".

Ollama's side, as its ``template.Execute`` does it: every system message is joined into ``.System``, consecutive
messages of one role are merged with a blank line, and ``.Messages`` keeps the system entries (skipped here). The
tokenizer adds BOS by itself (``add_bos_token`` in the GGUF), so the TEMPLATE never holds a literal BOS — a second BOS
is a known way to make a GGUF "talk nonsense".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

Message = dict[str, str]


@dataclass(frozen=True)
class TurnFormat:
    """A chat format as text around each turn; ``default_system`` is rendered when a conversation has none."""

    name: str
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str  # what opens the assistant's turn at inference
    stop: tuple[str, ...]
    default_system: str = ""

    def render(self, messages: list[Message]) -> str:
        """What the Go template renders for ``messages`` (ending with a user turn), Ollama's collation applied."""
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or self.default_system
        out = [f"{self.system[0]}{system}{self.system[1]}"] if system else []
        for m in collate(messages):
            if m["role"] in ("user", "assistant"):
                before, after = getattr(self, m["role"])
                out.append(f"{before}{m['content']}{after}")
        out.append(self.generation)
        return "".join(out)

    def go_template(self) -> str:
        """One line, no ``{{-`` trimming (it would eat the newlines that are part of the format)."""
        lit = _go_literal
        default = (
            f"{{{{ else }}}}{lit(self.system[0] + self.default_system + self.system[1])}" if self.default_system else ""
        )
        return (
            f"{{{{ if .System }}}}{lit(self.system[0])}{{{{ .System }}}}{lit(self.system[1])}{default}{{{{ end }}}}"
            "{{ range .Messages }}"
            f'{{{{ if eq .Role "user" }}}}{lit(self.user[0])}{{{{ .Content }}}}{lit(self.user[1])}'
            f'{{{{ else if eq .Role "assistant" }}}}{lit(self.assistant[0])}{{{{ .Content }}}}{lit(self.assistant[1])}'
            "{{ end }}{{ end }}"
            f"{lit(self.generation)}"
        )


def _go_literal(text: str) -> str:
    """Text for a Go template: literal, except that ``{{`` would open an action."""
    return text.replace("{{", '{{ "{{" }}')


def collate(messages: list[Message]) -> list[Message]:
    merged: list[Message] = []
    for m in messages:
        if merged and merged[-1]["role"] == m["role"] and m["role"] != "tool":
            merged[-1] = {**merged[-1], "content": merged[-1]["content"] + "\n\n" + m["content"]}
        else:
            merged.append(dict(m))
    return merged


CHATML = TurnFormat(
    "chatml",
    ("<|im_start|>system\n", "<|im_end|>\n"),
    ("<|im_start|>user\n", "<|im_end|>\n"),
    ("<|im_start|>assistant\n", "<|im_end|>\n"),
    "<|im_start|>assistant\n",
    ("<|im_end|>", "<|im_start|>"),
)
LLAMA3 = TurnFormat(
    "llama3",
    ("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
    ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ("<|eot_id|>", "<|start_header_id|>"),
)
_DEEPSEEK_STOPS = ("<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>")
# tunegate's prefix-stable deepseek-r1 template (finetune/recipe/templates.py)
DEEPSEEK_R1 = TurnFormat(
    "deepseek-r1",
    ("", ""),
    ("<｜User｜>", ""),
    ("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
    "<｜Assistant｜>",
    _DEEPSEEK_STOPS,
)
# DeepSeek-R1-Distill's own tokenizer template: the reply opens with "<think>\n". (It also drops the reasoning of
# earlier assistant turns; Ollama keeps reasoning apart from `content` in its messages, so .Content matches.)
DEEPSEEK_R1_THINK = TurnFormat(
    "deepseek-r1-distill",
    ("", ""),
    ("<｜User｜>", ""),
    ("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
    "<｜Assistant｜><think>\n",
    _DEEPSEEK_STOPS,
)
FORMATS = (CHATML, LLAMA3, DEEPSEEK_R1, DEEPSEEK_R1_THINK)

PROBE_SYSTEM = "You are a careful assistant."
PROBES: list[list[Message]] = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": PROBE_SYSTEM}, {"role": "user", "content": "你好"}],
    [
        {"role": "system", "content": PROBE_SYSTEM},
        {"role": "user", "content": "Q1?"},
        {"role": "assistant", "content": "A1."},
        {"role": "user", "content": "Q2, with\ntwo lines?"},
    ],
    [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}, {"role": "user", "content": "3"}],
]


class UnknownTemplate(ValueError):
    pass


def identify(render: Callable[[list[Message]], str], bos: str = "") -> TurnFormat:
    """The format that renders every probe like ``render`` (the trained template, with BOS stripped).

    A template that adds a default system prompt when there is none (Qwen2.5's) matches with that prompt as
    ``default_system``."""
    rendered = [_strip(render(p), bos) for p in PROBES]
    for fmt in FORMATS:
        candidates = [fmt]
        bare = rendered[0]
        start, end = fmt.system
        if start and bare.startswith(start) and end in bare[len(start) :]:
            implied = bare[len(start) : bare.index(end, len(start))]
            candidates.append(replace(fmt, default_system=implied))
        elif not start and not end and fmt.user[0] in bare and bare.index(fmt.user[0]) > 0:
            candidates.append(replace(fmt, default_system=bare[: bare.index(fmt.user[0])]))
        for candidate in candidates:
            if all(candidate.render(p) == r for p, r in zip(PROBES, rendered, strict=True)):
                return candidate
    raise UnknownTemplate(
        "The model's chat template is not one tunegate can write as an Ollama TEMPLATE "
        f"({', '.join(f.name for f in FORMATS)}); use the GGUF with llama-server --jinja, which "
        "reads the template embedded in the file."
    )


def _strip(text: str, bos: str) -> str:
    return text[len(bos) :] if bos and text.startswith(bos) else text


def added_bos(tokenizer: Any) -> str:
    """The BOS text the tokenizer (and so llama.cpp, whose GGUF takes ``add_bos_token`` from it) puts before every
    prompt by itself — what the TEMPLATE must leave out; "" when it adds none (ChatML models: there ``bos_token``
    may even be ``<|im_start|>``, which the template must keep)."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return ""
    return tokenizer.bos_token if tokenizer("a")["input_ids"][:1] == [bos_id] else ""


def hf_renderer(tokenizer: Any) -> Callable[[list[Message]], str]:
    def render(messages: list[Message]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return render


def modelfile(
    gguf_name: str,
    fmt: TurnFormat,
    *,
    num_ctx: int,
    system: str | None = None,
    adapter_name: str | None = None,
    eos: str | None = None,
) -> str:
    """The Modelfile text: FROM (+ ADAPTER), TEMPLATE, stop PARAMETERs, num_ctx, SYSTEM."""
    stops = list(dict.fromkeys([*fmt.stop, *([eos] if eos else [])]))
    lines = [f"FROM ./{gguf_name}"]
    if adapter_name:
        lines.append(f"ADAPTER ./{adapter_name}")
    lines.append(f'TEMPLATE """{fmt.go_template()}"""')
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    if system:
        if '"""' in system:
            raise ValueError('A Modelfile SYSTEM prompt cannot contain """ (Ollama has no escape for it).')
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
