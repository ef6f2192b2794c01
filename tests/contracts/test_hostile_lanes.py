"""HOSTILE-LANE-*: tokenizer routes behind the API key, bodies bounded by size, and small
requests never queued behind big ones (contracts/hostile-input.md)."""

from __future__ import annotations

import random
import threading
import time

import httpx

from triolm.prompting.prompts import EXACT_COUNT_CHARS

MSGS = [{"role": "user", "content": "hi"}]
PROSE = "The quick brown fox jumps over the lazy dog, naïve café 東京. "


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    if code is not None:
        assert error["code"] == code, error
    return error


def test_HOSTILE_LANE_001_tokenizer_routes_need_the_api_key(make_server):
    srv = make_server(api_key="sekrit")
    url = srv.base_url
    for path, body in (("/tokenize", {"prompt": "hello"}), ("/detokenize", {"tokens": [1, 2]})):
        assert_error(httpx.post(url + path, json=body), 401, "invalid_api_key")
        assert_error(httpx.post(url + path, json=body, headers={"Authorization": "Bearer wrong"}),
                     401, "invalid_api_key")
        ok = httpx.post(url + path, json=body, headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200, ok.text
    for path in ("/livez", "/readyz", "/health", "/metrics"):
        assert httpx.get(url + path).status_code == 200, path


def test_HOSTILE_LANE_002_body_over_the_limit_is_a_413(make_server):
    limit = 64 * 1024
    srv = make_server(max_body_size=limit)
    big = "x" * (limit + 1)
    with httpx.Client(base_url=srv.base_url, timeout=60) as http:
        for path, body in (("/tokenize", {"prompt": big}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": big}]})):
            error = assert_error(http.post(path, json=body), 413)
            assert str(limit) in error["message"], error
        ok = http.post("/tokenize", json={"prompt": "small"})
        assert ok.status_code == 200 and ok.json()["count"] > 0


def test_HOSTILE_LANE_003_text_beyond_the_context_is_refused_by_size(server, served_model):
    beyond = EXACT_COUNT_CHARS + 1000
    assert beyond // served_model.max_token_chars > served_model.max_model_len
    huge = (PROSE * (beyond // len(PROSE) + 1))[:beyond]
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        chat = assert_error(http.post("/v1/chat/completions",
                                      json={"messages": [{"role": "user", "content": huge}]}),
                            400, "context_length_exceeded")
        assert f"{beyond} characters are at least" in chat["message"], chat
        assert chat["param"] == "messages"
        completion = assert_error(http.post("/v1/completions", json={"prompt": huge}), 400,
                                  "context_length_exceeded")
        assert "characters are at least" in completion["message"] and completion["param"] == "prompt"
        # Below the size cut-off the prompt is tokenized: the error names its exact count.
        small = (PROSE * 400)[: served_model.max_model_len * 12]
        exact = len(served_model.tokenizer.encode(small, add_special_tokens=True))
        assert exact > served_model.max_model_len
        counted = assert_error(http.post("/v1/completions", json={"prompt": small}), 400,
                               "context_length_exceeded")
        assert str(exact) in counted["message"] and "at least" not in counted["message"], counted


def varied_text(chars: int, seed: int = 0) -> str:
    """Text from 50,000 distinct words: the tokenizer's word cache cannot shortcut it."""
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyzäöü", k=rng.randint(3, 9))) for _ in range(50_000)]
    return " ".join(rng.choices(words, k=chars // 6))[:chars]


def test_HOSTILE_LANE_004_small_chat_passes_big_tokenize_requests(make_server):
    srv = make_server()
    big = varied_text(400_000)  # seconds of tokenizer work each (~3 s on a shared 2-core VM)
    done: dict[str, float] = {}

    def tokenize_big(i: int) -> None:
        response = httpx.post(srv.base_url + "/tokenize", json={"prompt": big}, timeout=600)
        assert response.status_code == 200
        done[f"big{i}"] = time.monotonic()

    threads = [threading.Thread(target=tokenize_big, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    large = srv.state.lanes.large
    deadline = time.monotonic() + 60
    while large.statistics().tasks_waiting < 2:  # one tokenizing, two queued behind it
        assert time.monotonic() < deadline, large.statistics()
        time.sleep(0.01)
    response = httpx.post(srv.base_url + "/v1/chat/completions", timeout=600,
                          json={"messages": MSGS, "max_tokens": 2})
    small_done = time.monotonic()
    assert response.status_code == 200, response.text
    for t in threads:
        t.join()
    assert len(done) == 3, done
    assert small_done < min(done.values()), (small_done, done)
