"""The OpenAI API as the official `openai` client (sync and async) and httpx meet it,
against a real hypercorn server on 127.0.0.1 serving the tiny qwen2 model.

Clause ids (OAI-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

MSGS = [{"role": "user", "content": "Tell me a story about a cat"}]


def sse_events(http: httpx.Client, path: str, body: dict) -> list[str]:
    """Raw `data:` payloads of an SSE response, in order (the last one is `[DONE]`)."""
    with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]


def chat_prompt_tokens(http: httpx.Client, messages: list[dict]) -> int:
    return http.post("/tokenize", json={"messages": messages}).json()["count"]


# -- models -----------------------------------------------------------------------------
def test_models_list_and_retrieve(client, served_model):
    models = client.models.list()
    assert [m.id for m in models.data] == [served_model.name]
    assert models.data[0].object == "model"
    assert client.models.retrieve(served_model.name).id == served_model.name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# -- chat ---------------------------------------------------------------------------------
def test_chat_response_shape_ids_and_exact_usage(client, http, served_model):
    """OAI-USAGE-001, OAI-ID-001."""
    r = client.chat.completions.create(model=served_model.name, messages=MSGS, max_tokens=7,
                                       temperature=0, logprobs=True, extra_body={"ignore_eos": True})
    assert r.id.startswith("chatcmpl-") and len(r.id) > len("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == served_model.name
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert r.usage.prompt_tokens == chat_prompt_tokens(http, MSGS)
    assert r.usage.completion_tokens == 7 == len(choice.logprobs.content)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7


def test_max_completion_tokens_wins_over_max_tokens(client, served_model):
    r = client.chat.completions.create(model=served_model.name, messages=MSGS, max_tokens=9,
                                       max_completion_tokens=4, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 4
    assert r.choices[0].finish_reason == "length"


def test_chat_n_choices(client, served_model):
    r = client.chat.completions.create(model=served_model.name, messages=MSGS, max_tokens=5, n=3,
                                       seed=11, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 15
    # each choice gets its own sampler seed: with a 131k vocabulary they differ
    assert len({c.message.content for c in r.choices}) > 1


def test_chat_stream_shape_and_equals_non_streamed(client, http, served_model):
    """OAI-STREAM-001: role first, content deltas, a finish chunk, usage chunk, [DONE];
    streamed text == non-streamed text for the same seed."""
    kwargs = dict(model=served_model.name, messages=MSGS, max_tokens=12, seed=1234, temperature=1.0)
    full = client.chat.completions.create(**kwargs)
    events = sse_events(http, "/v1/chat/completions",
                        {**kwargs, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {**full.usage.model_dump(exclude_none=True),
                                    "prompt_tokens_details": usage_chunk["usage"]["prompt_tokens_details"]}
    assert usage_chunk["usage"]["completion_tokens"] == full.usage.completion_tokens
    finish = chunks[-2]["choices"][0]
    assert finish["finish_reason"] == full.choices[0].finish_reason
    text_chunks = chunks[:-2]
    assert all(c["choices"][0]["finish_reason"] is None for c in text_chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in text_chunks)
    assert text == full.choices[0].message.content
    # the official client's iterator agrees
    streamed = "".join(c.choices[0].delta.content or ""
                       for c in client.chat.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == full.choices[0].message.content


def test_stream_without_include_usage_has_no_usage_chunk(http, served_model):
    events = sse_events(http, "/v1/chat/completions",
                        {"messages": MSGS, "max_tokens": 3, "stream": True})
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c or c["usage"] is None for c in chunks)


def test_chat_stream_n_choices_are_separated(client, served_model):
    kwargs = dict(model=served_model.name, messages=MSGS, max_tokens=6, n=2, seed=5)
    full = client.chat.completions.create(**kwargs)
    texts, finishes = {}, {}
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts == {c.index: c.message.content for c in full.choices}
    assert finishes == {c.index: c.finish_reason for c in full.choices}


def test_chat_logprobs_format(client, served_model):
    """OAI-LOGPROBS-001 (chat format)."""
    r = client.chat.completions.create(model=served_model.name, messages=MSGS, max_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert bytes(t.bytes).decode("utf-8", errors="replace") == t.token
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 3
        lps = [x.logprob for x in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        # greedy: the chosen token is the most likely one (raw logprobs, no processing)
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
    no_lp = client.chat.completions.create(model=served_model.name, messages=MSGS, max_tokens=2)
    assert no_lp.choices[0].logprobs is None


def test_chat_return_tokens_as_token_ids(client, http, served_model):
    """OAI-LOGPROBS-002: `token_id:N` names, and N are the generated ids."""
    r = client.chat.completions.create(model=served_model.name, messages=MSGS, max_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=2,
                                       extra_body={"return_tokens_as_token_ids": True})
    content = r.choices[0].logprobs.content
    assert all(t.token.startswith("token_id:") for t in content)
    assert all(x.token.startswith("token_id:") for t in content for x in t.top_logprobs)
    ids = [int(t.token.split(":")[1]) for t in content]
    text = http.post("/detokenize", json={"tokens": ids}).json()["prompt"]
    assert text == r.choices[0].message.content


# -- completions ---------------------------------------------------------------------------
def test_completion_shape_and_usage(client, http, served_model):
    r = client.completions.create(model=served_model.name, prompt="Once upon a time", max_tokens=6,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    prompt_ids = http.post("/tokenize", json={"prompt": "Once upon a time"}).json()["tokens"]
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.completion_tokens == 6
    assert r.usage.total_tokens == len(prompt_ids) + 6
    assert r.choices[0].finish_reason == "length"


def test_completion_default_max_tokens_is_16(client, served_model):
    r = client.completions.create(model=served_model.name, prompt="Hello", extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_completion_prompt_forms(client, http, served_model):
    """A string, a list of strings, token ids and lists of token ids are the same prompts."""
    texts = ["The quick brown fox", "Hello world"]
    ids = [http.post("/tokenize", json={"prompt": t}).json()["tokens"] for t in texts]
    kw = dict(model=served_model.name, max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    single = client.completions.create(prompt=texts[0], **kw)
    strings = client.completions.create(prompt=texts, **kw)
    one_ids = client.completions.create(prompt=ids[0], **kw)
    many_ids = client.completions.create(prompt=ids, **kw)
    assert [c.index for c in strings.choices] == [0, 1]
    assert strings.choices[0].text == single.choices[0].text == one_ids.choices[0].text
    assert [c.text for c in many_ids.choices] == [c.text for c in strings.choices]
    assert strings.usage.prompt_tokens == many_ids.usage.prompt_tokens == len(ids[0]) + len(ids[1])
    assert strings.usage.completion_tokens == 8


def test_completion_prompts_times_n(client, served_model):
    r = client.completions.create(model=served_model.name, prompt=["a", "b"], n=2, max_tokens=2,
                                  extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.completion_tokens == 8


def test_completion_echo(client, http, served_model):
    kw = dict(model=served_model.name, max_tokens=3, temperature=0)
    plain = client.completions.create(prompt="Echo this", **kw)
    echoed = client.completions.create(prompt="Echo this", echo=True, **kw)
    assert echoed.choices[0].text == "Echo this" + plain.choices[0].text
    ids = http.post("/tokenize", json={"prompt": "Echo this", "add_special_tokens": False}).json()["tokens"]
    from_ids = client.completions.create(prompt=ids, echo=True, **kw)
    assert from_ids.choices[0].text.startswith("Echo this")
    # streaming: the prompt comes first, then the completion
    events = sse_events(http, "/v1/completions", {"prompt": "Echo this", "echo": True, "stream": True,
                                                 "max_tokens": 3, "temperature": 0})
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert text == echoed.choices[0].text


def test_completion_stream_equals_non_streamed(client, http, served_model):
    kw = dict(model=served_model.name, prompt="Streams and", max_tokens=10, seed=99)
    full = client.completions.create(**kw)
    events = sse_events(http, "/v1/completions", {**kw, "stream": True,
                                                 "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    # the second request finds the first one's prompt cached: only the cache hit differs
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        **full.usage.model_dump(exclude_none=True),
        "prompt_tokens_details": chunks[-1]["usage"]["prompt_tokens_details"]}
    assert all(c["id"].startswith("cmpl-") for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert text == full.choices[0].text
    assert chunks[-2]["choices"][0]["finish_reason"] == full.choices[0].finish_reason


def test_completion_logprobs_format(client, http, served_model):
    """OAI-LOGPROBS-001 (completions format): tokens, token_logprobs, top_logprobs, text_offset."""
    r = client.completions.create(model=served_model.name, prompt="Logprobs of", max_tokens=5,
                                  temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0
    for i in range(1, n):
        assert lp.text_offset[i] == lp.text_offset[i - 1] + len(lp.tokens[i - 1])
    for tok, tlp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 2 and tok in top and top[tok] == pytest.approx(tlp)
        assert tlp == pytest.approx(max(top.values()))
    # with token ids as names, offsets still count characters of text
    ids = client.completions.create(model=served_model.name, prompt="Logprobs of", max_tokens=5,
                                    temperature=0, logprobs=2,
                                    extra_body={"return_tokens_as_token_ids": True}).choices[0].logprobs
    assert all(t.startswith("token_id:") for t in ids.tokens)
    assert ids.text_offset == lp.text_offset
    decoded = http.post("/detokenize", json={"tokens": [int(t.split(":")[1]) for t in ids.tokens]})
    assert decoded.json()["prompt"] == r.choices[0].text
    # echo shifts the offsets by the prompt's length
    echo = client.completions.create(model=served_model.name, prompt="Logprobs of", max_tokens=5,
                                     temperature=0, logprobs=2, echo=True).choices[0].logprobs
    assert echo.text_offset[-n:] == [o + len("Logprobs of") for o in lp.text_offset]


# -- async client ---------------------------------------------------------------------------
async def test_async_client_chat_and_completions(async_client, served_model):
    kw = dict(model=served_model.name, max_tokens=8, seed=3)
    full = await async_client.chat.completions.create(messages=MSGS, **kw)
    parts = []
    stream = await async_client.chat.completions.create(messages=MSGS, stream=True, **kw)
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    assert "".join(parts) == full.choices[0].message.content
    comp = await async_client.completions.create(prompt="Async", **kw)
    comp_parts = []
    async for chunk in await async_client.completions.create(prompt="Async", stream=True, **kw):
        comp_parts.append(chunk.choices[0].text)
    assert "".join(comp_parts) == comp.choices[0].text
    models = await async_client.models.list()
    assert models.data[0].id == served_model.name


async def test_async_client_concurrent_requests(async_client, served_model):
    """Several requests at once are batched; each gets its own complete answer."""
    import trio

    results = {}

    async def one(i: int) -> None:
        r = await async_client.completions.create(model=served_model.name, prompt=f"Request {i}",
                                                  max_tokens=5, temperature=0,
                                                  extra_body={"ignore_eos": True})
        results[i] = r

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(one, i)
    assert sorted(results) == list(range(6))
    assert all(r.usage.completion_tokens == 5 for r in results.values())
    # same prompt alone, greedy: batching does not change the answer
    alone = await async_client.completions.create(model=served_model.name, prompt="Request 3",
                                                  max_tokens=5, temperature=0,
                                                  extra_body={"ignore_eos": True})
    assert alone.choices[0].text == results[3].choices[0].text


def test_OAI_STREAM_002_utf8_safe_deltas(http, served_model):
    """A character split over two byte tokens is never streamed half (no U+FFFD): the
    delta of the first byte is empty, the second carries the whole character."""
    tok = served_model.tokenizer
    byte_ids = {}
    for i in range(served_model.config.vocab_size):
        b = tok.token_bytes(i)
        if len(b) == 1 and b[0] >= 0x80:
            byte_ids.setdefault(b[0], i)
    lead = byte_ids[0xC3]

    def split_char(path: str, base: dict) -> tuple[dict, int, str]:
        # Force two tokens out of {lead, cont}; the repetition penalty makes the second
        # differ from the first. Find a continuation byte the model ranks below the lead.
        for cont in range(0x80, 0xC0):
            body = {**base, "max_tokens": 2, "temperature": 0, "ignore_eos": True, "repetition_penalty": 100,
                    "logit_bias": {str(lead): 100, str(byte_ids[cont]): 100}}
            choice = http.post(path, json=body).json()["choices"][0]
            char = bytes([0xC3, cont]).decode()
            if choice.get("text", (choice.get("message") or {}).get("content")) == char:
                return body, byte_ids[cont], char
        raise AssertionError("no continuation byte follows the lead byte")

    body, cont_id, char = split_char("/v1/completions", {"prompt": "x"})
    events = sse_events(http, "/v1/completions", {**body, "stream": True, "logprobs": 0,
                                                 "return_tokens_as_token_ids": True})
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert [c["logprobs"]["tokens"] for c in chunks] == [[f"token_id:{lead}"], [f"token_id:{cont_id}"]]
    assert [c["text"] for c in chunks] == ["", char]
    body, _, char = split_char("/v1/chat/completions", {"messages": MSGS})
    events = sse_events(http, "/v1/chat/completions", {**body, "stream": True})
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert [c for c in contents if c] == [char]


def test_OAI_TOOLS_001_arguments_is_a_json_string(http, served_model):
    """On the wire `function.arguments` is a JSON *string* (not an object), streamed as
    string fragments that concatenate to the same string."""
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}}}
    body = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [tool], "seed": 1,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "max_tokens": 300}
    choice = http.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    arguments = call["function"]["arguments"]
    assert isinstance(arguments, str) and isinstance(json.loads(arguments), dict)
    fragments = []
    for e in sse_events(http, "/v1/chat/completions", {**body, "stream": True})[:-1]:
        for c in json.loads(e)["choices"]:
            for tc in c["delta"].get("tool_calls") or ():
                piece = (tc.get("function") or {}).get("arguments")
                if piece is not None:
                    assert isinstance(piece, str)
                    fragments.append(piece)
    assert "".join(fragments) == arguments
