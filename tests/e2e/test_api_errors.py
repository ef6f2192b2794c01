"""Errors and bad input, end to end: every error is the OpenAI error object with the right
status, never a 500 or a traceback, and the server — and the connection — keep serving.

Clause ids (OAI-ERR-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

import json
import logging
import random

import httpx
import openai
import pytest

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSGS = [{"role": "user", "content": "hi"}]
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               503: "service_unavailable", 504: "timeout_error"}


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    """OAI-ERR-001: the OpenAI error object, exactly."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "Traceback" not in r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == ERROR_TYPES[status]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


class ConnectionCounter:
    """Counts TCP connections an httpx.Client opens (to prove keep-alive reuse)."""

    def __init__(self):
        self.opened = 0

    def __call__(self, event: str, info: dict) -> None:
        if event == "connection.connect_tcp.complete":
            self.opened += 1


def big_vocab_id(served_model) -> int:
    return served_model.config.vocab_size


# name, path, body (dict -> JSON, bytes -> raw), status, param, code
BAD_INPUTS = [
    ("invalid JSON", CHAT, b'{"messages": [', 400, None, None),
    ("non-UTF-8 bytes", CHAT, b'{"messages": "\xff\xfe"}', 400, None, None),
    ("empty body", CHAT, b"", 400, None, None),
    ("JSON array body", COMP, b"[1, 2]", 400, None, None),
    ("JSON string body", COMP, b'"prompt"', 400, None, None),
    ("nested too deeply", COMP, b"[" * 100_000, 400, None, None),
    ("lone surrogate", CHAT, b'{"messages": [{"role": "user", "content": "\\udc80"}]}', 400, "messages", None),
    ("NaN temperature", COMP, b'{"prompt": "x", "temperature": NaN}', 400, "temperature", None),
    ("messages not a list", CHAT, {"messages": "hello"}, 400, "messages", None),
    ("message not an object", CHAT, {"messages": ["hello"]}, 400, "messages", None),
    ("empty messages", CHAT, {"messages": []}, 400, "messages", None),
    ("unknown role", CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages", None),
    ("missing content", CHAT, {"messages": [{"role": "user"}]}, 400, "messages", None),
    ("content of wrong type", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages", None),
    ("image content part", CHAT, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}]}, 400, "messages", None),
    ("missing messages", CHAT, {"model": "x"}, 400, "messages", None),
    ("missing prompt", COMP, {"max_tokens": 3}, 400, "prompt", None),
    ("temperature of wrong type", CHAT, {"messages": MSGS, "temperature": "hot"}, 400, "temperature", None),
    ("temperature out of range", CHAT, {"messages": MSGS, "temperature": 3}, 400, "temperature", None),
    ("top_p zero", COMP, {"prompt": "x", "top_p": 0}, 400, "top_p", None),
    ("max_tokens of wrong type", COMP, {"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens", None),
    ("stop of wrong type", COMP, {"prompt": "x", "stop": 5}, 400, "stop", None),
    ("too many stops", COMP, {"prompt": "x", "stop": [str(i) for i in range(17)]}, 400, "stop", None),
    ("n zero", CHAT, {"messages": MSGS, "n": 0}, 400, "n", None),
    ("n negative", COMP, {"prompt": "x", "n": -3}, 400, "n", None),
    ("n huge", CHAT, {"messages": MSGS, "n": 10**9}, 400, "n", None),
    ("n above the limit", COMP, {"prompt": "x", "n": 17}, 400, "n", None),
    ("max_tokens negative", COMP, {"prompt": "x", "max_tokens": -1}, 400, "max_tokens", None),
    ("max_tokens zero", CHAT, {"messages": MSGS, "max_tokens": 0}, 400, "max_tokens", None),
    ("max_completion_tokens negative", CHAT, {"messages": MSGS, "max_completion_tokens": -5}, 400,
     "max_completion_tokens", None),
    ("max_tokens beyond the context", CHAT, {"messages": MSGS, "max_tokens": 10**6}, 400, "max_tokens",
     "context_length_exceeded"),
    ("chat prompt beyond the context", CHAT, {"messages": [{"role": "user", "content": "hello " * 3000}]},
     400, "messages", "context_length_exceeded"),
    ("token prompt beyond the context", COMP, {"prompt": [5] * 2100}, 400, "prompt", "context_length_exceeded"),
    ("prompt token id beyond the vocab", COMP, {"prompt": [1, 131072]}, 400, "prompt", None),
    ("negative prompt token id", COMP, {"prompt": [[1, 2], [-1]]}, 400, "prompt", None),
    ("empty token prompt", COMP, {"prompt": []}, 400, "prompt", None),
    ("empty inner token prompt", COMP, {"prompt": [[]]}, 400, "prompt", None),
    ("mixed prompt list", COMP, {"prompt": [1, "a"]}, 400, "prompt", None),
    ("logit_bias key beyond the vocab", COMP, {"prompt": "x", "logit_bias": {"131072": 1}}, 400, "logit_bias", None),
    ("logit_bias key not an id", CHAT, {"messages": MSGS, "logit_bias": {"cat": 1}}, 400, "logit_bias", None),
    ("logit_bias value out of range", CHAT, {"messages": MSGS, "logit_bias": {"5": 101}}, 400, "logit_bias", None),
    ("stop_token_ids beyond the vocab", COMP, {"prompt": "x", "stop_token_ids": [10**20]}, 400, "stop_token_ids", None),
    ("seed beyond 64 bits", COMP, {"prompt": "x", "seed": 2**70}, 400, "seed", None),
    ("repetition_penalty zero", COMP, {"prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty", None),
    ("top_logprobs without logprobs", CHAT, {"messages": MSGS, "top_logprobs": 2}, 400, "top_logprobs", None),
    ("top_logprobs above 20", CHAT, {"messages": MSGS, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs", None),
    ("completion logprobs above 20", COMP, {"prompt": "x", "logprobs": 21}, 400, "logprobs", None),
    ("min_tokens above max_tokens", COMP, {"prompt": "x", "max_tokens": 2, "min_tokens": 5}, 400, "min_tokens", None),
    ("stream_options not an object", COMP, {"prompt": "x", "stream": True, "stream_options": 5}, 400,
     "stream_options", None),
    ("tools malformed", CHAT, {"messages": MSGS, "tools": [{"type": "function", "function": {"name": ""}}]},
     400, "tools", None),
    ("chat_template_kwargs overriding messages", CHAT, {"messages": MSGS, "chat_template_kwargs": {"messages": 5}},
     400, "chat_template_kwargs", None),
    ("unknown model", CHAT, {"model": "gpt-5", "messages": MSGS}, 404, "model", "model_not_found"),
    ("unknown model, completions", COMP, {"model": "gpt-5", "prompt": "x"}, 404, "model", "model_not_found"),
    ("tokenize with both prompt and messages", "/tokenize", {"prompt": "x", "messages": MSGS}, 400, "prompt", None),
    ("detokenize id beyond the vocab", "/detokenize", {"tokens": [131072]}, 400, "tokens", None),
    ("detokenize of wrong type", "/detokenize", {"tokens": "abc"}, 400, "tokens", None),
]


@pytest.mark.parametrize("name,path,body,status,param,code", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_OAI_ERR_001_bad_input_gets_the_error_object(http, name, path, body, status, param, code):
    counter = ConnectionCounter()
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    r = http.post(path, extensions={"trace": counter}, **kwargs)
    assert_error(r, status, param, code)
    # OAI-ERR-003: the same keep-alive connection answers the next request
    assert http.get("/v1/models", extensions={"trace": counter}).status_code == 200
    assert counter.opened <= 1


def test_OAI_ERR_002_unknown_one_segment_route_is_404(http):
    assert_error(http.get("/nope"), 404)


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/no-such-route", 404), ("POST", "/v1/no-such-route", 404), ("GET", "/no/such/route", 404),
    ("GET", CHAT, 405), ("PUT", COMP, 405), ("DELETE", "/v1/models", 405), ("POST", "/livez", 405),
])
def test_OAI_ERR_002_unknown_route_404_wrong_method_405(http, method, path, status):
    assert_error(http.request(method, path, json={"prompt": "x"}), status)


def test_OAI_ERR_003_early_4xx_does_not_poison_the_keep_alive_connection(http):
    """Answers that need no body (404/405/400-before-generation) on a POST with a large
    body: the next request on the SAME connection is answered normally."""
    payload = json.dumps({"prompt": "x" * 300_000, "max_tokens": 2}).encode()
    counter = ConnectionCounter()
    for method, path, status in [("POST", "/v1/no-such-route", 404), ("POST", "/v1/models", 405),
                                 ("PUT", COMP, 405), ("POST", "/livez", 405)]:
        r = http.request(method, path, content=payload, headers={"content-type": "application/json"},
                         extensions={"trace": counter})
        assert r.status_code == status
        nxt = http.post(COMP, json={"prompt": "still there?", "max_tokens": 2}, extensions={"trace": counter})
        assert nxt.status_code == 200
    assert counter.opened == 1


def test_OAI_ERR_004_body_over_the_limit_is_413(make_server):
    srv = make_server(max_body_size=64 * 1024)
    big = json.dumps({"prompt": "x" * 100_000, "max_tokens": 2}).encode()
    with httpx.Client(base_url=srv.base_url, timeout=30) as c:
        r = c.post(COMP, content=big, headers={"content-type": "application/json"})
        err = assert_error(r, 413)
        assert "65536" in err["message"]
        # the rest of the body was not read: the connection is closed, not left poisoned
        assert r.headers.get("connection") == "close"
        assert c.post(COMP, json={"prompt": "ok", "max_tokens": 2}).status_code == 200
        # the same without a Content-Length (chunked): the limit is found while reading

        def chunks():
            for i in range(0, len(big), 8192):
                yield big[i:i + 8192]

        assert_error(c.post(COMP, content=chunks(), headers={"content-type": "application/json"}), 413)
        assert c.post(COMP, json={"prompt": "ok", "max_tokens": 2}).status_code == 200
        # just under the limit is fine
        small = json.dumps({"prompt": "x", "user": "x" * 60_000, "max_tokens": 1}).encode()
        assert c.post(COMP, content=small, headers={"content-type": "application/json"}).status_code == 200


def test_OAI_ERR_005_api_key(make_server, served_model):
    srv = make_server(api_key="sekrit")
    bad = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    good = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="sekrit", max_retries=0)
    assert good.models.list().data[0].id == served_model.name
    assert good.chat.completions.create(model=served_model.name, messages=MSGS, max_tokens=2).choices
    counter = ConnectionCounter()
    with httpx.Client(base_url=srv.base_url, timeout=30) as c:
        for path in ("/v1/models", "/v1/models/" + served_model.name):
            assert_error(c.get(path, extensions={"trace": counter}), 401, code="invalid_api_key")
        r = c.post(CHAT, json={"messages": MSGS, "max_tokens": 2}, extensions={"trace": counter},
                   headers={"Authorization": "Bearer sekri"})
        assert_error(r, 401)
        # probes and metrics stay open
        for probe in ("/livez", "/readyz", "/health", "/metrics"):
            assert c.get(probe, extensions={"trace": counter}).status_code == 200
        ok = c.post(COMP, json={"prompt": "x", "max_tokens": 2}, headers={"Authorization": "Bearer sekrit"},
                    extensions={"trace": counter})
        assert ok.status_code == 200
    assert counter.opened == 1


def test_unknown_model_through_the_official_client(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-5", messages=MSGS, max_tokens=2)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=None, prompt="x", n=0)
    assert info.value.param == "n"


# -- fuzz: no input makes the server answer 500 ---------------------------------------------------
WEIRD = [None, -1, 0, 2.5, 10**30, "", "x", [], {}, [None], {"a": [1]}, True, "\u0000\ud7ff\U0010ffff"]
CHAT_BASE = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0.5,
             "top_p": 0.9, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "presence_penalty": 0.1,
             "frequency_penalty": 0.1, "logit_bias": {"5": 1}, "seed": 1, "stop": ["zz"], "n": 1,
             "logprobs": True, "top_logprobs": 1, "stream": False, "stop_token_ids": [5], "ignore_eos": False,
             "min_tokens": 0, "skip_special_tokens": True, "return_tokens_as_token_ids": False, "user": "u",
             "stream_options": None, "tools": None, "tool_choice": None, "add_generation_prompt": True,
             "chat_template_kwargs": None, "max_completion_tokens": None}
COMP_BASE = {"prompt": "hi", "max_tokens": 1, "echo": False, "logprobs": 1, "suffix": None,
             **{k: v for k, v in CHAT_BASE.items() if k not in ("messages", "logprobs", "top_logprobs", "tools",
                                                                  "tool_choice", "add_generation_prompt",
                                                                  "chat_template_kwargs", "max_completion_tokens")}}
LONG_RUNNING = {"max_tokens": None, "max_completion_tokens": None}  # None there means "the whole context"


def mutations(base: dict):
    for key in base:
        for value in WEIRD:
            if key in LONG_RUNNING and value is None:
                continue
            yield key, {**base, key: value}
        if isinstance(base[key], list) and base[key]:
            for value in WEIRD[:6]:
                yield key, {**base, key: [value]}
    for value in WEIRD:  # message fields
        if "messages" in base:
            for field in ("role", "content", "name", "tool_calls", "tool_call_id"):
                yield f"messages.{field}", {**base, "messages": [{"role": "user", "content": "hi", field: value}]}


@pytest.mark.parametrize("path,base", [(CHAT, CHAT_BASE), (COMP, COMP_BASE)], ids=["chat", "completions"])
def test_OAI_ERR_006_no_input_makes_a_500(http, caplog, path, base):
    caplog.set_level(logging.ERROR, logger="triolm")
    seen = {}
    for where, body in mutations(base):
        r = http.post(path, json=body)
        assert r.status_code < 500, (where, body, r.text)
        if r.status_code >= 400:
            assert_error(r, r.status_code)
        else:
            text = r.text
            assert "Traceback" not in text and ("[DONE]" in text if body.get("stream") is True else r.json()["choices"])
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
    assert seen.get(200) and seen.get(400)  # the fuzz exercised both paths
    assert not [rec for rec in caplog.records if "unhandled" in rec.getMessage()]
    # random byte soup and truncated bodies
    rng = random.Random(0)
    valid = json.dumps(base).encode()
    for _ in range(40):
        cut = valid[: rng.randrange(len(valid))]
        soup = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        for raw in (cut, soup, cut + soup):
            r = http.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code in (400, 200), raw
    assert http.post(path, json=base).status_code == 200


def test_OAI_ERR_007_prompt_larger_than_the_kv_cache_is_400(make_server, served_model):
    """The engine refuses a prompt its KV cache can never hold: a 400, streaming or not,
    for one generation or several, never a 500."""
    c = served_model.config
    bytes_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4
    srv = make_server(kv_cache_memory=bytes_per_token * 16 * 16)  # 256 tokens of cache
    prompt = list(range(2000, 2300))  # 300 tokens: fits the context, not the cache
    with httpx.Client(base_url=srv.base_url, timeout=30) as http:
        for n in (1, 2):
            err = assert_error(http.post(COMP, json={"prompt": prompt, "max_tokens": 2, "n": n}), 400)
            assert "KV cache" in err["message"]
        with http.stream("POST", COMP, json={"prompt": prompt, "max_tokens": 2, "stream": True}) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[0])["error"]["type"] == "invalid_request_error"
        assert http.post(COMP, json={"prompt": prompt[:100], "max_tokens": 2}).status_code == 200
