"""The one allow-list for request bodies sent to an engine: chat, completions, eval runs and job-end generation.

A caller's body is never forwarded as sent. Each field is either

- **forwarded**: OpenAI's request schema (``CreateChatCompletionRequest`` / ``CreateCompletionRequest``) and the
  vLLM sampling extras worth keeping (``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``, ``min_tokens``,
  ``stop_token_ids``, ``skip_special_tokens``, ``return_token_ids``, ``structured_outputs`` and the older
  ``guided_json|regex|choice|grammar`` spelling of it), each checked for its type, shape and the caps in
  ``settings.requests``, and copied (nested objects rebuilt from their own known keys);
- **accepted and not forwarded**: OpenAI fields an engine has no use for (``user``, ``metadata``, ``store``, …);
- **refused**: everything else — engine-internal fields (``request_id``, ``priority``, ``kv_transfer_params``,
  ``cache_salt``, ``vllm_xargs``, ``lora_request``, ``chat_template``, …) and any key nobody listed — with a 400
  ``unknown_parameter`` naming it, as are OpenAI features no engine here implements (``unsupported_parameter``).

What tunegate decides is set last, over the checked fields: ``model`` (the engine-side adapter or base name),
``messages`` / ``prompt`` (the checked copies), ``stream``, ``stream_options`` and the engine ``request_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from storage.errors import InvalidRequest
from storage.settings import RequestLimits

Endpoint = Literal["chat.completions", "completions"]
Check = Callable[[Any, str, RequestLimits], Any]


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(lo: float, hi: float) -> Check:
    def check(value: Any, param: str, _: RequestLimits) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
            raise _bad(f"'{param}' must be a number between {lo:g} and {hi:g}.", param)
        return value

    return check


def _integer(lo: int, cap: Callable[[RequestLimits], int] | None = None, hi: int = 2**63 - 1) -> Check:
    def check(value: Any, param: str, limits: RequestLimits) -> int:
        if not _is_int(value) or not lo <= value <= hi:
            bounds = f"between {lo} and {hi}" if hi < 2**63 - 1 else f"of at least {lo}"
            raise _bad(f"'{param}' must be an integer {bounds}.", param)
        if cap is not None and value > cap(limits):
            raise _bad(
                f"'{param}' is {value}, above this server's limit of {cap(limits)}.", param, "integer_above_max_value"
            )
        return value

    return check


def _boolean(value: Any, param: str, _: RequestLimits) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"'{param}' must be a boolean.", param, "invalid_type")
    return value


def _string(value: Any, param: str, _: RequestLimits) -> str:
    if not isinstance(value, str):
        raise _bad(f"'{param}' must be a string.", param, "invalid_type")
    return value


def _choice(*allowed: str) -> Check:
    def check(value: Any, param: str, _: RequestLimits) -> str:
        if value not in allowed:
            raise _bad(f"'{param}' must be one of {', '.join(allowed)}.", param)
        return value

    return check


def _object(value: Any, param: str, known: dict[str, Check], limits: RequestLimits) -> dict[str, Any]:
    """``value`` rebuilt from its ``known`` keys (each checked); an unknown key is a 400 naming it."""
    if not isinstance(value, dict):
        raise _bad(f"'{param}' must be an object.", param, "invalid_type")
    out = {}
    for key, item in value.items():
        if key not in known:
            raise _bad(f"Unknown parameter: '{param}.{key}'.", f"{param}.{key}", "unknown_parameter")
        if item is not None:
            out[key] = known[key](item, f"{param}.{key}", limits)
    return out


def _shape(**known: Check) -> Check:
    return lambda value, param, limits: _object(value, param, known, limits)


def _any(value: Any, param: str, _: RequestLimits) -> Any:
    return value  # JSON of any shape the engine reads as data (a JSON schema); its depth is bounded at the edge


def _list(item: Check, cap: Callable[[RequestLimits], int], min_items: int = 0) -> Check:
    def check(value: Any, param: str, limits: RequestLimits) -> list[Any]:
        if not isinstance(value, list) or len(value) < min_items:
            raise _bad(
                f"'{param}' must be an array" + (f" of at least {min_items} item(s)." if min_items else "."),
                param,
                "invalid_type",
            )
        if len(value) > cap(limits):
            raise _bad(
                f"'{param}' has {len(value)} items, above this server's limit of {cap(limits)}.",
                param,
                "array_above_max_length",
            )
        return [item(v, f"{param}[{i}]", limits) for i, v in enumerate(value)]

    return check


_UNBOUNDED = 2**31


def _unbounded(_: RequestLimits) -> int:
    return _UNBOUNDED


def _stop(value: Any, param: str, limits: RequestLimits) -> str | list[str]:
    listed = _list(_string, lambda lim: lim.max_stop)([value] if isinstance(value, str) else value, param, limits)
    return value if isinstance(value, str) else listed


def _logit_bias(value: Any, param: str, limits: RequestLimits) -> dict[str, float]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.isdigit() for k in value):
        raise _bad(f"'{param}' must map token ids to numbers.", param, "invalid_type")
    return {k: _number(-100, 100)(v, f"{param}.{k}", limits) for k, v in value.items()}


_function = _shape(name=_string, description=_string, parameters=_any, strict=_boolean)
_tool = _shape(type=_choice("function"), function=_function)
_json_schema = _shape(name=_string, description=_string, schema=_any, strict=_boolean)


def _response_format(value: Any, param: str, limits: RequestLimits) -> dict[str, Any]:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("text", "json_object"):
        return _object(value, param, {"type": _string}, limits)
    if kind == "json_schema":
        return _object(value, param, {"type": _string, "json_schema": _json_schema}, limits)
    raise _bad(f"'{param}.type' must be text, json_object or json_schema.", f"{param}.type")


def _tool_choice(value: Any, param: str, limits: RequestLimits) -> str | dict[str, Any]:
    if isinstance(value, str):
        return _choice("none", "auto", "required")(value, param, limits)
    return _object(value, param, {"type": _choice("function"), "function": _shape(name=_string)}, limits)


_structured = _shape(
    json=_any,
    regex=_string,
    choice=_list(_string, _unbounded),
    grammar=_string,
    json_object=_boolean,
    disable_any_whitespace=_boolean,
    disable_additional_properties=_boolean,
    whitespace_pattern=_string,
)
GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}

# --- messages and prompts ------------------------------------------------------------------------------------------
_PARTS: dict[str, dict[str, Check]] = {
    "text": {"type": _string, "text": _string},
    "image_url": {"type": _string, "image_url": _shape(url=_string, detail=_choice("auto", "low", "high"))},
    "input_audio": {"type": _string, "input_audio": _shape(data=_string, format=_string)},
    "file": {"type": _string, "file": _shape(file_data=_string, file_id=_string, filename=_string)},
    "refusal": {"type": _string, "refusal": _string},
}


def _part(value: Any, param: str, limits: RequestLimits) -> dict[str, Any]:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in _PARTS:
        raise _bad(f"'{param}.type' must be one of {', '.join(_PARTS)}.", f"{param}.type")
    return _object(value, param, _PARTS[kind], limits)


def _content(value: Any, param: str, limits: RequestLimits) -> str | list[dict[str, Any]]:
    if isinstance(value, str):
        return value
    return _list(_part, _unbounded)(value, param, limits)


_tool_call = _shape(id=_string, type=_choice("function"), function=_shape(name=_string, arguments=_string))
_MESSAGE: dict[str, Check] = {
    "role": _choice("system", "developer", "user", "assistant", "tool"),
    "content": _content,
    "name": _string,
    "tool_calls": _list(_tool_call, _unbounded),
    "tool_call_id": _string,
    "refusal": _string,
    "reasoning_content": _string,
}


def _message(value: Any, param: str, limits: RequestLimits) -> dict[str, Any]:
    message = _object(value, param, _MESSAGE, limits)
    if "role" not in message:
        raise _bad(f"'{param}' must be an object with a 'role'.", param)
    return message


_messages = _list(_message, _unbounded, min_items=1)


def _prompt(value: Any, param: str, limits: RequestLimits) -> str | list[Any]:
    """A string, strings, token ids, or lists of token ids (the spec's four shapes)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value) or all(_is_int(v) for v in value):
            return value
        if all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value):
            return value
    raise _bad(
        f"'{param}' must be a string, an array of strings, an array of token ids or an array of arrays of token ids.",
        param,
        "invalid_type",
    )


