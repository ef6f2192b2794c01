"""Why a generation ended reaches every endpoint as the engine said it (one `Finish`,
one mapping to each API's words), streamed or not (contracts/openai-compat.md
OAI-STOP-004); and every stream goes through the one SSE loop: its framing escapes the
characters line splitters break on, everywhere (contracts/hostile-input.md HOSTILE-VAL-006).

Streams are read as raw bytes and split on blank lines here: httpx's `iter_lines()`
would itself split on U+2028 / U+2029 / U+0085 (the trap this framing exists for)."""

from __future__ import annotations

import json

import attrs
import httpx
import pytest

from support.server_thread import ServerThread

MSGS = [{"role": "user", "content": "Say something"}]
PROMPT = "Stop here"


def sse_events(http: httpx.Client, path: str, body: dict) -> list[tuple[str | None, str]]:
    """(event name, data) of each event of a stream, from its raw bytes."""
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        raw = r.read()
    events = []
    for block in raw.decode().split("\n\n"):
        if not block or block.startswith(":"):
            continue
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data = line[len("data: "):]
        assert data is not None, block
        events.append((name, data))
    return events


def streamed(http: httpx.Client, path: str, body: dict) -> tuple[str, list[int], str | None, object]:
    """Text, token ids, finish_reason and stop_reason of choice 0 of an OpenAI stream."""
    text, ids, finish, stop = "", [], None, None
    events = sse_events(http, path, {**body, "return_token_ids": True})
    assert events[-1] == (None, "[DONE]")
    for _, data in events[:-1]:
        for c in json.loads(data)["choices"]:
            text += c.get("text") or (c.get("delta") or {}).get("content") or ""
            ids += c.get("token_ids") or []
            if c.get("finish_reason") is not None:
                finish, stop = c["finish_reason"], c.get("stop_reason")
    return text, ids, finish, stop


def whole(http: httpx.Client, path: str, body: dict) -> tuple[str, list[int], str | None, object]:
    r = http.post(path, json={**body, "return_token_ids": True})
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    text = c["text"] if "text" in c else c["message"]["content"] or ""
    return text, c["token_ids"], c["finish_reason"], c["stop_reason"]


ENDPOINTS = {"chat": ("/v1/chat/completions", {"messages": MSGS}),
             "completions": ("/v1/completions", {"prompt": PROMPT})}


def greedy(http, endpoint: str, **extra) -> tuple[str, list[int]]:
    path, body = ENDPOINTS[endpoint]
    text, ids, _, _ = whole(http, path, {**body, "temperature": 0, "max_tokens": 12, "ignore_eos": True, **extra})
    return text, ids


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_OAI_STOP_004_each_finish_kind_reaches_the_client_the_same_streamed_or_not(http, served_model, endpoint):
    path, base = ENDPOINTS[endpoint]
    full, ids = greedy(http, endpoint)
    (eos,) = served_model.eos_token_ids
    stop_id = ids[3]
    cut = ids.index(stop_id)
    stop = full[4:7]
    cases = [
        # (request fields, expected (text, ids, finish_reason, stop_reason))
        ({"max_tokens": 5, "ignore_eos": True}, (None, ids[:5], "length", None)),
        ({"logit_bias": {str(eos): 100}, "skip_special_tokens": False},  # EOS ends it, never in the text
         ("", [eos], "stop", None)),
        ({"stop_token_ids": [stop_id], "ignore_eos": True}, (None, ids[:cut + 1], "stop", stop_id)),
        ({"stop": [stop], "ignore_eos": True}, (full[:full.find(stop)], None, "stop", stop)),
    ]
    for fields, expected in cases:
        body = {**base, "temperature": 0, "max_tokens": 12, **fields}
        for got in (whole(http, path, body), streamed(http, path, body)):
            want = tuple(g if e is None else e for g, e in zip(got, expected, strict=True))
            assert got == want, fields


def test_OAI_STOP_004_the_stop_token_is_in_the_ids_but_not_in_the_text(http, served_model):
    full, ids = greedy(http, "completions")
    stop_id = ids[3]
    cut = ids.index(stop_id)
    before = http.post("/detokenize", json={"tokens": ids[:cut]}).json()["prompt"]
    body = {"prompt": PROMPT, "temperature": 0, "max_tokens": 12, "ignore_eos": True,
            "stop_token_ids": [stop_id], "skip_special_tokens": False}
    assert whole(http, "/v1/completions", body) == (before, ids[:cut + 1], "stop", stop_id)


