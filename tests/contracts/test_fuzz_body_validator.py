"""Fuzzing the one body parser and validator (hypothesis): whatever JSON a client sends,
the answer is a checked request or an OpenAI-shaped 4xx — never another exception, which
the server would turn into a 500. Bounded: a fixed number of examples, well under 30 s.

The validator is called directly for speed (thousands of bodies); a small number of bodies
go through the real server as well, where rendering and generation follow.
Clause HOSTILE-VAL-010 of contracts/hostile-input.md.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triolm.http.body import parse_json_object
from triolm.protocol.errors import APIError
from triolm.protocol.plan import resolve_chat, resolve_completion
from triolm.protocol.schemas import ChatCompletionRequest, CompletionRequest
from triolm.protocol.validation import ModelInfo, parse_request

LIMITS = ModelInfo(vocab_size=1000, max_model_len=2048, max_n=16, max_queue=64, tool_parser="hermes")


def fuzz(max_examples: int, *health_checks: HealthCheck) -> settings:
    """Bounded by example count, never by a per-example deadline (the machine is shared)."""
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, *health_checks])

SAMPLING_KEYS = ["model", "n", "max_tokens", "stop", "temperature", "top_p", "top_k", "min_p",
                 "repetition_penalty", "presence_penalty", "frequency_penalty", "logit_bias", "seed",
                 "stream", "stream_options", "stop_token_ids", "ignore_eos", "min_tokens",
                 "skip_special_tokens", "return_tokens_as_token_ids", "response_format",
                 "guided_choice", "guided_regex", "guided_json", "user"]
CHAT_KEYS = SAMPLING_KEYS + ["messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools",
                             "tool_choice", "parallel_tool_calls", "add_generation_prompt",
                             "continue_final_message", "chat_template_kwargs"]
COMPLETION_KEYS = SAMPLING_KEYS + ["prompt", "echo", "logprobs", "suffix"]

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 2048, 10**9])
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
           | st.sampled_from(["required", "auto", "none", "user", "assistant", "tool", "text", "\ud800"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8) | st.sampled_from(CHAT_KEYS), inner, max_size=4),
                           max_leaves=12)
any_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "bot"]),
     "content": st.none() | st.text(max_size=20) | st.lists(st.fixed_dictionaries(
         {"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=8)}), max_size=2)},
    optional={"tool_call_id": scalars, "name": scalars, "tool_calls": json_values}), max_size=3)
valid_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "developer"]), "content": st.text(max_size=20)}),
    min_size=1, max_size=3)
messages = st.one_of(valid_messages, valid_messages, any_messages)
tools = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["function", "x"]), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["get_weather", "", "a b"]) | st.text(max_size=6)},
    optional={"parameters": json_values})}), max_size=2)
prompts = (st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3)
           | st.lists(st.integers(-5, 1200), max_size=5) | st.lists(st.lists(st.integers(-5, 1200), max_size=4), max_size=3))


INTS = {"n", "max_tokens", "top_k", "seed", "min_tokens", "top_logprobs", "max_completion_tokens"}
FLOATS = {"temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"}
BOOLS = {"stream", "ignore_eos", "skip_special_tokens", "return_tokens_as_token_ids", "echo",
         "parallel_tool_calls", "add_generation_prompt", "continue_final_message"}
edge_ints = st.integers(-3, 3000) | st.sampled_from([0, 1, 16, 17, 64, 65, 2047, 2048, 10**9, 2**63, -(2**63) - 1])
PLAUSIBLE = {
    "messages": messages, "tools": tools, "prompt": prompts,
    "chat_template_kwargs": st.dictionaries(
        st.sampled_from(["messages", "tools", "bos_token", "enable_thinking", "x"]), scalars, max_size=2),
    "logit_bias": st.dictionaries(st.sampled_from(["5", "x", "1000", "-1", "999", "1e3", " 7"]),
                                  st.floats(-100, 100) | st.just(150.0), min_size=1, max_size=2),
    "stop_token_ids": st.lists(st.integers(-3, 1003), max_size=3),
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=20),
    "tool_choice": st.sampled_from(["required", "auto", "none"])
    | st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries({"name": st.text(max_size=6)})}),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans(), "x": scalars}),
    "logprobs": st.booleans() | st.integers(-1, 21),
    **{k: edge_ints for k in INTS}, **{k: st.floats(-3, 3) for k in FLOATS},
    **{k: st.booleans() for k in BOOLS},
}


def _field_values(key: str):
    """Mostly a value of the field's own type (so the checks after parsing are reached),
    sometimes any JSON value."""
    plausible = PLAUSIBLE.get(key, json_values)
    return st.one_of(plausible, plausible, plausible, plausible, json_values)


def bodies(keys: list[str], required: str):
    """Dicts over the request's own keys (so fields and their combinations are reached),
    with an unknown key now and then; `required` (messages / prompt) nearly always."""
    chosen_keys = st.lists(st.sampled_from(keys) | st.text(max_size=6), max_size=6, unique=True)
    with_required = st.tuples(chosen_keys, st.integers(0, 9)).map(
        lambda t: [*t[0], required] if t[1] and required not in t[0] else t[0])
    return with_required.flatmap(lambda chosen: st.fixed_dictionaries({k: _field_values(k) for k in chosen}))


def assert_openai_4xx(err: APIError) -> None:
    assert 400 <= err.status < 500, err.body()
    body = err.body()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def validate(kind, raw: bytes) -> None:
    """Everything a route checks before it renders or tokenizes (the resolver), then the
    sampling params the engine would get, for the shortest and the longest prompt the
    context allows."""
    body = parse_request(kind, parse_json_object(raw))
    plan = resolve_chat(body, LIMITS) if kind is ChatCompletionRequest else resolve_completion(body, LIMITS)
    for prompt_len in (1, LIMITS.max_model_len - 1):
        try:
            max_tokens = plan.max_tokens_for(prompt_len)
        except APIError as exc:
            assert_openai_4xx(exc)
            continue
        plan.sampling_params(plan.n - 1, max_tokens)


def check_never_500(kind, raw: bytes) -> None:
    try:
        validate(kind, raw)
    except APIError as exc:
        assert_openai_4xx(exc)


@fuzz(250)
@given(data=bodies(CHAT_KEYS, "messages"))
def test_HOSTILE_VAL_010_fuzz_chat_bodies(data):
    check_never_500(ChatCompletionRequest, json.dumps(data).encode())


@fuzz(250)
@given(data=bodies(COMPLETION_KEYS, "prompt"))
def test_HOSTILE_VAL_010_fuzz_completion_bodies(data):
    check_never_500(CompletionRequest, json.dumps(data).encode())


@fuzz(300)
@given(raw=st.binary(max_size=64) | st.text(alphabet='[]{}",:0123456789.eE-+\\u truenalfs', max_size=200).map(str.encode)
       | json_values.map(lambda v: json.dumps(v).encode()))
def test_HOSTILE_VAL_010_fuzz_raw_bytes(raw):
    """Arbitrary bytes and JSON fragments: the parser answers a 400 or an object."""
    for kind in (ChatCompletionRequest, CompletionRequest):
        check_never_500(kind, raw)


# A sweep beside the random search: every field of a valid body set to every odd value
# (hypothesis rarely lands on one exact bad value inside an otherwise valid body).
ODD_VALUES = [None, True, False, 0, 1, -1, 16, 17, 65, 2047, 2048, 10**9, 2**63, 2**64, -(2**63) - 1,
              0.5, -0.5, 1e-9, 2.5, 1e308, "", "x", "5", "\ud800", "required", "auto", "none", [], [None],
              [1, 2], [-1], [10**6], ["x"], [[1]], [[]], {}, {"x": 1}, {"5": 1}, {"x": "y"}, {"5": 101},
              {"-1": 1}, {"1000": 1}, {"type": "function"}, {"type": "function", "function": {"name": "f"}},
              {"messages": 1}, {"include_usage": "yes"}, [{"role": "user"}], [{"role": "user", "content": 1}],
              [{"type": "function", "function": {"name": "f", "parameters": 1}}], [[[[[[]]]]]]]
CHAT_BASE = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION_BASE = {"prompt": "hi", "max_tokens": 4}


@pytest.mark.parametrize("kind,base,keys", [(ChatCompletionRequest, CHAT_BASE, CHAT_KEYS),
                                            (CompletionRequest, COMPLETION_BASE, COMPLETION_KEYS)],
                         ids=["chat", "completion"])
def test_HOSTILE_VAL_010_every_field_with_every_odd_value(kind, base, keys):
    seen = set()
    for key in keys:
        for value in ODD_VALUES:
            for body in ({**base, key: value}, {**base, key: value, "max_tokens": None}):
                try:
                    validate(kind, json.dumps(body).encode())
                    seen.add(200)
                except APIError as exc:
                    assert_openai_4xx(exc)
                    seen.add(exc.status)
    assert seen == {200, 400}


# -- through the real server -------------------------------------------------------------
GRAMMAR_KEYS = {"response_format", "guided_choice", "guided_regex", "guided_json", "tool_choice"}


def _short(data: dict) -> dict:
    """Keep a generated request short on the real server: a few tokens, no grammar
    compile (grammar limits are tested with the grammar layer)."""
    body = {k: v for k, v in data.items() if k not in GRAMMAR_KEYS and k != "max_completion_tokens"}
    body["max_tokens"] = 2
    return body


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c


def _assert_served(r: httpx.Response, stream: bool) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    elif stream:
        assert r.text.rstrip().endswith("data: [DONE]")
        assert "internal_server_error" not in r.text
    else:
        assert r.json()["choices"]


@fuzz(25, HealthCheck.function_scoped_fixture)
@given(chat=bodies(CHAT_KEYS, "messages"), completion=bodies(COMPLETION_KEYS, "prompt"))
def test_HOSTILE_VAL_010_fuzz_through_the_server(http, chat, completion):
    for path, data in (("/v1/chat/completions", _short(chat)), ("/v1/completions", _short(completion))):
        r = http.post(path, content=json.dumps(data).encode(), headers={"content-type": "application/json"})
        _assert_served(r, stream=data.get("stream") is True)