# --- the allow-lists ------------------------------------------------------------------------------------------------
def _n(lim: RequestLimits) -> int:
    return lim.max_n


def _tokens(lim: RequestLimits) -> int:
    return lim.max_tokens


SAMPLING: dict[str, Check] = {  # forwarded on both endpoints
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "n": _integer(1, _n),
    "max_tokens": _integer(0, _tokens),
    "stop": _stop,
    "seed": _integer(-(2**63), None),
    "frequency_penalty": _number(-2, 2),
    "presence_penalty": _number(-2, 2),
    "logit_bias": _logit_bias,
    # vLLM's sampling extras
    "top_k": _integer(-1, None),
    "min_p": _number(0, 1),
    "repetition_penalty": _number(0.01, 10),
    "ignore_eos": _boolean,
    "min_tokens": _integer(0, _tokens),
    "stop_token_ids": _list(_integer(0, None), lambda lim: 16 * lim.max_stop),
    "skip_special_tokens": _boolean,
    "return_token_ids": _boolean,
    "structured_outputs": _structured,
}
CHAT: dict[str, Check] = SAMPLING | {
    "max_completion_tokens": _integer(0, _tokens),
    "logprobs": _boolean,
    "top_logprobs": _integer(0, lambda lim: lim.max_top_logprobs, 20),
    "response_format": _response_format,
    "tools": _list(_tool, lambda _: 128),
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _boolean,
    "reasoning_effort": _choice("none", "minimal", "low", "medium", "high", "xhigh", "max"),
}
COMPLETIONS: dict[str, Check] = SAMPLING | {
    "echo": _boolean,
    "suffix": _string,
    "best_of": _integer(1, _n),
    "logprobs": _integer(0, lambda lim: lim.max_top_logprobs, 20),
}
FORWARDED: dict[Endpoint, dict[str, Check]] = {"chat.completions": CHAT, "completions": COMPLETIONS}
# OpenAI fields accepted for compatibility and not forwarded: nothing an engine does depends on them
IGNORED = {
    "user",
    "metadata",
    "store",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "service_tier",
    "verbosity",
    "modalities",
}
UNSUPPORTED = {"audio", "prediction", "web_search_options", "functions", "function_call", "moderation"}
# set by tunegate (``EngineRequest.body``); a caller's value is read (model, stream) or checked, never forwarded
STRUCTURE: dict[Endpoint, set[str]] = {
    "chat.completions": {"model", "messages", "stream", "stream_options"},
    "completions": {"model", "prompt", "stream", "stream_options"},
}


