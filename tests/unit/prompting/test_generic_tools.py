"""Generic JSON tool calling for models whose chat template has no tool support: the tools
are described in the system prompt, the reply is constrained to `{"tool_calls": [...]}` or
`{"response": "..."}`, and parsed into OpenAI tool calls or content — non-streamed and
streamed, sent back in later turns, in sessions as one node. On a tiny random model with a
tool-less template (SmolLM2's) and on the real default model.
(Contract: contracts/tools-and-reasoning.md, clauses GTC-*.)"""

from __future__ import annotations

import json

import openai
import pytest

from support.paths import TEMPLATES_DIR
from support.server_thread import ServerThread
from support.sessions_api import SessionsAPI
from triolm.loading.served_model import load_served_model
from triolm.prompting.prompts import render_chat_text
from triolm.settings import ServerSettings

TEMPLATES = TEMPLATES_DIR


def tool(name: str, description: str, **enums: list[str]) -> dict:
    params = {"type": "object", "properties": {k: {"type": "string", "enum": v} for k, v in enums.items()},
              "required": list(enums), "additionalProperties": False}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": params}}


WEATHER = tool("get_weather", "Get the current weather in a city", city=["Paris", "Berlin"])
TIME = tool("get_time", "Get the local time in a time zone", zone=["CET"])
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(scope="module")
def plain_served(tiny_model):
    """The tiny qwen2 model (random weights, tekken tokenizer) with SmolLM2's chat
    template, which ignores `tools`."""
    settings = ServerSettings(model=str(tiny_model("qwen2").hf_dir), chat_template=str(TEMPLATES / "smollm2.jinja"))
    return load_served_model(settings)


@pytest.fixture(scope="module")
def plain_server(plain_served):
    with ServerThread(ServerSettings(model=plain_served.path, max_num_seqs=8), plain_served) as srv:
        yield srv


