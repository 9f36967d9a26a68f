"""Chat templates by name, for tokenizers that ship none (or when a job wants another one).

Each template is prefix-stable (rendering the first k messages is a prefix of rendering k+1), which the
assistant-only label masking in ``data`` relies on. Reasoning (``<think>…</think>``) inside assistant content
is kept as text: nothing is stripped from earlier turns.
"""

from __future__ import annotations

_TOOLS_CHATML = (
    "{% if tools %}<|im_start|>system\n{{ (messages[0].content + '\n\n') if messages[0].role == 'system' else '' }}"
    "# Tools\n\nYou may call one or more functions. Available tools:\n<tools>\n"
    "{% for tool in tools %}{{ '\n' }}{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>\n"
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{% endif %}"
)

CHATML = _TOOLS_CHATML + (
    "{% for m in messages %}"
    "{% if m.role == 'system' and loop.first %}"
    "{% elif m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content or '' }}"
    "{% for tc in m.tool_calls or [] %}{{ '\n' if (m.content or loop.index0) else '' }}<tool_call>\n"
    '{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments if tc.function.arguments is string '
    "else tc.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}<|end_header_id|>\n\n"
    "{{ m.content or '' }}{% for tc in m.tool_calls or [] %}"
    '{"name": "{{ tc.function.name }}", "parameters": {{ tc.function.arguments if tc.function.arguments is string '
    "else tc.function.arguments | tojson }}}{% endfor %}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# DeepSeek-R1-Distill: <｜User｜>/<｜Assistant｜> markers; reasoning kept in every turn (prefix-stable).
DEEPSEEK_R1 = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}"
    "{% elif m.role == 'user' or m.role == 'tool' %}<｜User｜>{{ m.content }}"
    "{% elif m.role == 'assistant' %}<｜Assistant｜>{{ m.content or '' }}<｜end▁of▁sentence｜>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<｜Assistant｜>{% endif %}"
)

NAMED = {"chatml": CHATML, "qwen": CHATML, "llama3": LLAMA3, "deepseek-r1": DEEPSEEK_R1}


def resolve(name_or_template: str | None, tokenizer_template: str | None) -> str:
    """The template to train with: a name from ``NAMED``, a literal Jinja template, or the tokenizer's own."""
    if name_or_template:
        return NAMED.get(name_or_template.lower(), name_or_template)
    if tokenizer_template:
        return tokenizer_template
    raise ValueError(
        "The base model's tokenizer has no chat template; set base_models.<id>.chat_template to one of "
        + ", ".join(NAMED)
    )
