"""Every route validates alike, end to end: the main OpenAI routes and the session routes
share one body parser and one validator, so a hostile body gets the same 400 everywhere;
streams survive any line splitter; a reply cut by max_tokens says so.

Clause ids (HOSTILE-VAL-…) refer to contracts/hostile-input.md.
"""

from __future__ import annotations

import json

import httpx
import pytest

from triolm.http.body import MAX_NESTING
from triolm.protocol.schemas import RESERVED_TEMPLATE_VARIABLES

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSGS = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "parameters": {"type": "object", "properties": {
        "q": {"type": "string", "maxLength": 8}, "limit": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["q", "limit"], "additionalProperties": False}}}
LINE_BREAKERS = "a\u2028b\u2029c\u0085d"  # str.splitlines breaks on each; JSON does not


def assert_openai_error(r: httpx.Response, status: int = 400, param: str | None = None,
                        code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    err = body["error"]
    assert err["message"] and "Traceback" not in r.text
    assert err["type"] == {400: "invalid_request_error", 401: "authentication_error"}[status]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c


@pytest.fixture
def session(http):
    """A fresh session's chat and render paths; deleted afterwards."""
    uid = http.post("/sessions/create", json={}).json()["uuid"]
    yield {"chat": f"/{uid}/v1/chat/completions", "render": f"/{uid}/v1/chat/completions/render"}
    http.delete(f"/{uid}")


def chat_routes(session) -> list[tuple[str, dict]]:
    """(path, extra body) of every route that takes a chat body, streaming or not."""
    return [(CHAT, {}), (CHAT, {"stream": True}), (session["chat"], {}),
            (session["chat"], {"stream": True}), (session["render"], {})]


def post_raw(http: httpx.Client, path: str, raw: str | bytes) -> httpx.Response:
    data = raw.encode() if isinstance(raw, str) else raw
    return http.post(path, content=data, headers={"content-type": "application/json"})


# -- HOSTILE-VAL-001: one body parser -----------------------------------------------------
def test_HOSTILE_VAL_001_lone_surrogate_is_400_on_every_route(http, session):
    for path, extra in chat_routes(session):
        raw = json.dumps({"max_tokens": 2, **extra})[:-1] + ', "messages": [{"role": "user", "content": "\\ud800"}]}'
        err = assert_openai_error(post_raw(http, path, raw), param="messages")
        assert "surrogate" in err["message"] and "messages[0].content" in err["message"]
    raw = '{"prompt": "x\\udfff", "max_tokens": 2}'
    for path in (COMP, "/tokenize"):
        assert_openai_error(post_raw(http, path, raw), param="prompt")
    # a surrogate *pair* is one character, and fine
    r = post_raw(http, session["chat"], '{"max_tokens": 1, "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}')
    assert r.status_code == 200, r.text


def test_HOSTILE_VAL_001_deep_nesting_is_400_on_every_route(http, session):
    deep = "[" * 100_000
    paths = [path for path, _ in chat_routes(session)] + [COMP, "/tokenize", "/detokenize", "/sessions/create"]
    for path in paths:
        err = assert_openai_error(post_raw(http, path, '{"messages": ' + deep))
        assert f"deeper than {MAX_NESTING}" in err["message"]
    # the bound is exact: inside it, a free-form field (metadata) of any depth is accepted
    at_bound = "[" * (MAX_NESTING - 2) + "]" * (MAX_NESTING - 2)
    ok = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "metadata": {"x": ' + at_bound + "}}"
    for path in (CHAT, session["chat"]):
        assert post_raw(http, path, ok).status_code == 200
        past = ok.replace(at_bound, "[" + at_bound + "]")
        assert_openai_error(post_raw(http, path, past))
    # brackets inside strings are text, not nesting
    text = '{"messages": [{"role": "user", "content": "' + "[" * 1000 + '"}], "max_tokens": 1}'
    assert post_raw(http, session["render"], text).status_code == 200


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"messages": [', b"[1, 2]", b'"text"', b""],
                         ids=["not-utf8", "not-json", "array", "string", "empty"])
def test_HOSTILE_VAL_001_not_an_object_is_400_on_every_route(http, session, raw):
    for path, _ in chat_routes(session)[::2] + [(COMP, {}), ("/tokenize", {})]:
        assert_openai_error(post_raw(http, path, raw))
    if raw:  # an empty body asks for a session with the defaults
        assert_openai_error(post_raw(http, "/sessions/create", raw))


# -- HOSTILE-VAL-002: chat_template_kwargs cannot replace the template's own variables ------
def test_HOSTILE_VAL_002_template_kwargs_cannot_override_template_variables(http, session):
    for key in sorted(RESERVED_TEMPLATE_VARIABLES):
        for path, extra in chat_routes(session):
            body = {"messages": MSGS, "max_tokens": 1, "chat_template_kwargs": {key: 1}, **extra}
            err = assert_openai_error(http.post(path, json=body), param="chat_template_kwargs")
            assert key in err["message"]
    # a variable of the caller's own is passed through
    for path, extra in chat_routes(session):
        body = {"messages": MSGS, "max_tokens": 1, "chat_template_kwargs": {"enable_thinking": False}, **extra}
        assert http.post(path, json=body).status_code == 200


# -- HOSTILE-VAL-003: tool_choice that needs tools -----------------------------------------
def test_HOSTILE_VAL_003_tool_choice_without_tools_is_400(http, session):
    named = {"type": "function", "function": {"name": "get_weather"}}
    for path, extra in chat_routes(session):
        for choice in ("required", named):
            for tools in ({}, {"tools": []}):
                body = {"messages": MSGS, "max_tokens": 1, "tool_choice": choice, **tools, **extra}
                err = assert_openai_error(http.post(path, json=body), param="tool_choice")
                assert "tools" in err["message"]
        for choice in ("auto", "none"):  # nothing to enforce: fine without tools
            assert http.post(path, json={"messages": MSGS, "max_tokens": 1, "tool_choice": choice,
                                         **extra}).status_code == 200
    err = assert_openai_error(http.post(CHAT, json={"messages": MSGS, "tools": [{"type": "nope"}]}),
                              param="tools")
    assert "tools[0]" in err["message"]


# -- HOSTILE-VAL-004: min_tokens within the context ----------------------------------------
def test_HOSTILE_VAL_004_min_tokens_beyond_the_context_is_400(http, session, served_model):
    for path, extra in chat_routes(session)[:4]:
        err = assert_openai_error(http.post(path, json={"messages": MSGS, "min_tokens": 10**9, **extra}),
                                  param="min_tokens", code="context_length_exceeded")
        assert str(served_model.max_model_len) in err["message"]
    assert_openai_error(http.post(COMP, json={"prompt": "hi", "min_tokens": 10**9}), param="min_tokens")
    # beyond what this prompt leaves, though below the context length itself
    prompt = list(range(100, 140))
    room = served_model.max_model_len - len(prompt)
    assert_openai_error(http.post(COMP, json={"prompt": prompt, "min_tokens": room + 1, "max_tokens": None}),
                        param="min_tokens", code="context_length_exceeded")
    # completions' default of 16 tokens is a max_tokens too
    assert_openai_error(http.post(COMP, json={"prompt": "hi", "min_tokens": 17}), param="min_tokens")
    r = http.post(COMP, json={"prompt": "hi", "min_tokens": 3, "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


# -- HOSTILE-VAL-005: a request larger than the server's capacity --------------------------
def test_HOSTILE_VAL_005_request_that_can_never_fit_is_400_not_429(http, make_server):
    err = assert_openai_error(http.post(COMP, json={"prompt": ["a"] * 8, "n": 16, "max_tokens": 1}),
                              param="n", code="request_too_large")
    assert "128" in err["message"] and "--max-queue 64" in err["message"]
    srv = make_server(max_queue=4)
    with httpx.Client(base_url=srv.base_url, timeout=60) as small:
        err = assert_openai_error(small.post(CHAT, json={"messages": MSGS, "n": 5, "max_tokens": 1}),
                                  param="n", code="request_too_large")
        assert "--max-queue 4" in err["message"]
        assert_openai_error(small.post(COMP, json={"prompt": [[5, 6], [7, 8], [9]], "n": 2, "max_tokens": 1}),
                            param="n", code="request_too_large")
        uid = small.post("/sessions/create").json()["uuid"]
        assert_openai_error(small.post(f"/{uid}/v1/chat/completions", json={"messages": MSGS, "n": 5}),
                            param="n", code="request_too_large")
        assert small.post(CHAT, json={"messages": MSGS, "n": 4, "max_tokens": 1}).status_code == 200
        assert small.post(COMP, json={"prompt": [[5, 6], [7, 8]], "n": 2, "max_tokens": 1}).status_code == 200


# -- HOSTILE-VAL-006: SSE lines survive any line splitter ----------------------------------
def _stream_raw(http: httpx.Client, path: str, body: dict) -> str:
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        return r.read().decode("utf-8")


def _streamed_text(lines: list[str], field) -> str:
    events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = ""
    for event in events[:-1]:
        for choice in json.loads(event)["choices"]:  # every data line is one whole JSON value
            text += field(choice) or ""
    return text


def test_HOSTILE_VAL_006_sse_lines_survive_any_line_splitter(http, session):
    forced = {"guided_choice": [LINE_BREAKERS], "max_tokens": 20}
    routes = [(CHAT, {"messages": MSGS, **forced}, lambda c: c["delta"].get("content")),
              (COMP, {"prompt": "hi", **forced}, lambda c: c["text"]),
              (session["chat"], {"messages": MSGS, **forced}, lambda c: c["delta"].get("content"))]
    for path, body, field in routes:
        whole = http.post(path, json=body).json()["choices"][0]
        assert (whole.get("text") or whole.get("message", {}).get("content")) == LINE_BREAKERS  # really generated
        raw = _stream_raw(http, path, body)
        assert "\u2028" not in raw and "\u2029" not in raw and "\u0085" not in raw
        assert _streamed_text(raw.splitlines(), field) == LINE_BREAKERS
        with http.stream("POST", path, json={**body, "stream": True}) as r:
            assert _streamed_text(list(r.iter_lines()), field) == LINE_BREAKERS


# -- HOSTILE-VAL-007: a tool call cut short by max_tokens ----------------------------------
def _calls(message: dict) -> list[tuple[str, str]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or ()]


def _stream_chat(http: httpx.Client, path: str, body: dict) -> tuple[str, dict[int, list[str]], str]:
    """(content, {call index: [name, arguments]}, finish_reason) of a streamed chat."""
    content, calls, finish = "", {}, None
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            delta = choice["delta"]
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                entry = calls.setdefault(call["index"], ["", ""])
                entry[0] += call["function"].get("name") or ""
                entry[1] += call["function"].get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return content, calls, finish


def _complete_calls(text: str) -> int:
    """Calls in a cut hermes reply whose JSON object is whole (a missing closing tag at the
    very end is tolerated, as for any hermes reply)."""
    count = 0
    for segment in text.split("<tool_call>")[1:]:
        try:
            json.JSONDecoder().raw_decode(segment.split("</tool_call>")[0].strip())
        except ValueError:
            continue
        count += 1
    return count


def test_HOSTILE_VAL_007_tool_call_cut_short_finishes_with_length(http, session):
    body = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER, SEARCH],
            "tool_choice": "required", "seed": 0, "logprobs": True}
    full = http.post(CHAT, json={**body, "max_tokens": 300}).json()["choices"][0]
    pieces = [t["token"] for t in full["logprobs"]["content"]]
    calls = _calls(full["message"])
    assert len(calls) >= 2, "the scripted reply needs two calls to cut the second"
    # cuts: inside the first call's JSON, inside its closing tag, right after it, at every
    # marker fragment that starts the second call ("<", "<tool", …), inside its JSON
    first_end = next(k for k in range(1, len(pieces)) if "".join(pieces[:k]).count("</tool_call>") == 1)
    second_json = next(k for k in range(first_end, len(pieces)) if '{"name' in "".join(pieces[first_end:k]))
    fragments = [k for k in range(first_end + 1, second_json)
                 if "<tool_call>".startswith("".join(pieces[first_end:k]).strip())]
    cuts = [3, first_end - 2, first_end, *fragments, second_json + 2]
    assert fragments
    for k in cuts:
        text = "".join(pieces[:k])
        complete = _complete_calls(text)
        # the session route runs the same code: a few cuts there
        for path in (CHAT, session["chat"]) if k in (3, first_end - 2, fragments[-1]) else (CHAT,):
            cut = http.post(path, json={**body, "max_tokens": k}).json()["choices"][0]
            assert [t["token"] for t in cut["logprobs"]["content"]] == pieces[:k]  # the same reply, cut
            assert cut["finish_reason"] == "length", (k, cut)
            assert _calls(cut["message"]) == calls[:complete], (k, cut)
            assert not cut["message"]["content"], (k, text, cut["message"])
            content, streamed, finish = _stream_chat(http, path, {**body, "max_tokens": k})
            assert finish == "length" and content == "", (k, content)
            assert [tuple(streamed[i]) for i in range(complete)] == calls[:complete]
    # the whole reply, not cut, still finishes with its calls
    if full["finish_reason"] != "length":
        assert full["finish_reason"] == "tool_calls"


# -- HOSTILE-VAL-008: /v1/models names, never paths ----------------------------------------
def test_HOSTILE_VAL_008_models_do_not_reveal_file_paths(http, served_model):
    listing = http.get("/v1/models")
    (model,) = listing.json()["data"]
    assert model["root"] == model["id"] == served_model.name
    one = http.get(f"/v1/models/{served_model.name}")
    for r in (listing, one):
        assert served_model.path not in r.text and "/root/" not in r.text and "/tmp/" not in r.text


# -- HOSTILE-VAL-009: one API-key check ------------------------------------------------------
def test_HOSTILE_VAL_009_session_routes_use_the_same_api_key_check(make_server):
    srv = make_server(api_key="sekrit")
    with httpx.Client(base_url=srv.base_url, timeout=60) as c:
        main = c.post(CHAT, json={"messages": MSGS}, headers={"Authorization": "Bearer nope"})
        assert_openai_error(main, 401, code="invalid_api_key")
        for method, path in (("POST", "/sessions/create"), ("GET", "/sessions"),
                             ("POST", "/00000000-0000-0000-0000-000000000000/v1/chat/completions"),
                             ("GET", "/00000000-0000-0000-0000-000000000000/nodes")):
            r = c.request(method, path, json={"messages": MSGS} if method == "POST" else None,
                          headers={"Authorization": "Bearer nope"})
            assert_openai_error(r, 401, code="invalid_api_key")
            assert r.json() == main.json()
        key = {"Authorization": "Bearer sekrit"}
        uid = c.post("/sessions/create", headers=key).json()["uuid"]
        r = c.post(f"/{uid}/v1/chat/completions", json={"messages": MSGS, "max_tokens": 1}, headers=key)
        assert r.status_code == 200
        assert c.get("/health").status_code == 200