def test_OAI_STOP_004_messages_and_responses_say_the_same_finish_in_their_words(http):
    full, _ = greedy(http, "chat")
    stop = full[4:7]
    m = http.post("/v1/messages", json={"model": "hf", "max_tokens": 3, "messages": MSGS, "temperature": 0}).json()
    assert (m["stop_reason"], m["stop_sequence"]) == ("max_tokens", None)
    m = http.post("/v1/messages", json={"model": "hf", "max_tokens": 12, "messages": MSGS, "temperature": 0,
                                        "stop_sequences": [stop]}).json()
    assert (m["stop_reason"], m["stop_sequence"]) == ("stop_sequence", stop)
    delta = [json.loads(d) for name, d in sse_events(http, "/v1/messages", {
        "model": "hf", "max_tokens": 12, "messages": MSGS, "temperature": 0, "stop_sequences": [stop]})
        if name == "message_delta"]
    assert [d["delta"]["stop_reason"] for d in delta] == ["stop_sequence"]
    r = http.post("/v1/responses", json={"input": "Say something", "max_output_tokens": 3, "temperature": 0}).json()
    assert (r["status"], r["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    done = [json.loads(d) for name, d in sse_events(http, "/v1/responses", {
        "input": "Say something", "max_output_tokens": 3, "temperature": 0}) if name == "response.incomplete"]
    assert [d["response"]["status"] for d in done] == ["incomplete"]


def test_OAI_STOP_004_a_generation_the_server_aborts_ends_with_abort_and_no_stop_reason(make_server):
    srv = make_server()
    with httpx.Client(base_url=srv.base_url, timeout=60) as http, \
            http.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True,
                                                         "stream": True}) as r:
        raw = b""
        chunks = r.iter_raw()
        while b"\n\n" not in raw:  # the first token is out: the sequence runs in the engine
            raw += next(chunks)
        with httpx.Client(base_url=srv.base_url, timeout=60) as admin:
            assert admin.post("/pause_generation", json={"mode": "abort"}).status_code == 200
            raw += b"".join(chunks)
            assert admin.post("/continue_generation").status_code == 200
    finals = [c for block in raw.decode().split("\n\n") if block.startswith("data: {")
              for c in json.loads(block[6:])["choices"] if c.get("finish_reason")]
    assert [(c["finish_reason"], c["stop_reason"]) for c in finals] == [("abort", None)]
    assert raw.endswith(b"data: [DONE]\n\n")


# -- one SSE loop: its framing on every endpoint ------------------------------------------------
BREAKERS = "\u2028\u2029\x85"
NAME = f"tiny{BREAKERS[0]}model{BREAKERS[1]}with{BREAKERS[2]}breaks"


@pytest.fixture(scope="module")
def odd_server(served_model, base_settings):
    """A server whose model name holds every character str.splitlines breaks on: every
    stream's events carry it."""
    with ServerThread(base_settings, attrs.evolve(served_model, name=NAME)) as srv:
        yield srv


def test_HOSTILE_VAL_006_every_streaming_route_escapes_the_line_breakers(odd_server):
    with httpx.Client(base_url=odd_server.base_url, timeout=60) as http:
        session = http.post("/sessions/create", json={}).json()["uuid"]
        streams = {
            "chat": ("/v1/chat/completions", {"model": NAME, "messages": MSGS, "max_tokens": 3}),
            "completions": ("/v1/completions", {"model": NAME, "prompt": PROMPT, "max_tokens": 3}),
            "responses": ("/v1/responses", {"model": NAME, "input": "Say something", "max_output_tokens": 3}),
            "messages": ("/v1/messages", {"model": NAME, "messages": MSGS, "max_tokens": 3}),
            "sessions": (f"/{session}/v1/chat/completions", {"model": NAME, "messages": MSGS, "max_tokens": 3}),
        }
        for endpoint, (path, body) in streams.items():
            with http.stream("POST", path, json={**body, "stream": True}) as r:
                assert r.status_code == 200, endpoint
                text = r.read().decode()
            assert not any(c in text for c in BREAKERS), endpoint
            # every line splitter sees whole events: each data line is one JSON document
            lines = [line for line in text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
            docs = [json.loads(line[len("data: "):]) for line in lines]
            assert any(NAME in json.dumps(d, ensure_ascii=False) for d in docs), endpoint
            assert text.endswith("data: [DONE]\n\n") == (endpoint in ("chat", "completions", "sessions")), endpoint
