"""Reasoning models: `<think>…</think>` is split into `reasoning_content` (streamed as
`delta.reasoning_content`), `content` keeps the answer, tool calls after thinking still
parse, `chat_template_kwargs` reach the template, and a session over a template that drops
earlier thinking stays one node. A tiny random model with Qwen3's chat template writes
exact thinking because `guided_regex` forces it (constrained decoding).
(Contract: contracts/tools-and-reasoning.md, clauses RSN-*.)"""

from __future__ import annotations

import json
import random

import openai
import pytest

from support.paths import TEMPLATES_DIR
from support.server_thread import ServerThread
from support.sessions_api import SessionsAPI
from triolm.cli import build_parser, settings_from_args
from triolm.errors import ModelLoadError
from triolm.loading.served_model import load_served_model
from triolm.prompting.grammar.generic_tools import generic_tools_grammar
from triolm.prompting.reasoning import ReasoningSplitter, detect_reasoning_parser, get_reasoning_format
from triolm.protocol.chat_output import shape_message
from triolm.settings import ServerSettings

TEMPLATES = TEMPLATES_DIR
QWEN3 = (TEMPLATES / "qwen3.jinja").read_text()
ASK = [{"role": "user", "content": "What is the capital of France?"}]
THINK_THEN_ANSWER = r"<think>\nThe user asks about France\.\n</think>\n\nParis\."
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris"]}}, "required": ["city"]}}}


def qwen3_served(tiny_model, **settings):
    return load_served_model(ServerSettings(model=str(tiny_model("qwen2").hf_dir),
                                            chat_template=str(TEMPLATES / "qwen3.jinja"), **settings))


@pytest.fixture(scope="module")
def thinking_server(tiny_model):
    served = qwen3_served(tiny_model)
    with ServerThread(ServerSettings(model=served.path, max_num_seqs=8), served) as srv:
        yield srv


@pytest.fixture
def client(thinking_server):
    return openai.OpenAI(base_url=thinking_server.base_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def think_first(thinking_server) -> dict:
    """Greedy, with the first token of "<think>" preferred: with tools offered (tool_choice
    auto) the grammar allows the forced answer or a native tool call, and both start "<"."""
    first = thinking_server.served.tokenizer.encode("<think>", add_special_tokens=False)[0]
    return {"logit_bias": {str(first): 100}, "temperature": 0}


def forced(client, regex: str, stream: bool = False, **kwargs):
    return client.chat.completions.create(model="hf", messages=kwargs.pop("messages", ASK), max_tokens=80,
                                          stream=stream, extra_body={"guided_regex": regex,
                                                                     **kwargs.pop("extra_body", {})}, **kwargs)


# -- detection and the flag -------------------------------------------------------------------
def test_rsn_001_detected_from_the_template_and_overridden_by_the_flag(thinking_server, tiny_model):
    assert thinking_server.served.reasoning == get_reasoning_format("qwen3")
    assert detect_reasoning_parser((TEMPLATES / "smollm2.jinja").read_text()) is None
    assert detect_reasoning_parser("{{ '<｜Assistant｜><think>\\n' }}…</think>") == "deepseek_r1"
    assert qwen3_served(tiny_model, reasoning_parser="none").reasoning is None
    with pytest.raises(ModelLoadError, match="unknown reasoning parser 'nope'"):  # e.g. from TRIOLM_REASONING_PARSER
        qwen3_served(tiny_model, reasoning_parser="nope")
    args = build_parser().parse_args(["serve", "m.gguf", "--reasoning-parser", "deepseek_r1"])
    assert settings_from_args(args).reasoning_parser == "deepseek_r1"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "m.gguf", "--reasoning-parser", "nope"])


# -- the split ------------------------------------------------------------------------------
def test_rsn_002_thinking_goes_to_reasoning_content(client):
    message = forced(client, THINK_THEN_ANSWER).choices[0].message
    assert message.content == "Paris."
    assert message.model_extra["reasoning_content"] == "The user asks about France."


