"""Tool calling and structured output through the real server and the official client,
with a random-weight model: only constrained decoding can make these pass."""

import json

import httpx
import jsonschema
import pytest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "parameters": {"type": "object", "properties": {
        "q": {"type": "string", "maxLength": 8}, "limit": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["q", "limit"], "additionalProperties": False}}}
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 10},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "maxItems": 3}},
    "required": ["name", "age", "tags"], "additionalProperties": False}
MESSAGES = [{"role": "user", "content": "What's the weather in Paris?"}]


def test_model_uses_the_hermes_parser(served_model):
    assert served_model.tool_parser == "hermes"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_named_tool_choice_gives_a_valid_call(client, served_model, seed):
    r = client.chat.completions.create(
        model=served_model.name, messages=MESSAGES, tools=[WEATHER, SEARCH], seed=seed,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=200)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_required_tool_choice_calls_an_allowed_tool(client, served_model):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, SEARCH)}
    for seed in range(3):
        r = client.chat.completions.create(model=served_model.name, messages=MESSAGES, seed=seed,
                                           tools=[WEATHER, SEARCH], tool_choice="required", max_tokens=300)
        calls = r.choices[0].message.tool_calls
        assert calls
        # parallel calls may run into max_tokens: then the reply was cut short ("length"),
        # and the calls completed before the cut are kept
        cut = r.usage.completion_tokens == 300
        assert r.choices[0].finish_reason == ("length" if cut else "tool_calls")
        for call in calls:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_streamed_tool_call_equals_non_streamed(client, served_model):
    kwargs = dict(model=served_model.name, messages=MESSAGES, tools=[WEATHER], seed=5, max_tokens=200,
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    full = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    name, args, ids, finish = None, "", set(), None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or ():
            assert tc.index == 0
            if tc.id:
                ids.add(tc.id)
            if tc.function and tc.function.name:
                name = tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert (name, args) == (full.function.name, full.function.arguments)
    assert len(ids) == 1 and finish == "tool_calls"


def test_tool_choice_none_returns_raw_text(client, served_model):
    r = client.chat.completions.create(model=served_model.name, messages=MESSAGES, tools=[WEATHER],
                                       tool_choice="none", max_tokens=8, seed=1)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason in ("length", "stop")


def test_tool_call_round_trip_renders_the_generated_text(client, served_model, server):
    """The call the server returned, sent back as an assistant message, renders to exactly
    the text the model generated. (Token ids may differ: the grammar lets the model spell a
    string with other token boundaries than the tokenizer's; sessions keep the generated
    ids for that reason.)"""
    r = client.chat.completions.create(
        model=served_model.name, messages=MESSAGES, tools=[WEATHER], seed=3, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        logprobs=True, extra_body={"return_tokens_as_token_ids": True})
    generated = [int(t.token.split(":")[1]) for t in r.choices[0].logprobs.content]
    call = r.choices[0].message.tool_calls[0]
    history = MESSAGES + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}]

    def text_of(messages, add_generation_prompt):
        tokens = httpx.post(server.base_url + "/tokenize", json={
            "messages": messages, "tools": [WEATHER], "add_generation_prompt": add_generation_prompt}).json()["tokens"]
        return httpx.post(server.base_url + "/detokenize", json={"tokens": tokens}).json()["prompt"]

    generated_text = httpx.post(server.base_url + "/detokenize", json={"tokens": generated}).json()["prompt"]
    assert generated_text.startswith("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {")
    assert text_of(history, False).startswith(text_of(MESSAGES, True) + generated_text)


def test_json_schema_output_validates_and_streams_the_same(client, served_model):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(3):
        kwargs = dict(model=served_model.name, seed=seed, max_tokens=300, response_format=fmt,
                      messages=[{"role": "user", "content": "Describe someone"}])
        r = client.chat.completions.create(**kwargs)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
        streamed = "".join(c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(stream=True, **kwargs) if c.choices)
        assert streamed == r.choices[0].message.content


def test_structured_output_on_completions_and_guided_choice(client, served_model):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    r = client.completions.create(model=served_model.name, prompt="Person:", max_tokens=300, seed=4,
                                  extra_body={"response_format": fmt})
    jsonschema.validate(json.loads(r.choices[0].text), PERSON)
    r = client.chat.completions.create(model=served_model.name, messages=MESSAGES, max_tokens=20,
                                       extra_body={"guided_choice": ["sunny", "rainy", "foggy"]})
    assert r.choices[0].message.content in ("sunny", "rainy", "foggy")


def test_json_object_is_an_object_or_a_prefix_of_one(client, served_model):
    r = client.chat.completions.create(model=served_model.name, messages=MESSAGES, max_tokens=60, seed=2,
                                       response_format={"type": "json_object"})
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "x", "parameters": "not a schema"}}]}, "tools"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
])
def test_invalid_grammar_requests_are_400_naming_the_field(server, served_model, body, param):
    r = httpx.post(server.base_url + "/v1/chat/completions",
                   json={"model": served_model.name, "messages": MESSAGES, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
