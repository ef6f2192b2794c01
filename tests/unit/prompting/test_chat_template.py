"""ChatTemplate: Hugging Face rendering semantics, errors, and the built-in templates."""

from __future__ import annotations

import copy
import json
from datetime import datetime

import pytest

from support.tokenizer_files import load_test_tokenizer, write_test_tokenizer
from triolm.errors import InvalidRequestError
from triolm.prompting.template import BUILTIN_TEMPLATES, DEFAULT_CHAT_TEMPLATE, ChatTemplate, builtin_template

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather <in> a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                       "required": ["city"]},
    },
}
ARGS = {"city": "Zürich", "unit": "°C", "note": "<b>&</b>"}


def tool_call(name: str, args, call_id: str = "call_1") -> dict:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}


def conversation() -> list[dict]:
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Zürich and Paris? 🌧"},
        {"role": "assistant", "content": None,
         "tool_calls": [tool_call("get_weather", ARGS), tool_call("get_weather", {"city": "Paris"}, "call_2")]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 12}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
        {"role": "assistant", "content": "12 °C and sunny."},
    ]


def render(source: str, messages, **kw) -> str:
    return ChatTemplate(source, bos_token="<s>", eos_token="</s>").render(messages, **kw)


# ---------------------------------------------------------------- HF semantics