@pytest.fixture
def plain(plain_server):
    return openai.OpenAI(base_url=plain_server.base_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def smol(default_server):
    return openai.OpenAI(base_url=default_server.base_url + "/v1", api_key="unused", max_retries=0)


def calls_of(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def streamed(client, **kwargs) -> tuple[str, list[tuple[str, dict]], str]:
    """(content, calls, finish_reason) folded from a stream's deltas."""
    content, calls, finish = [], {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            d = choice.delta
            content.append(d.content or "")
            for tc in d.tool_calls or []:
                c = calls.setdefault(tc.index, {"name": "", "args": ""})
                if tc.function and tc.function.name:
                    c["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    c["args"] += tc.function.arguments
            finish = choice.finish_reason or finish
    return "".join(content), [(c["name"], json.loads(c["args"])) for _, c in sorted(calls.items())], finish


# -- the format is chosen by the template ---------------------------------------------------
def test_gtc_001_tool_less_template_uses_the_generic_format_others_keep_theirs(plain_served, served_model):
    assert plain_served.tool_parser == "generic"
    assert served_model.tool_parser == "hermes"  # a template that knows tools keeps its native format
    text = render_chat_text(served_model, ASK, TOOLS)
    assert '"tool_calls"' not in text and "<tools>" in text


def test_gtc_002_tools_and_format_are_described_in_the_system_prompt(plain_served):
    text = render_chat_text(plain_served, [{"role": "system", "content": "Be brief."}, *ASK], TOOLS)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\n")
    for t in TOOLS:
        assert json.dumps({"name": t["function"]["name"], "description": t["function"]["description"],
                           "parameters": t["function"]["parameters"]}) in system
    assert '{"tool_calls": [{"name": "<tool name>"' in system and '{"response": "<your answer>"}' in system


# -- tool_choice --------------------------------------------------------------------------
def test_gtc_003_required_and_named_force_calls(plain):
    for seed in range(3):
        r = plain.chat.completions.create(model="hf", messages=ASK, tools=TOOLS, tool_choice="required",
                                          seed=seed, max_tokens=80)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        calls = calls_of(choice.message)
        assert calls and all(c in [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Berlin"}),
                                   ("get_time", {"zone": "CET"})] for c in calls)
        assert all(c.id.startswith("call_") and c.type == "function" for c in choice.message.tool_calls)
        named = plain.chat.completions.create(model="hf", messages=ASK, tools=TOOLS, tool_choice=NAMED,
                                              seed=seed, max_tokens=80)
        assert calls_of(named.choices[0].message) == [("get_time", {"zone": "CET"})]


def test_gtc_004_auto_lets_the_model_choose(plain):
    seen = {"call": 0, "text": 0}
    for seed in range(12):
        r = plain.chat.completions.create(model="hf", messages=ASK, tools=TOOLS, tool_choice="auto",
                                          seed=seed, max_tokens=40)
        m = r.choices[0].message
        if m.tool_calls:
            seen["call"] += 1
            assert r.choices[0].finish_reason == "tool_calls" and m.content is None
        else:
            seen["text"] += 1
            assert not m.content.startswith('{"response"')  # the envelope is parsed away
    assert seen["call"] and seen["text"], seen


def test_gtc_005_none_gives_text(plain):
    for seed in range(4):
        r = plain.chat.completions.create(model="hf", messages=ASK, tools=TOOLS, tool_choice="none",
                                          seed=seed, max_tokens=30)
        m = r.choices[0].message
        assert not m.tool_calls and isinstance(m.content, str)
        assert not m.content.startswith("{")


def test_gtc_006_streamed_equals_non_streamed(plain):
    for choice, seed in (("required", 0), (NAMED, 1), ("auto", 2), ("auto", 5), ("none", 3)):
        kwargs = dict(model="hf", messages=ASK, tools=TOOLS, tool_choice=choice, seed=seed, max_tokens=40)
        whole = plain.chat.completions.create(**kwargs).choices[0]
        content, calls, finish = streamed(plain, **kwargs)
        assert calls == calls_of(whole.message)
        assert content == (whole.message.content or "")
        assert finish == whole.finish_reason


def test_gtc_007_response_format_with_generic_tools_is_a_400(plain):
    with pytest.raises(openai.BadRequestError) as err:
        plain.chat.completions.create(model="hf", messages=ASK, tools=TOOLS, max_tokens=5,
                                      response_format={"type": "json_object"})
    assert err.value.body["param"] == "tools"


# -- history and sessions -------------------------------------------------------------------
def _call_message(message) -> dict:
    return {"role": "assistant", "content": message.content,
            "tool_calls": [c.model_dump() for c in message.tool_calls]}


def test_gtc_008_calls_and_results_sent_back_render_as_generated(plain_served):
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}}]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": calls},
               {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"},
               {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
               {"role": "assistant", "content": 'It is "sunny".'}, {"role": "user", "content": "Thanks"}]
    text = render_chat_text(plain_served, history, TOOLS)
    assert ('<|im_start|>assistant\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "get_time", "arguments": {"zone": "CET"}}]}<|im_end|>') in text
    assert ('<|im_start|>user\n{"tool_response": {"name": "get_weather", "content": "22 C, sunny"}}\n'
            '{"tool_response": {"name": "get_time", "content": "12:00"}}<|im_end|>') in text  # one turn
    assert '<|im_start|>assistant\n{"response": "It is \\"sunny\\"."}<|im_end|>' in text


def test_gtc_009_agent_loop_in_a_session_is_one_node(plain_server):
    api = SessionsAPI(plain_server.base_url)
    try:
        uid = api.create()
        assert api.http.get("/sessions").json()["sessions"][0]["tool_parser"] == "generic"
        messages = list(ASK)
        first = api.chat(uid, messages, tools=TOOLS, tool_choice=NAMED, max_tokens=60, seed=0)
        message = first["choices"][0]["message"]
        assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_time"]
        messages += [message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "12:00"}]
        second = api.chat(uid, messages, tools=TOOLS, tool_choice="none", max_tokens=20, seed=1)
        reply = second["choices"][0]["message"]
        assert not reply.get("tool_calls")
        messages += [{"role": "assistant", "content": reply["content"]}, {"role": "user", "content": "And Paris?"}]
        third = api.chat(uid, messages, tools=TOOLS, tool_choice="required", max_tokens=60, seed=2)
        assert third["choices"][0]["finish_reason"] in ("tool_calls", "length")
        nodes = api.nodes(uid)
        assert len(nodes) == 1
        assert nodes[0]["metadata"]["num_steps"] == 3
        assert '{"tool_calls": [{"name": "get_time", "arguments": {"zone": "CET"}}]}' in nodes[0]["full_text"]
    finally:
        api.delete_all()
        api.close()


# -- the real default model -------------------------------------------------------------------
SMOL_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
SMOL_NAMED = {"type": "function", "function": {"name": "get_weather"}}


def test_gtc_010_default_model_calls_tools(smol):
    model = "SmolLM2-135M-Instruct"
    kwargs = dict(model=model, messages=ASK, tools=[SMOL_WEATHER], temperature=0, max_tokens=60)
    named = smol.chat.completions.create(tool_choice=SMOL_NAMED, **kwargs).choices[0]
    assert named.finish_reason == "tool_calls"
    assert calls_of(named.message) == [("get_weather", {"city": "Paris"})]
    required = smol.chat.completions.create(tool_choice="required", parallel_tool_calls=False, **kwargs).choices[0]
    assert calls_of(required.message) == [("get_weather", {"city": "Paris"})]
    content, calls, finish = streamed(smol, tool_choice=SMOL_NAMED, **kwargs)
    assert (content, calls, finish) == ("", [("get_weather", {"city": "Paris"})], "tool_calls")
    auto = smol.chat.completions.create(tool_choice="auto", **kwargs).choices[0]
    assert auto.message.tool_calls or (auto.message.content and not auto.message.content.startswith("{"))


def test_gtc_011_default_model_uses_a_tool_result_sent_back(smol):
    model = "SmolLM2-135M-Instruct"
    first = smol.chat.completions.create(model=model, messages=ASK, tools=[SMOL_WEATHER], tool_choice=SMOL_NAMED,
                                         temperature=0, max_tokens=60).choices[0].message
    messages = [*ASK, _call_message(first),
                {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "22 degrees C and sunny"}]
    r = smol.chat.completions.create(model=model, messages=messages, tools=[SMOL_WEATHER], tool_choice="none",
                                     temperature=0, max_tokens=60).choices[0]
    assert not r.message.tool_calls
    assert "22" in r.message.content