@dataclass(frozen=True)
class EngineRequest:
    """A checked request: what the caller may choose, apart from what tunegate sets."""

    endpoint: Endpoint
    model: str  # the caller's model id; the pool resolves it to an engine-side name
    stream: bool
    include_usage: bool  # the caller asked for the stream's usage chunk
    source: Any  # messages or prompt, checked copies
    params: dict[str, Any]

    def body(self, engine_model: str, *, engine: str = "vllm", request_id: str | None = None) -> dict[str, Any]:
        """The upstream JSON body: the checked parameters, then what tunegate decides."""
        body = dict(self.params)
        if engine == "llama.cpp":  # its server's name for it, and its default 1.1 where OpenAI has none
            body["repeat_penalty"] = body.pop("repetition_penalty", 1.0)
        body["model"] = engine_model
        body["messages" if self.endpoint == "chat.completions" else "prompt"] = self.source
        body["stream"] = self.stream
        if self.stream:  # vLLM: usage on every chunk, so that a stream the client drops is still accounted
            body["stream_options"] = {"include_usage": True} | (
                {"continuous_usage_stats": True} if engine == "vllm" else {}
            )
        if request_id is not None and engine == "vllm":
            body["request_id"] = request_id
        return body


def parse(endpoint: Endpoint, body: Any, limits: RequestLimits) -> EngineRequest:
    """A caller's body checked against the allow-list; the first problem is a 400 naming its field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_value")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("You must provide a model parameter.", "model", "missing_required_parameter")
    if endpoint == "chat.completions":
        source = _messages(body.get("messages"), "messages", limits)
    elif body.get("prompt") is None:
        raise _bad("You must provide a prompt parameter.", "prompt", "missing_required_parameter")
    else:
        source = _prompt(body["prompt"], "prompt", limits)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean.", "stream", "invalid_type")
    options = _object(
        body.get("stream_options") or {},
        "stream_options",
        {"include_usage": _boolean, "include_obfuscation": _boolean},
        limits,
    )
    extra = {k: v for k, v in body.items() if k not in STRUCTURE[endpoint]}
    params = _params(extra, FORWARDED[endpoint], "", limits)
    prompts = len(source) if endpoint == "completions" and isinstance(source, list) and not _is_int(source[0]) else 1
    choices = max(params.get("n", 1), params.get("best_of", 1)) * prompts
    if choices > limits.max_n:
        raise _bad(
            f"This request asks for {choices} choices (n × prompts), above this server's limit of {limits.max_n}.",
            "n",
            "integer_above_max_value",
        )
    return EngineRequest(endpoint, model, stream is True, options.get("include_usage") is True, source, params)


def validate_sampling_params(params: Any, param_prefix: str, limits: RequestLimits) -> dict[str, Any]:
    """An eval run's (or any generation caller's) ``sampling_params``: the chat allow-list without ``n``; ``model``,
    ``messages``, ``stream`` and everything else unknown is a 400 naming ``<param_prefix>.<field>``."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _bad(f"'{param_prefix}' must be an object.", param_prefix, "invalid_type")
    allowed = {k: v for k, v in CHAT.items() if k != "n"}
    return _params(params, allowed, param_prefix + ".", limits)