def test_rsn_003_streamed_as_delta_reasoning_content_then_content(client):
    kinds, reasoning, content = [], [], []
    for chunk in forced(client, THINK_THEN_ANSWER, stream=True):
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            if extra.get("reasoning_content"):
                kinds.append("reasoning")
                reasoning.append(extra["reasoning_content"])
            if choice.delta.content:
                kinds.append("content")
                content.append(choice.delta.content)
    assert "".join(reasoning) == "The user asks about France." and "".join(content) == "Paris."
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")  # all thinking before the answer
    assert "<think>" not in "".join(reasoning + content)


def test_rsn_004_tool_calls_after_thinking_still_parse(client, think_first):
    call = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\n</tool_call>'
    regex = r"<think>\nI need the weather\.\n</think>\n\n" + call
    r = forced(client, regex, tools=[WEATHER], **think_first).choices[0]
    assert r.finish_reason == "tool_calls"
    assert r.message.model_extra["reasoning_content"] == "I need the weather."
    [tc] = r.message.tool_calls
    assert (tc.function.name, json.loads(tc.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert not r.message.content
    stream_calls, stream_reasoning = [], []
    for chunk in forced(client, regex, stream=True, tools=[WEATHER], **think_first):
        for choice in chunk.choices:
            stream_reasoning.append((choice.delta.model_extra or {}).get("reasoning_content") or "")
            stream_calls += [c.function.name for c in choice.delta.tool_calls or [] if c.function.name]
    assert stream_calls == ["get_weather"] and "".join(stream_reasoning) == "I need the weather."


def test_rsn_005_chat_template_kwargs_reach_the_template(client):
    thinking = forced(client, r"Paris\.")
    plain = forced(client, r"Paris\.", extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    # Qwen3's template adds an empty think block to the prompt when thinking is off.
    assert plain.usage.prompt_tokens > thinking.usage.prompt_tokens
    assert plain.choices[0].message.content == "Paris."
    assert plain.choices[0].message.model_extra["reasoning_content"] is None


def test_rsn_006_reasoning_parser_none_keeps_thinking_in_content(tiny_model):
    served = qwen3_served(tiny_model, reasoning_parser="none")
    with ServerThread(ServerSettings(model=served.path), served) as srv:
        c = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0)
        message = forced(c, THINK_THEN_ANSWER).choices[0].message
    assert message.content == "<think>\nThe user asks about France.\n</think>\n\nParis."
    assert "reasoning_content" not in (message.model_extra or {})


@pytest.mark.parametrize("text, starts_inside, expected", [
    ("<think>\nA b\n</think>\n\nAnswer.", False, ("A b", "Answer.")),
    ("  <think>x</think>y", False, ("x", "y")),
    ("Answer <think>x</think>", False, ("", "Answer <think>x</think>")),  # only at the start
    ("<think>\ncut short by max_tok", False, ("cut short by max_tok", "")),
    ("\nA b\n</think>\n\nAnswer.", True, ("A b", "Answer.")),  # the prompt opened the block
    ("no thinking at all", False, ("", "no thinking at all")),
    ("<thi", False, ("", "<thi")),
])
def test_rsn_007_split_streamed_in_any_pieces_equals_whole(text, starts_inside, expected):
    fmt = get_reasoning_format("qwen3")
    assert ReasoningSplitter(fmt, starts_inside).split(text) == expected
    rng = random.Random(0)
    for _ in range(50):
        splitter, parts, i = ReasoningSplitter(fmt, starts_inside), [], 0
        while i < len(text):
            j = i + rng.randint(1, 4)
            parts += splitter.push(text[i:j])
            i = j
        parts += splitter.finish()
        got = ("".join(t for k, t in parts if k == "reasoning"), "".join(t for k, t in parts if k == "content"))
        assert got == expected


# -- sessions ---------------------------------------------------------------------------------
def test_rsn_008_session_over_a_thinking_model_is_one_node(thinking_server, think_first):
    """Qwen3's template drops the thinking of earlier turns from the history it renders; the
    session renders the history from the node's raw text instead, so the turns chain."""
    api = SessionsAPI(thinking_server.base_url)
    try:
        uid = api.create()
        messages = list(ASK)
        first = api.chat(uid, messages, max_tokens=80, guided_regex=THINK_THEN_ANSWER,
                         tools=[WEATHER], **think_first)["choices"][0]["message"]
        assert first["content"] == "Paris." and first["reasoning_content"] == "The user asks about France."
        messages += [{"role": "assistant", "content": first["content"]},
                     {"role": "user", "content": "And Germany?"}]
        regex = r"<think>\nNow Germany\.\n</think>\n\n" \
                r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\n</tool_call>'
        second = api.chat(uid, messages, max_tokens=80, guided_regex=regex, tools=[WEATHER], **think_first)
        call = second["choices"][0]["message"]
        messages += [{"role": "assistant", "content": call["content"], "tool_calls": call["tool_calls"],
                      "reasoning_content": call["reasoning_content"]},
                     {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "sunny"}]
        third = api.chat(uid, messages, max_tokens=80, tools=[WEATHER], **think_first,
                         guided_regex=r"<think>\nIt is sunny\.\n</think>\n\nBerlin\.")
        assert third["choices"][0]["message"]["content"] == "Berlin.", third
        nodes = api.nodes(uid)
        assert len(nodes) == 1, [(n["full_text"], n["metadata"]) for n in nodes]
        node = nodes[0]
        assert node["metadata"]["num_steps"] == 3
        text = node["full_text"]
        for thought in ("The user asks about France.", "Now Germany.", "It is sunny."):
            assert f"<think>\n{thought}\n</think>" in text  # raw text, think blocks included
        # what the session fed the model for turn 2 is the node of turn 1, token for token
        assert node["metadata"]["steps"][1]["extended_node"] is not None
    finally:
        api.delete_all()
        api.close()


# -- thinking before the generic JSON tool format (templates without tool support) -----------
GENERIC_CALL = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'


@pytest.mark.parametrize("prompt_end, output, allowed", [
    ("assistant\n<think>\n", 'a { "b" < </thin\n</think>\n\n' + GENERIC_CALL, True),  # the prompt opened it
    ("assistant\n<think>\n", GENERIC_CALL, False),  # still inside the thinking: no end yet
    ("assistant\n", "<think>\nhmm\n</think>\n\n" + GENERIC_CALL, True),  # may think first
    ("assistant\n", GENERIC_CALL, True),  # or not
    ("assistant\n<think>\n\n</think>\n\n", "<think>x</think>" + GENERIC_CALL, False),  # thinking turned off
    ("assistant\n<think>\n\n</think>\n\n", GENERIC_CALL, True),
])
def test_rsn_009_generic_tool_grammar_leaves_room_for_thinking(served_model, prompt_end, output, allowed):
    """Real llguidance matcher, real tokenizer: which outputs the required-call grammar takes."""
    fmt = get_reasoning_format("qwen3")
    grammar = generic_tools_grammar(served_model.grammar, [WEATHER], "required", reasoning=fmt,
                                    prompt_text="<|im_start|>" + prompt_end)
    matcher = grammar.new_matcher()
    try:
        for token in served_model.tokenizer.encode(output, add_special_tokens=False):
            matcher.accept_token(token)
        taken = matcher.is_terminated()
    except ValueError:
        taken = False
    assert taken == allowed


def test_rsn_010_thinking_then_a_generic_call_parses():
    fmt = get_reasoning_format("qwen3")
    message, called = shape_message("hmm\n</think>\n\n" + GENERIC_CALL, tool_parser="generic", tool_names=None,
                                    reasoning=fmt, prompt_text="<|im_start|>assistant\n<think>\n")
    assert called and message["reasoning_content"] == "hmm" and message["content"] is None
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather"]
