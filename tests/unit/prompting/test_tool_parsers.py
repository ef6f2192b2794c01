"""Tool-call parsers: fixtures of real model outputs (written from each format's
documentation), streaming == non-streaming, canonical arguments, malformed markup."""

from __future__ import annotations

import json
import random
import re

import pytest

from triolm.prompting.template import builtin_template
from triolm.prompting.tool_parsers import (
    HERMES_FORMAT,
    LLAMA3_JSON_FORMAT,
    MISTRAL_FORMAT,
    TOOL_PARSERS,
    DeltaEvent,
    ToolCall,
    aggregate,
    detect_tool_parser,
    get_tool_parser,
)
from triolm.prompting.tool_parsers.json_stream import JsonError, JsonStream

OPENAI_ID = re.compile(r"call_[A-Za-z0-9]{24}\Z")
MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}\Z")

# (parser, model output, expected content, expected [(name, arguments object)])
FIXTURES = [
    # Qwen2.5 function-calling guide: parallel calls, one <tool_call> block each
    (
        "hermes",
        '<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": "San Francisco, CA, USA"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_temperature_date", "arguments": {"location": '
        '"San Francisco, CA, USA", "date": "2024-10-01"}}\n</tool_call>',
        None,
        [
            ("get_current_temperature", {"location": "San Francisco, CA, USA"}),
            ("get_temperature_date", {"location": "San Francisco, CA, USA", "date": "2024-10-01"}),
        ],
    ),
    # Hermes 2 Pro model card: "arguments" before "name"
    (
        "hermes",
        '<tool_call>\n{"arguments": {"symbol": "TSLA"}, "name": "get_stock_fundamentals"}\n</tool_call>',
        None,
        [("get_stock_fundamentals", {"symbol": "TSLA"})],
    ),
    # Qwen3 with a preamble, compact JSON, non-ASCII and escapes
    (
        "hermes",
        "Je vais vérifier la météo.\n\n<tool_call>\n"
        '{"name":"get_weather","arguments":{"city":"Zürich","note":"line1\\nline2 \\"q\\" \\u00e9",'
        '"days":3,"ratio":1.50,"big":1E3,"flags":[true,false,null]}}\n</tool_call>',
        "Je vais vérifier la météo.",
        [("get_weather", {"city": "Zürich", "note": 'line1\nline2 "q" é', "days": 3, "ratio": 1.5,
                          "big": 1000.0, "flags": [True, False, None]})],
    ),
    # a call without arguments
    ("hermes", '<tool_call>\n{"name": "get_time"}\n</tool_call>', None, [("get_time", {})]),
    # plain answer: untouched
    ("hermes", "The weather in Paris is sunny.\n", "The weather in Paris is sunny.\n", []),
    # Llama 3.1 model card, JSON-based tool calling (the whole reply is the call)
    (
        "llama3_json",
        '{"name": "get_current_conditions", "parameters": {"location": "San Francisco, CA", "unit": "Fahrenheit"}}',
        None,
        [("get_current_conditions", {"location": "San Francisco, CA", "unit": "Fahrenheit"})],
    ),
    # Llama 3.1 prompt-format repo: <|python_tag|> form; several calls separated by ';'
    (
        "llama3_json",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
        '{"name": "get_weather", "parameters": {"city": "Rome"}}',
        None,
        [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})],
    ),
    # "arguments" spelled instead of "parameters", text before the tag
    (
        "llama3_json",
        'Let me look that up. <|python_tag|>{"name": "search", "arguments": {"q": "trio"}}',
        "Let me look that up.",
        [("search", {"q": "trio"})],
    ),
    # an ordinary JSON answer is not a call
    ("llama3_json", '{"answer": 42, "name": "x"}', '{"answer": 42, "name": "x"}', []),
    # Mistral 7B Instruct v0.3 model card (SentencePiece decodes a space after the token)
    (
        "mistral",
        '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": "Paris, France", '
        '"format": "celsius"}}]',
        None,
        [("get_current_weather", {"location": "Paris, France", "format": "celsius"})],
    ),
    # Tekken (Nemo): no space; two calls; a model-written id is kept
    (
        "mistral",
        '[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}, "id": "abcDEF123"}, {"name": "b", "arguments": {}}]',
        None,
        [("a", {"x": 1}), ("b", {})],
    ),
    # v11+ tokenizers: NAME[ARGS]{...}, optionally NAME[CALL_ID]ID[ARGS]{...}
    (
        "mistral",
        'Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{}',
        "Checking.",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
]