def test_trim_and_lstrip_blocks():
    source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}"
    assert render(source, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "[a]\n[b]\n"


def test_variables_and_extra_kwargs():
    source = "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools | length }}|{{ enable_thinking }}"
    out = render(source, [], tools=[WEATHER_TOOL], enable_thinking=False)
    assert out == "<s>|</s>|True|1|False"
    assert render("{{ tools is none }}", []) == "True"
    assert render("{{ bos_token }}", [], bos_token="[BOS]") == "[BOS]"


def test_tojson_like_transformers():
    value = {"z": 1, "a": ["é", "<tag>", "日本"], "n": None}
    assert render("{{ v | tojson }}", [], v=value) == json.dumps(value, ensure_ascii=False)
    assert render("{{ v | tojson(indent=2) }}", [], v=value) == json.dumps(value, ensure_ascii=False, indent=2)
    assert render("{{ v | tojson(sort_keys=true) }}", [], v=value) == json.dumps(value, ensure_ascii=False,
                                                                              sort_keys=True)
    assert render("{{ v | tojson(separators=(',', ':')) }}", [], v=value) == json.dumps(
        value, ensure_ascii=False, separators=(",", ":"))


def test_strftime_now_and_loop_controls_and_generation_block():
    out = render("{{ strftime_now('%Y') }}", [])
    assert out == str(datetime.now().year)
    source = "{% for i in range(10) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"
    assert render(source, []) == "012"
    assert render("{% generation %}A{{ 1 + 1 }}{% endgeneration %}B", []) == "A2B"


def test_json_string_arguments_are_parsed_and_input_not_mutated():
    messages = [{"role": "assistant", "tool_calls": [tool_call("f", {"b": 2, "a": [1, "x"]})]},
                {"role": "assistant", "tool_calls": [tool_call("g", "not json {")]}]
    before = copy.deepcopy(messages)
    source = ("{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.name }}:"
              "{% if c.function.arguments is mapping %}{% for k, v in c.function.arguments.items() %}"
              "{{ k }}={{ v }};{% endfor %}{% else %}raw={{ c.function.arguments }}{% endif %}|"
              "{% endfor %}{% endfor %}")
    assert render(source, messages) == "f:b=2;a=[1, 'x'];|g:raw=not json {|"
    assert messages == before


# ---------------------------------------------------------------- errors


def test_raise_exception_becomes_invalid_request():
    with pytest.raises(InvalidRequestError) as info:
        render("{{ raise_exception('roles must alternate') }}", [])
    assert info.value.message == "roles must alternate" and info.value.param == "messages"


def test_undefined_attribute_becomes_invalid_request():
    with pytest.raises(InvalidRequestError, match="chat template error"):
        render("{{ messages[0].content.upper() }}", [{"role": "user"}])
    with pytest.raises(InvalidRequestError, match="undefined"):
        render("{{ nothing.here }}", [])


def test_syntax_error_names_the_line():
    with pytest.raises(InvalidRequestError, match=r"syntax error \(line 2\)") as info:
        ChatTemplate("ok\n{% for %}", "<s>", "</s>")
    assert info.value.param == "chat_template"


def test_sandbox_blocks_unsafe_access_and_mutation():
    with pytest.raises(InvalidRequestError):
        render("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", [])
    with pytest.raises(InvalidRequestError):
        render("{% set _ = messages.append(1) %}", [])


def test_python_errors_inside_templates_become_invalid_request():
    with pytest.raises(InvalidRequestError, match="TypeError"):
        render("{{ 'a' + 1 }}", [])


# ---------------------------------------------------------------- chatml_tools


def test_chatml_tool_call_text_is_exact():
    """What the constrained decoder produces: <tool_call>\\n{"name": N, "arguments": A}\\n</tool_call>
    with A = json.dumps(args, ensure_ascii=False)."""
    out = render(builtin_template("chatml_tools"), conversation(), tools=[WEATHER_TOOL])
    call1 = '<tool_call>\n{"name": "get_weather", "arguments": ' + json.dumps(ARGS, ensure_ascii=False) + "}\n</tool_call>"
    call2 = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert "<|im_start|>assistant\n" + call1 + "\n" + call2 + "<|im_end|>\n" in out
    assert '"note": "<b>&</b>"' in out and "Zürich" in out  # no HTML escaping, no \\u escapes


def test_chatml_full_layout():
    out = render(builtin_template("chatml_tools"), conversation(), tools=[WEATHER_TOOL])
    assert out.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(WEATHER_TOOL, ensure_ascii=False) + "\n</tools>" in out
    assert ("<|im_start|>user\n<tool_response>\n{\"temp\": 12}\n</tool_response>\n"
            "<tool_response>\nsunny\n</tool_response><|im_end|>\n") in out
    assert out.endswith("<|im_start|>assistant\n12 °C and sunny.<|im_end|>\n<|im_start|>assistant\n")
    assert out.count("<|im_start|>") == 6


def test_chatml_without_tools_and_without_generation_prompt():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    out = render(builtin_template("chatml_tools"), msgs, add_generation_prompt=False)
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    # tools without a system message get a default one
    out = render(builtin_template("chatml_tools"), msgs[:1], tools=[WEATHER_TOOL])
    assert out.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools")


def test_chatml_content_and_tool_call_and_dict_arguments():
    msgs = [{"role": "user", "content": "x"},
            {"role": "assistant", "content": "Let me check.",
             "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"k": "v"}}}]}]
    out = render(builtin_template("chatml_tools"), msgs, add_generation_prompt=False)
    assert out.endswith('<|im_start|>assistant\nLet me check.\n<tool_call>\n{"name": "f", "arguments": {"k": "v"}}'
                        "\n</tool_call><|im_end|>\n")


def test_chatml_rejects_unknown_role():
    with pytest.raises(InvalidRequestError, match="unsupported message role 'critic'"):
        render(builtin_template("chatml_tools"), [{"role": "critic", "content": "x"}])


def test_generated_tool_call_round_trips_token_exactly():
    """The text the model emits after the generation prompt is exactly what the template
    renders for that assistant turn, so prompt + generation == re-rendered history."""
    template = ChatTemplate(builtin_template("chatml_tools"), "<s>", "</s>")
    history = [{"role": "user", "content": "Weather in Zürich?"}]
    prompt = template.render(history, tools=[WEATHER_TOOL])
    generated = ('<tool_call>\n{"name": "get_weather", "arguments": ' + json.dumps(ARGS, ensure_ascii=False)
                 + "}\n</tool_call>")
    after = template.render(history + [{"role": "assistant", "content": "",
                                        "tool_calls": [tool_call("get_weather", ARGS)]}],
                            tools=[WEATHER_TOOL], add_generation_prompt=False)
    assert after == prompt + generated + "<|im_end|>\n"
    tok = load_test_tokenizer("bpe-tekken")
    assert tok.decode(tok.encode(prompt + generated, add_special_tokens=False)) == prompt + generated


def test_default_template_is_chatml():
    assert DEFAULT_CHAT_TEMPLATE == builtin_template("chatml_tools")
    out = render(DEFAULT_CHAT_TEMPLATE, [{"role": "user", "content": "hi"}])
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------- llama2 / llama3


def test_llama2_layout_and_alternation():
    msgs = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi  "},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    out = render(builtin_template("llama2"), msgs)
    assert out == "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nhi [/INST] hello </s><s>[INST] more [/INST]"
    with pytest.raises(InvalidRequestError, match="alternate"):
        render(builtin_template("llama2"), [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(InvalidRequestError, match="tool"):
        render(builtin_template("llama2"), [{"role": "tool", "content": "a"}])
    # the llama-2 test tokenizer turns the rendered <s> into the bos id
    tok = load_test_tokenizer("spm-llama2")
    ids = tok.encode(out, add_special_tokens=False)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 2 and ids.count(tok.eos_token_id) == 1


def test_llama3_layout_with_tools():
    msgs = conversation()[:4]
    msgs[2]["tool_calls"] = msgs[2]["tool_calls"][:1]
    source = builtin_template("llama3")
    out = ChatTemplate(source, "<|begin_of_text|>", "<|eot_id|>").render(
        msgs, tools=[WEATHER_TOOL], date_string="01 Jan 2025")
    assert out.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
                          "Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2025\n\nBe brief.<|eot_id|>")
    assert json.dumps(WEATHER_TOOL, ensure_ascii=False, indent=4) in out
    call = '{"name": "get_weather", "parameters": ' + json.dumps(ARGS, ensure_ascii=False) + "}<|eot_id|>"
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n" + call in out
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 12}<|eot_id|>' in out
    assert out.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    no_tools = ChatTemplate(source, "<|begin_of_text|>", "").render([{"role": "user", "content": "hi"}])
    assert "Environment" not in no_tools and datetime.now().strftime("%Y") in no_tools
    with pytest.raises(InvalidRequestError, match="one tool call"):
        ChatTemplate(source, "", "").render(conversation())


# ---------------------------------------------------------------- oracle


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_renders_like_transformers(tmp_path, name):
    """transformers' apply_chat_template on the same template gives the same text
    (arguments given as dicts, which is what transformers expects)."""
    transformers = pytest.importorskip("transformers")
    d = write_test_tokenizer("spm-llama2", tmp_path / name, builtin_template(name))
    auto = transformers.AutoTokenizer.from_pretrained(str(d))
    msgs = conversation()
    for m in msgs:
        for c in m.get("tool_calls") or []:
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
    if name in ("llama2", "gemma"):  # no tool calling in these formats
        msgs, tools = [m for m in msgs if m["role"] in ("system",)] + [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "again"}], None
    elif name == "llama3":
        msgs[2]["tool_calls"] = msgs[2]["tool_calls"][:1]
        tools = [WEATHER_TOOL]
    else:
        tools = [WEATHER_TOOL]
    kwargs = {"date_string": "02 Feb 2025"}
    expected = auto.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs)
    ours = ChatTemplate(builtin_template(name), auto.bos_token, auto.eos_token).render(msgs, tools=tools, **kwargs)
    assert ours == expected
