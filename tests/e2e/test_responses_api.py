"""OpenAI's Responses API (`/v1/responses`) through a real server and the official `openai`
client: each request must give what the equivalent chat completion gives (same prompt
tokens, same greedy text), shaped as Responses objects and typed stream events.
(Contract: contracts/responses-api.md, clauses RSP-*.)"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
import trio

from support.paths import TEMPLATES_DIR
from support.server_thread import ServerThread
from triolm.loading.served_model import load_served_model
from triolm.protocol.responses_store import ResponseStore
from triolm.settings import ServerSettings

TEMPLATES = TEMPLATES_DIR
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                          "required": ["city"], "additionalProperties": False}}
CHAT_WEATHER = {"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters",
                                                                         "strict")}}
CITY = {"type": "json_schema", "name": "city", "strict": True,
        "schema": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                   "required": ["city"], "additionalProperties": False}}
GREEDY = {"temperature": 0, "max_output_tokens": 8}


def chat(client, messages, **kwargs):
    return client.chat.completions.create(model="hf", messages=messages, **kwargs)


# -- RSP-001 / RSP-002: input, instructions, max_output_tokens, sampling -----------------------
def test_rsp_001_text_input_and_instructions_run_as_the_equivalent_chat(client):
    r = client.responses.create(model="hf", input="Hello there", instructions="Answer briefly.", **GREEDY)
    c = chat(client, [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there"}],
             temperature=0, max_tokens=8)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.output_text == c.choices[0].message.content and r.output_text
    assert r.usage.input_tokens == c.usage.prompt_tokens and r.usage.output_tokens == 8
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.instructions == "Answer briefly." and r.max_output_tokens == 8 and r.temperature == 0


def test_rsp_002_message_list_input_with_roles_and_parts(client):
    items = [{"role": "developer", "content": "Be terse."},
             {"role": "user", "content": [{"type": "input_text", "text": "Name "},
                                          {"type": "input_text", "text": "a city"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Rome."}]},
             {"role": "user", "content": "Another"}]
    r = client.responses.create(model="hf", input=items, **GREEDY)
    c = chat(client, [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a city"},
                      {"role": "assistant", "content": "Rome."}, {"role": "user", "content": "Another"}],
             temperature=0, max_tokens=8)
    assert r.output_text == c.choices[0].message.content
    assert r.usage.input_tokens == c.usage.prompt_tokens


# -- RSP-003 / RSP-004: streaming --------------------------------------------------------------
def test_rsp_003_stream_events_are_typed_ordered_and_numbered(client):
    whole = client.responses.create(model="hf", input="Hello there", **GREEDY)
    events = list(client.responses.create(model="hf", input="Hello there", stream=True, **GREEDY))
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == whole.output_text
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    done = [e for e in events if e.type == "response.output_text.done"][0]
    assert done.text == whole.output_text
    assert events[-1].response.output[0].content[0].text == whole.output_text


def test_rsp_004_stream_helper_sync_and_async_give_the_final_response(client, async_client):
    kwargs = dict(model="hf", input="Pick a city", temperature=0, max_output_tokens=30, text={"format": CITY})
    whole = client.responses.create(**kwargs)
    assert whole.status == "completed"
    with client.responses.stream(**kwargs) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == whole.output_text

    async def run_async():
        got = await async_client.responses.create(**kwargs)
        async with async_client.responses.stream(**kwargs) as stream:
            async for _ in stream:
                pass
            streamed = await stream.get_final_response()
        return got.output_text, streamed.output_text

    assert trio.run(run_async) == (whole.output_text, whole.output_text)


# -- RSP-005: text.format ----------------------------------------------------------------------
def test_rsp_005_json_schema_text_format_constrains_the_output(client):
    for seed_input in ("Pick a city", "Where to?", "Go"):
        r = client.responses.create(model="hf", input=seed_input, max_output_tokens=40, text={"format": CITY})
        assert r.status == "completed"
        jsonschema.validate(json.loads(r.output_text), CITY["schema"])
    obj = client.responses.create(model="hf", input="Go", max_output_tokens=40,
                                  text={"format": {"type": "json_object"}})
    assert obj.output_text.lstrip().startswith("{")


# -- RSP-006 / RSP-007: function tools ---------------------------------------------------------
def test_rsp_006_function_call_item_and_function_call_output_round_trip(client):
    r = client.responses.create(model="hf", input="Weather in Paris?", tools=[WEATHER], max_output_tokens=60,
                                tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False)
    [call] = [item for item in r.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_") and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert r.status == "completed"
    follow = [{"role": "user", "content": "Weather in Paris?"},
              {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
              {"type": "function_call_output", "call_id": call.call_id, "output": "22 C and sunny"}]
    r2 = client.responses.create(model="hf", input=follow, tools=[WEATHER], **GREEDY)
    c = chat(client, [{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": call.call_id, "type": "function",
                           "function": {"name": call.name, "arguments": call.arguments}}]},
                      {"role": "tool", "tool_call_id": call.call_id, "content": "22 C and sunny"}],
             tools=[CHAT_WEATHER], tool_choice="none", temperature=0, max_tokens=8)
    assert r2.usage.input_tokens == c.usage.prompt_tokens


def test_rsp_007_streamed_function_call_has_argument_deltas_equal_to_the_item(client):
    kwargs = dict(model="hf", input="Weather?", tools=[WEATHER], max_output_tokens=60, temperature=0,
                  tool_choice="required", parallel_tool_calls=False)
    whole = client.responses.create(**kwargs)
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [call] = [item for item in final.output if item.type == "function_call"]
    [whole_call] = [item for item in whole.output if item.type == "function_call"]
    assert args == call.arguments == whole_call.arguments
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call" and added.item.name == "get_weather"


# -- RSP-008 / RSP-009: previous_response_id and its store ---------------------------------------
def test_rsp_008_previous_response_id_continues_the_stored_conversation(client):
    first = client.responses.create(model="hf", input="Hello there", instructions="Not carried.", **GREEDY)
    second = client.responses.create(model="hf", input="And then?", previous_response_id=first.id, **GREEDY)
    c = chat(client, [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first.output_text},
                      {"role": "user", "content": "And then?"}], temperature=0, max_tokens=8)
    assert second.usage.input_tokens == c.usage.prompt_tokens
    assert second.output_text == c.choices[0].message.content
    assert second.previous_response_id == first.id


def test_rsp_009_unknown_expired_or_evicted_previous_response_is_a_404(client, make_server):
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model="hf", input="x", previous_response_id="resp_nope", max_output_tokens=2)
    assert exc.value.body["code"] == "previous_response_not_found"
    assert exc.value.body["param"] == "previous_response_id"
    small = make_server(responses_store_entries=1)
    small_client = openai.OpenAI(base_url=small.base_url + "/v1", api_key="unused", max_retries=0)
    first = small_client.responses.create(model="hf", input="one", max_output_tokens=2)
    small_client.responses.create(model="hf", input="two", max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):  # evicted by the second
        small_client.responses.create(model="hf", input="x", previous_response_id=first.id, max_output_tokens=2)
    brief = make_server(responses_store_ttl=0.0)
    brief_client = openai.OpenAI(base_url=brief.base_url + "/v1", api_key="unused", max_retries=0)
    gone = brief_client.responses.create(model="hf", input="one", max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):  # expired at once
        brief_client.responses.create(model="hf", input="x", previous_response_id=gone.id, max_output_tokens=2)
    unstored = client.responses.create(model="hf", input="one", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_rsp_009_store_is_bounded_in_count_bytes_and_age():
    now = [0.0]
    store = ResponseStore(max_entries=3, max_bytes=100, ttl=10.0, clock=lambda: now[0])
    for i in range(5):
        assert store.put(f"r{i}", {}, [], 10)
    assert len(store) == 3 and store.get("r1") is None and store.get("r4") is not None
    assert not store.put("huge", {}, [], 101) and store.get("huge") is None
    store.put("big", {}, [], 90)  # past the byte budget: the oldest go
    assert store.bytes <= 100 and store.get("r2") is None and store.get("big") is not None
    now[0] = 10.0
    assert store.get("big") is None and len(store) == 0


# -- RSP-010: GET and DELETE ----------------------------------------------------------------------
def test_rsp_010_get_and_delete_a_stored_response(client):
    r = client.responses.create(model="hf", input="Hello", max_output_tokens=3, temperature=0)
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


# -- RSP-011: reasoning items ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def thinking_client(tiny_model):
    served = load_served_model(ServerSettings(model=str(tiny_model("qwen2").hf_dir),
                                              chat_template=str(TEMPLATES / "chatml_open_think.jinja")))
    with ServerThread(ServerSettings(model=served.path, max_num_seqs=4), served) as srv:
        yield openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0)


def test_rsp_011_thinking_becomes_a_reasoning_item_streamed_as_reasoning_text(thinking_client):
    c = chat(thinking_client, [{"role": "user", "content": "Think"}], temperature=0, max_tokens=8)
    thinking = c.choices[0].message.model_extra["reasoning_content"]
    assert thinking
    r = thinking_client.responses.create(model="hf", input="Think", **GREEDY)
    [item] = r.output
    assert item.type == "reasoning" and item.content[0].text == thinking and item.id.startswith("rs_")
    events = list(thinking_client.responses.create(model="hf", input="Think", stream=True, **GREEDY))
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == thinking
    assert [e.item.type for e in events if e.type == "response.output_item.done"] == ["reasoning"]


# -- RSP-012: fail closed ----------------------------------------------------------------------------
@pytest.mark.parametrize("extra, param", [
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"tools": [{"type": "web_search"}]}, "tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "input"),
    ({"text": {"format": {"type": "grammar"}}}, "text"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"tool_choice": "required"}, "tool_choice"),
])
def test_rsp_012_what_cannot_be_honoured_is_a_400_naming_it(server, extra, param):
    body = {"model": "hf", "input": "Hello", "max_output_tokens": 4, **extra}
    r = httpx.post(server.base_url + "/v1/responses", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