def stream_events(parser_name: str, text: str, chunks: list[int], tool_names=None) -> list[DeltaEvent]:
    stream = get_tool_parser(parser_name, tool_names).streaming()
    events, pos = [], 0
    for n in chunks:
        events += stream.push(text[pos : pos + n])
        pos += n
    events += stream.push(text[pos:])
    return events + stream.finish()


def chunkings(text: str, seed: int = 0) -> list[list[int]]:
    rnd = random.Random(seed)
    out = [[1] * len(text), [2] * (len(text) // 2), [7] * (len(text) // 7), [len(text)]]
    for _ in range(3):
        sizes, left = [], len(text)
        while left > 0:
            sizes.append(min(left, rnd.randint(1, 12)))
            left -= sizes[-1]
        out.append(sizes)
    return out


def summary(parsed):
    return parsed.content, [(c.name, c.arguments) for c in parsed.tool_calls]


@pytest.mark.parametrize("parser_name,text,content,calls", FIXTURES)
def test_fixtures_parse(parser_name, text, content, calls):
    parsed = get_tool_parser(parser_name).parse(text)
    assert parsed.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == calls
    for call in parsed.tool_calls:
        assert call.type == "function"
        # arguments is exactly json.dumps of the object (default separators, no ASCII escaping)
        assert call.arguments == json.dumps(json.loads(call.arguments), ensure_ascii=False)
        assert (MISTRAL_ID if parser_name == "mistral" else OPENAI_ID).match(call.id)
    assert len({c.id for c in parsed.tool_calls}) == len(parsed.tool_calls)


def test_mistral_keeps_model_ids():
    text = FIXTURES[10][1]
    ids = [c.id for c in get_tool_parser("mistral").parse(text).tool_calls]
    assert ids[0] == "abcDEF123" and MISTRAL_ID.match(ids[1]) and ids[1] != ids[0]
    v11 = get_tool_parser("mistral").parse(FIXTURES[11][1]).tool_calls
    assert v11[1].id == "a1b2c3d4e"


@pytest.mark.parametrize("parser_name,text,content,calls", FIXTURES)
def test_streaming_equals_parse(parser_name, text, content, calls):
    expected = summary(get_tool_parser(parser_name).parse(text))
    for sizes in chunkings(text):
        events = stream_events(parser_name, text, sizes)
        assert summary(aggregate(events)) == expected, sizes
        # per call: header (index, id, type, name) first, then argument fragments only
        seen_header = set()
        for ev in events:
            if ev.is_content:
                continue
            if ev.name is not None:
                assert ev.index not in seen_header and ev.id and ev.arguments == ""
                assert ev.to_openai()["tool_calls"][0]["type"] == "function"
                seen_header.add(ev.index)
            else:
                assert ev.index in seen_header and ev.arguments and ev.id is None
    assert sorted(seen_header) == list(range(len(calls)))


def test_arguments_stream_before_the_call_ends():
    text = FIXTURES[2][1]
    cut = text.index('"days"')
    stream = get_tool_parser("hermes").streaming()
    early = stream.push(text[:cut])
    header = [e for e in early if e.name == "get_weather"]
    frags = "".join(e.arguments for e in early if e.index == 0 and e.name is None)
    assert header and frags.startswith('{"city": "Zürich", "note": "line1\\nline2')
    rest = stream.push(text[cut:]) + stream.finish()
    whole = frags + "".join(e.arguments for e in rest if e.index == 0 and e.name is None and e.arguments)
    assert whole == get_tool_parser("hermes").parse(text).tool_calls[0].arguments


def test_delta_event_openai_shapes():
    assert DeltaEvent(content="hi").to_openai() == {"content": "hi"}
    assert DeltaEvent(index=0, id="call_x", name="f", arguments="").to_openai() == {
        "tool_calls": [{"index": 0, "id": "call_x", "type": "function", "function": {"name": "f", "arguments": ""}}]
    }
    assert DeltaEvent(index=1, arguments='{"a"').to_openai() == {
        "tool_calls": [{"index": 1, "function": {"arguments": '{"a"'}}]
    }
    call = ToolCall(id="call_1", name="f", arguments="{}")
    assert call.to_openai() == {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


MALFORMED = [
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>'),  # missing brace
    ("hermes", "<tool_call>\nnot json at all\n</tool_call> and more"),
    ("hermes", '<tool_call>{"arguments": {}}</tool_call>'),  # no name
    ("hermes", '<tool_call>{"name": 5, "arguments": {}}</tool_call>'),
    ("hermes", '<tool_call>{"name": "f", "arguments": "a string"}</tool_call>'),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": NaN}}</tool_call>'),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": 1, "a": 2}}</tool_call>'),  # duplicate key
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": "\\ud800"}}</tool_call>'),  # lone surrogate
    ("hermes", '<tool_call>{"name": "has space", "arguments": {}}</tool_call>'),
    ("hermes", '<tool_call>{"name": "f", "arguments": {}} trailing</tool_call>'),
    ("hermes", "<tool_call"),
    ("hermes", "<tool_call>"),
    ("hermes", '<tool_call>\n{"name": "f", "argu'),  # truncated before the arguments
    ("llama3_json", '{"name": "f"}'),  # no parameters: an ordinary JSON answer
    ("llama3_json", '{"name": "f", "parameters": [1]}'),
    ("llama3_json", "<|python_tag|>brave_search.call(query=\"trio\")"),
    ("llama3_json", "{not json"),
    ("mistral", "[TOOL_CALLS] not a list"),
    ("mistral", '[TOOL_CALLS] [{"name": "f", "arguments": {}'),  # truncated
    ("mistral", '[TOOL_CALLS]bad name[ARGS]{"a": 1}'),
    ("mistral", "[TOOL_CALLS]"),
    ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": 3}]'),
]


@pytest.mark.parametrize("parser_name,text", MALFORMED)
def test_malformed_markup_is_plain_content(parser_name, text):
    parsed = get_tool_parser(parser_name).parse(text)
    assert parsed.tool_calls == []
    assert parsed.content == text
    # streamed in one go it is the same; streamed finely it never raises
    assert summary(aggregate(stream_events(parser_name, text, [len(text)]))) == summary(parsed)
    for sizes in chunkings(text):
        stream_events(parser_name, text, sizes)


def test_malformed_call_between_good_ones_keeps_the_good_ones():
    text = (
        '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n'
        "<tool_call>\n{broken}\n</tool_call>\n"
        '<tool_call>\n{"name": "b", "arguments": {"x": 1}}\n</tool_call>'
    )
    parsed = get_tool_parser("hermes").parse(text)
    assert [c.name for c in parsed.tool_calls] == ["a", "b"]
    assert parsed.content == "<tool_call>\n{broken}\n</tool_call>"
    for sizes in chunkings(text):
        assert summary(aggregate(stream_events("hermes", text, sizes))) == summary(parsed)


def test_stream_cannot_take_back_a_call_broken_after_its_name():
    """The documented divergence: a call cut off after its name was streamed stays a
    call in the stream; the non-streamed parse of the same text keeps it as content."""
    text = '<tool_call>\n{"name": "f", "arguments": {"city": "Par'
    assert get_tool_parser("hermes").parse(text).tool_calls == []
    streamed = aggregate(stream_events("hermes", text, [1] * len(text)))
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [("f", '{"city": "Par')]


def test_unknown_tool_names_are_content():
    text = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    parsed = get_tool_parser("hermes", tool_names={"get_weather"}).parse(text)
    assert parsed.tool_calls == [] and parsed.content == text
    assert get_tool_parser("hermes", tool_names={"rm_rf"}).parse(text).tool_calls[0].name == "rm_rf"


def test_content_whitespace_rules():
    p = get_tool_parser("hermes")
    call = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    assert p.parse(f"  A  \n{call}\n\n  B \n").content == "  A\nB \n"
    assert p.parse(f"\n{call}\n{call}\n").content is None
    assert p.parse("  just text  ").content == "  just text  "
    assert p.parse("").content == ""


def test_partial_markers_are_held_back_then_released():
    stream = get_tool_parser("hermes").streaming()
    assert stream.push("a <tool_") == [DeltaEvent(content="a")]
    assert stream.push("x") == [DeltaEvent(content=" <tool_x")]
    assert stream.finish() == []


@pytest.mark.parametrize("fmt,parser_name", [(HERMES_FORMAT, "hermes"), (LLAMA3_JSON_FORMAT, "llama3_json"),
                                             (MISTRAL_FORMAT, "mistral")])
def test_render_parse_round_trip(fmt, parser_name):
    """What a format renders is what its parser reads back, call for call; and
    rendering the parsed calls reproduces the text byte for byte."""
    calls = [("get_weather", {"city": "Zürich", "q": 'say "hi"\n', "n": [1, 2.5, None]}, "A1b2C3d4E")]
    if fmt.max_calls != 1:
        calls.append(("get_time", {}, "zzzzzzzz9"))
    text = fmt.render_calls(calls)
    parsed = get_tool_parser(parser_name).parse(text)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [c[:2] for c in calls]
    if parser_name == "mistral":
        assert [c.id for c in parsed.tool_calls] == [c[2] for c in calls]
    assert parsed.content is None
    assert fmt.render_calls(parsed.tool_calls) == text


def test_hermes_format_matches_the_chatml_template_spelling():
    assert HERMES_FORMAT.render_call("f", {"a": "é"}) == '<tool_call>\n{"name": "f", "arguments": {"a": "é"}}\n</tool_call>'
    assert LLAMA3_JSON_FORMAT.render_call("f", {"a": 1}) == '{"name": "f", "parameters": {"a": 1}}'
    assert MISTRAL_FORMAT.render_calls([ToolCall(id="abcdefghi", name="f", arguments='{"a": 1}')]) == (
        '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}, "id": "abcdefghi"}]'
    )


QWEN25_TEMPLATE_EXCERPT = """{%- for tool_call in message.tool_calls %}
{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}
{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}"""
LLAMA31_TEMPLATE_EXCERPT = """{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
{{- '{"name": "' + tool_call.name + '", ' }}{{- '"parameters": ' }}{{- tool_call.arguments | tojson }}
{%- if builtin_tools is defined %}{{- "<|python_tag|>" }}{%- endif %}"""


def test_detect_tool_parser():
    assert detect_tool_parser(QWEN25_TEMPLATE_EXCERPT, "Qwen2ForCausalLM") == "hermes"
    assert detect_tool_parser(builtin_template("chatml_tools"), None) == "hermes"
    assert detect_tool_parser(LLAMA31_TEMPLATE_EXCERPT, "LlamaForCausalLM") == "llama3_json"
    assert detect_tool_parser(builtin_template("llama3"), "llama") == "llama3_json"
    assert detect_tool_parser("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}", "llama") == "mistral"
    assert detect_tool_parser(None, "MistralForCausalLM") == "mistral"
    assert detect_tool_parser(builtin_template("llama2"), "LlamaForCausalLM") is None
    assert detect_tool_parser(None, "LlamaForCausalLM") is None


def test_registry():
    assert set(TOOL_PARSERS) == {"hermes", "llama3_json", "mistral", "generic"}
    for name in TOOL_PARSERS:
        parser = get_tool_parser(name)
        assert parser.name == name and parser.format.parser == name
    with pytest.raises(ValueError, match="unknown tool-call parser"):
        get_tool_parser("nope")


# --------------------------------------------------------------------------- json_stream
CANONICAL_CASES = [
    '{"a":1,"b":[1,2,{"c":null}],"d":"x"}',
    '{ "s" : "tab\\there \\"q\\" back\\\\slash \\/ \\u00e9 \\ud83d\\ude00 \\u0001" }',
    '{"n": [0, -0, 1.50, 1e5, 1E+2, -2.5e-3, 12345678901234567890, 0.1]}',
    '{"unicode": "東京 😀 \u2028", "empty": {}, "arr": [], "t": true, "f": false}',
    '[1, "two", [3, [4, {"five": 5}]]]',
    '"just a string"',
    "  {\n  \"pretty\": [\n    1,\n    2\n  ]\n}  ",
]


@pytest.mark.parametrize("raw", CANONICAL_CASES)
def test_json_stream_is_json_dumps(raw):
    expected = json.dumps(json.loads(raw), ensure_ascii=False)
    for step in (1, 3, len(raw)):
        js = JsonStream()
        pos = 0
        for i in range(0, len(raw), step):
            chunk = raw[i : i + step]
            used = js.feed(chunk)
            if js.done:
                assert raw[i + used :].strip() == ""
                break
            assert used == len(chunk)
            pos = i
        assert js.done, pos
        assert js.text() == expected


@pytest.mark.parametrize(
    "raw",
    ['{"a": NaN}', '{"a": Infinity}', '{"a": 1e999}', '{"a": 01}', '{"a": 1.}', '{"a": .5}', "{'a': 1}",
     '{"a": 1,}', '[1,]', '{"a" 1}', '{"a": tru}', '{"a": "\\x"}', '{"a": "\\ud83d"}', '{"a": "x\ny"}',
     '{"a": 1, "a": 1}', '{"a": +1}'],
)
def test_json_stream_rejects_what_cannot_round_trip(raw):
    with pytest.raises(JsonError):
        js = JsonStream()
        js.feed(raw)
        js.finish()


def test_json_stream_records_top_level_members():
    js = JsonStream(require_object=True)
    js.feed('{"name": "f", "arguments": {"a": [1, 2]}, "id": "x"} tail')
    assert js.done and js.strings == {"name": "f", "id": "x"}
    start, end = js.spans["arguments"]
    assert js.text(start, end) == '{"a": [1, 2]}'
    with pytest.raises(JsonError):
        JsonStream(require_object=True).feed("[1]")
