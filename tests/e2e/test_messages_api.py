"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) through a real
server and the official `anthropic` client: each request must give what the equivalent
chat completion gives (same prompt tokens, same greedy text), shaped as Anthropic
messages, content blocks and stream events; errors in Anthropic's shape.
(Contract: contracts/messages-api.md, clauses MSG-*.)"""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pytest
import trio

from support.paths import TEMPLATES_DIR
from support.server_thread import ServerThread
from triolm.loading.served_model import load_served_model
from triolm.protocol.messages_request import CountTokensRequest, chat_messages
from triolm.settings import ServerSettings

TEMPLATES = TEMPLATES_DIR
GREEDY = {"temperature": 0}  # the client has no sampling arguments: sent as extra body fields
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                            "required": ["city"], "additionalProperties": False}}
CHAT_WEATHER = {"type": "function", "function": {"name": WEATHER["name"], "description": WEATHER["description"],
                                                 "parameters": WEATHER["input_schema"]}}
FORCE_WEATHER = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}


@pytest.fixture
def claude(server):
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


def chat(client, messages, **kwargs):
    return client.chat.completions.create(model="hf", messages=messages, **kwargs)


# -- MSG-001: a message is the equivalent chat ---------------------------------------------------
def test_msg_001_system_and_messages_run_as_the_equivalent_chat(claude, client):
    m = claude.messages.create(model="hf", max_tokens=8, system="Answer briefly.",
                               messages=[{"role": "user", "content": "Hello there"},
                                         {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
                                         {"role": "user", "content": [{"type": "text", "text": "More"}]}],
                               extra_body=GREEDY)
    c = chat(client, [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there"},
                      {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "More"}],
             temperature=0, max_tokens=8)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    [block] = m.content
    assert block.type == "text" and block.text == c.choices[0].message.content
    assert m.stop_reason == "max_tokens" and m.stop_sequence is None
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == c.usage.prompt_tokens
    assert m.usage.output_tokens == 8
    system_blocks = claude.messages.create(model="hf", max_tokens=8,
                                           system=[{"type": "text", "text": "Answer briefly."}],
                                           messages=[{"role": "user", "content": "Hello there"},
                                                     {"role": "assistant", "content": "Hi."},
                                                     {"role": "user", "content": "More"}], extra_body=GREEDY)
    assert system_blocks.content[0].text == block.text


# -- MSG-002: streaming ------------------------------------------------------------------------
def test_msg_002_stream_events_in_order_sync_and_async(claude, server):
    kwargs = dict(model="hf", max_tokens=8, messages=[{"role": "user", "content": "Hello there"}], extra_body=GREEDY)
    whole = claude.messages.create(**kwargs)
    events = list(claude.messages.create(stream=True, **kwargs))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == whole.content[0].text
    delta = events[-2]
    assert delta.delta.stop_reason == "max_tokens" and delta.usage.output_tokens == 8
    with claude.messages.stream(**kwargs) as stream:
        assert "".join(stream.text_stream) == whole.content[0].text
        assert stream.get_final_message().content[0].text == whole.content[0].text
    raw = httpx.post(server.base_url + "/v1/messages", json={**kwargs.pop("extra_body"), **kwargs, "stream": True},
                     timeout=30).text
    assert "event: ping\ndata: {\"type\": \"ping\"}" in raw  # as Anthropic's stream begins

    async def run_async():
        aclaude = anthropic.AsyncAnthropic(base_url=server.base_url, api_key="unused", max_retries=0)
        async with aclaude.messages.stream(**kwargs, extra_body=GREEDY) as stream:
            return (await stream.get_final_message()).content[0].text

    assert trio.run(run_async) == whole.content[0].text


# -- MSG-003: stop_sequences -----------------------------------------------------------------------
def test_msg_003_stop_sequence_ends_the_reply_and_is_named(claude):
    kwargs = dict(model="hf", max_tokens=8, messages=[{"role": "user", "content": "Hello there"}], extra_body=GREEDY)
    text = claude.messages.create(**kwargs).content[0].text
    stop = text.split()[1]
    m = claude.messages.create(stop_sequences=[stop], **kwargs)
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert m.content[0].text == text[:text.index(stop)]
    events = list(claude.messages.create(stop_sequences=[stop], stream=True, **kwargs))
    assert events[-2].delta.stop_reason == "stop_sequence" and events[-2].delta.stop_sequence == stop


# -- MSG-004 / MSG-005: tools ------------------------------------------------------------------------
def test_msg_004_forced_tool_gives_a_tool_use_block_streamed_as_input_json(claude):
    kwargs = dict(model="hf", max_tokens=60, tools=[WEATHER], tool_choice=FORCE_WEATHER,
                  messages=[{"role": "user", "content": "Weather in Paris?"}], extra_body=GREEDY)
    m = claude.messages.create(**kwargs)
    [use] = m.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.id
    jsonschema.validate(use.input, WEATHER["input_schema"])
    assert m.stop_reason == "tool_use"
    events = list(claude.messages.create(stream=True, **kwargs))
    start = next(e for e in events if e.type == "content_block_start")
    assert start.content_block.type == "tool_use" and start.content_block.name == "get_weather"
    partial = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta")
    assert json.loads(partial) == use.input
    with claude.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == use.input and final.stop_reason == "tool_use"


def test_msg_005_tool_use_and_tool_result_blocks_render_as_the_chat_tool_turns(claude, client):
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                                 {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                  "input": {"city": "Paris"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                             "content": [{"type": "text", "text": "22 C"}]},
                                            {"type": "text", "text": "Thanks"}]}]
    m = claude.messages.create(model="hf", max_tokens=8, tools=[WEATHER], tool_choice={"type": "none"},
                               messages=history, extra_body=GREEDY)
    expected = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "22 C"},
                {"role": "user", "content": "Thanks"}]
    assert chat_messages(CountTokensRequest(messages=history)) == expected
    c = chat(client, expected, tools=[CHAT_WEATHER], tool_choice="none", temperature=0, max_tokens=8)
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == c.usage.prompt_tokens
    count = claude.messages.count_tokens(model="hf", tools=[WEATHER], messages=history)
    assert count.input_tokens == c.usage.prompt_tokens


# -- MSG-006: count_tokens ----------------------------------------------------------------------------
def test_msg_006_count_tokens_is_the_prompt_the_message_would_run(claude, client):
    messages = [{"role": "user", "content": "Hello there"}]
    count = claude.messages.count_tokens(model="hf", system="Be brief.", messages=messages)
    c = chat(client, [{"role": "system", "content": "Be brief."}, *messages], max_tokens=1)
    assert count.input_tokens == c.usage.prompt_tokens


def test_msg_006_a_final_assistant_message_is_a_prefill_the_reply_continues(claude, client):
    messages = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Well,"}]
    m = claude.messages.create(model="hf", max_tokens=6, messages=messages, extra_body=GREEDY)
    c = chat(client, messages, temperature=0, max_tokens=6,
             extra_body={"continue_final_message": True, "add_generation_prompt": False})
    assert m.content[0].text == c.choices[0].message.content
    assert claude.messages.count_tokens(model="hf", messages=messages).input_tokens == c.usage.prompt_tokens


# -- MSG-007: x-api-key ---------------------------------------------------------------------------------
def test_msg_007_x_api_key_is_accepted_like_the_bearer_key(make_server):
    srv = make_server(api_key="sekrit")
    ok = anthropic.Anthropic(base_url=srv.base_url, api_key="sekrit", max_retries=0)
    assert ok.messages.count_tokens(model="hf", messages=[{"role": "user", "content": "hi"}]).input_tokens > 0
    with pytest.raises(anthropic.AuthenticationError) as exc:
        anthropic.Anthropic(base_url=srv.base_url, api_key="wrong", max_retries=0).messages.create(
            model="hf", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == "authentication_error"
    r = httpx.get(srv.base_url + "/v1/models", headers={"x-api-key": "sekrit"})
    assert r.status_code == 200  # every guarded route takes it


# -- MSG-008: errors in Anthropic's shape ----------------------------------------------------------------
@pytest.mark.parametrize("body, status, kind", [
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_request_error"),  # no max_tokens
    ({"max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_request_error"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, 400,
     "invalid_request_error"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, 400,
     "invalid_request_error"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "bash_20250124",
                                                                                     "name": "bash"}]}, 400,
     "invalid_request_error"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "thinking": {"type": "enabled",
                                                                                       "budget_tokens": 1024}}, 400,
     "invalid_request_error"),
    ({"model": "claude-nope", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}, 404,
     "not_found_error"),
])
def test_msg_008_errors_take_anthropics_shape(server, body, status, kind):
    r = httpx.post(server.base_url + "/v1/messages", json={"model": "hf", **body}, timeout=30)
    assert r.status_code == status, r.text
    data = r.json()
    assert data["type"] == "error" and data["error"]["type"] == kind and data["error"]["message"]
    chat_error = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": []}, timeout=30).json()
    assert "type" not in chat_error or chat_error["type"] != "error"  # other routes keep OpenAI's shape


def test_msg_008_client_raises_its_own_error_classes(claude):
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-nope", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="hf", max_tokens=4, messages=[{"role": "system", "content": "hi"}])


# -- MSG-009: thinking blocks ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def thinking_server(tiny_model):
    served = load_served_model(ServerSettings(model=str(tiny_model("qwen2").hf_dir),
                                              chat_template=str(TEMPLATES / "chatml_open_think.jinja")))
    with ServerThread(ServerSettings(model=served.path, max_num_seqs=4), served) as srv:
        yield srv


def test_msg_009_thinking_becomes_thinking_blocks(thinking_server):
    import openai

    oai = openai.OpenAI(base_url=thinking_server.base_url + "/v1", api_key="unused", max_retries=0)
    thinking = chat(oai, [{"role": "user", "content": "Think"}], temperature=0,
                    max_tokens=8).choices[0].message.model_extra["reasoning_content"]
    claude = anthropic.Anthropic(base_url=thinking_server.base_url, api_key="unused", max_retries=0)
    kwargs = dict(model="hf", max_tokens=8, messages=[{"role": "user", "content": "Think"}],
                  thinking={"type": "enabled", "budget_tokens": 1024}, extra_body=GREEDY)
    [block] = claude.messages.create(**kwargs).content
    assert block.type == "thinking" and block.thinking == thinking
    events = list(claude.messages.create(stream=True, **kwargs))
    assert "".join(e.delta.thinking for e in events if e.type == "content_block_delta") == thinking


# -- MSG-010: output_config.format ------------------------------------------------------------------
def test_msg_010_output_config_json_schema_constrains_the_text(claude):
    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
              "required": ["city"], "additionalProperties": False}
    m = claude.messages.create(model="hf", max_tokens=40, messages=[{"role": "user", "content": "A city?"}],
                               output_config={"format": {"type": "json_schema", "schema": schema}})
    jsonschema.validate(json.loads(m.content[0].text), schema)
    assert m.stop_reason == "end_turn"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="hf", max_tokens=4, messages=[{"role": "user", "content": "A city?"}],
                               output_config={"effort": "high"})