def generation(
    messages: Any, params: Any, limits: RequestLimits, param_prefix: str = "sampling_params"
) -> EngineRequest:
    """A chat request tunegate makes itself (eval runs, job-end scoring): messages and parameters checked as a
    caller's would be; ``body(engine_model)`` then sets the model."""
    return EngineRequest(
        "chat.completions",
        "",
        False,
        False,
        _messages(messages, "messages", limits),
        validate_sampling_params(params, param_prefix, limits),
    )


def _params(body: dict[str, Any], allowed: dict[str, Check], prefix: str, limits: RequestLimits) -> dict[str, Any]:
    out: dict[str, Any] = {}
    guided = {GUIDED[k]: v for k, v in body.items() if k in GUIDED and v is not None and not prefix}
    if guided:
        if body.get("structured_outputs") is not None:
            raise _bad("Give structured_outputs or guided_*, not both.", "structured_outputs")
        body = {**body, "structured_outputs": guided}
    for key, value in body.items():
        param = prefix + str(key)
        if key in allowed:
            if value is not None:
                out[key] = allowed[key](value, param, limits)
        elif key in GUIDED and not prefix:
            continue
        elif key in UNSUPPORTED:
            raise _bad(f"'{param}' is not supported by this server.", param, "unsupported_parameter")
        elif key not in IGNORED or prefix:
            raise _bad(f"Unknown parameter: '{param}'.", param, "unknown_parameter")
    if "structured_outputs" in out:
        picked = [k for k in ("json", "regex", "choice", "grammar", "json_object") if k in out["structured_outputs"]]
        if len(picked) != 1:
            raise _bad(
                "structured_outputs (or guided_*) must set exactly one of json, regex, choice, grammar, json_object.",
                prefix + "structured_outputs",
            )
    return out
