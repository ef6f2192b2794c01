"""Contract hostile-input, grammar part (contracts/hostile-input.md): hostile
structured-output requests against a real server get a 400 naming the limit before any
token, a grammar failing mid-generation ends only its own request with an error, and
the process's memory stays bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from support.server_thread import free_port

MESSAGES = [{"role": "user", "content": "hi"}]
ALLOF_300 = {"type": "string", "allOf": [{"pattern": f".*{i}.*"} for i in range(300)]}
RECURSIVE = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
# passes compile (its first step is a real choice) and runs past the lexer's limits
# (states or step fuel) on the token after it
FAILS_MID_GENERATION = "(x|y)(a{1000}){1000}"


def chat(server, served_model, timeout=120, **body):
    return httpx.post(server.base_url + "/v1/chat/completions", timeout=timeout,
                      json={"model": served_model.name, "messages": MESSAGES, "max_tokens": 4, **body})


LIMIT_NAMES = ("grammar_compile_memory", "grammar_compile_timeout", "max_grammar_size", "max_items_in_row",
               "step_max_items", "initial_lexer_fuel", "step_lexer_fuel", "max_lexer_states",
               "regex emptiness proof budget")


def assert_limit_400(r, param):
    """A 400 for `param` whose message names one of the grammar limits."""
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    assert err["code"] == "grammar_too_complex", err
    assert any(name in err["message"] for name in LIMIT_NAMES), err
    return err


def test_HOSTILE_GRAM_001_exploding_allof_is_400_with_bounded_memory(server, served_model):
    assert chat(server, served_model, guided_choice=["warm", "up"]).status_code == 200  # sandbox started
    proc = psutil.Process()  # the test server runs in this process
    rss_before = proc.memory_info().rss
    for _ in range(2):
        start = time.monotonic()
        r = chat(server, served_model, guided_json=ALLOF_300)
        assert time.monotonic() - start < 30
        err = assert_limit_400(r, "guided_json")
        assert "grammar_compile_memory" in err["message"] or "grammar_compile_timeout" in err["message"]
    assert proc.memory_info().rss - rss_before < 300 << 20
    ok = chat(server, served_model, guided_choice=["still", "serving"])
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] in ("still", "serving")


def test_HOSTILE_GRAM_002_a_compile_does_not_hold_plain_requests(server, served_model):
    finished = {}

    def hostile():
        r = chat(server, served_model, guided_json=ALLOF_300)
        finished["hostile"] = (time.monotonic(), r.status_code)

    t = threading.Thread(target=hostile)
    t.start()
    time.sleep(0.3)  # the hostile compile is under way (it takes seconds)
    r = chat(server, served_model, max_tokens=2)
    plain_done = time.monotonic()
    t.join()
    assert r.status_code == 200
    assert finished["hostile"][1] == 400
    assert plain_done < finished["hostile"][0]


def test_HOSTILE_GRAM_003_guided_choice_100000_is_400_and_3000_answers_a_choice(server, served_model):
    assert_limit_400(chat(server, served_model, guided_choice=[f"c{i}" for i in range(100_000)]), "guided_choice")
    choices = [f"c{i}" for i in range(3000)]
    r = chat(server, served_model, guided_choice=choices, max_tokens=10, seed=1, temperature=1.0)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] in choices
    assert choice["finish_reason"] == "stop"


def test_HOSTILE_GRAM_004_exploding_regex_is_400(server, served_model):
    assert_limit_400(chat(server, served_model, guided_regex="(a{1000}){1000}"), "guided_regex")


@pytest.mark.parametrize("field", ["guided_json", "response_format"])
def test_HOSTILE_GRAM_005_recursive_required_ref_is_400(server, served_model, field):
    body = ({"guided_json": RECURSIVE} if field == "guided_json" else
            {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": RECURSIVE}}})
    assert_limit_400(chat(server, served_model, **body), field)


def test_HOSTILE_GRAM_006_recursive_tool_schema_with_required_choice_is_400(server, served_model):
    tools = [{"type": "function", "function": {"name": "loop", "parameters": RECURSIVE}}]
    assert_limit_400(chat(server, served_model, tools=tools, tool_choice="required"), "tools")


def _sse_events(r: httpx.Response) -> list:
    events = []
    for line in r.text.split("\n"):
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_HOSTILE_GRAM_007_grammar_failing_mid_generation_is_an_error_and_spares_the_batch(server, served_model):
    r = chat(server, served_model, guided_regex=FAILS_MID_GENERATION, max_tokens=20)  # compiles (then cached)
    assert_limit_400(r, None)

    streamed = chat(server, served_model, guided_regex=FAILS_MID_GENERATION, max_tokens=20, stream=True)
    assert streamed.status_code == 200
    events = _sse_events(streamed)
    assert events[-1] == "[DONE]"
    assert "error" in events[-2] and events[-2]["error"]["code"] == "grammar_too_complex"
    assert not any(isinstance(e, dict) and e.get("choices") and e["choices"][0].get("finish_reason") == "stop"
                   for e in events)

    plain = {"max_tokens": 24, "temperature": 0.0, "ignore_eos": True}
    prompts = [f"count to {i}" for i in range(3)]

    def plain_chat(prompt):
        return httpx.post(server.base_url + "/v1/chat/completions", timeout=120, json={
            "model": served_model.name, "messages": [{"role": "user", "content": prompt}], **plain}).json()

    alone = [plain_chat(p)["choices"][0]["message"]["content"] for p in prompts]
    results: dict = {}

    def run(key, fn):
        results[key] = fn()

    threads = [threading.Thread(target=run, args=(i, lambda p=p: plain_chat(p))) for i, p in enumerate(prompts)]
    threads += [threading.Thread(target=run, args=(f"bad{j}", lambda: chat(
        server, served_model, guided_regex=FAILS_MID_GENERATION, max_tokens=20))) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for j in range(2):
        assert_limit_400(results[f"bad{j}"], None)
    for i in range(3):
        choice = results[i]["choices"][0]
        assert choice["finish_reason"] == "length"
        assert choice["message"]["content"] == alone[i]


@pytest.mark.parametrize("field, value", [("response_format", {}), ("guided_regex", ""), ("guided_choice", [])])
@pytest.mark.parametrize("route", ["chat", "completions"])
def test_HOSTILE_GRAM_008_empty_structured_output_fields_are_400(server, served_model, field, value, route):
    if route == "chat":
        r = chat(server, served_model, **{field: value})
    else:
        r = httpx.post(server.base_url + "/v1/completions", timeout=60,
                       json={"model": served_model.name, "prompt": "hi", "max_tokens": 4, field: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and err["type"] == "invalid_request_error", err


def test_HOSTILE_GRAM_009_grammar_limits_are_server_settings(server, make_server, served_model):
    schema = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(20)}}
    assert chat(server, served_model, guided_json=schema).status_code == 200
    small = make_server(grammar_max_size=50)
    err = assert_limit_400(chat(small, served_model, guided_json=schema), "guided_json")
    assert "max_grammar_size" in err["message"]


def test_HOSTILE_GRAM_010_sigterm_stops_a_server_compiling_a_hostile_grammar(tiny_model, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "w") as log:
        _sigterm_while_compiling(tiny_model, tmp_path, port, base, log)


def _sigterm_while_compiling(tiny_model, tmp_path, port, base, log):
    server = subprocess.Popen([str(Path(sys.executable).parent / "triolm"), "serve", str(tiny_model("qwen2").hf_dir),
                               "--port", str(port), "--served-model-name", "tiny", "--graceful-timeout", "3",
                               "--shutdown-delay", "0.2"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4}
        assert httpx.post(base + "/v1/chat/completions", json={**body, "guided_choice": ["a", "b"]},
                          timeout=120).status_code == 200  # the compile sandbox is up
        children = [c.pid for c in psutil.Process(server.pid).children(recursive=True)]
        assert children
        t = threading.Thread(target=lambda: httpx.post(base + "/v1/chat/completions", timeout=60,
                                                       json={**body, "guided_json": ALLOF_300}), daemon=True)
        t.start()
        time.sleep(0.5)  # the hostile compile is under way
        server.send_signal(signal.SIGTERM)
        rc = server.wait(15)  # graceful timeout 3 s + shutdown delay, with a wide margin
        assert rc == 0, (tmp_path / "server.log").read_text()
        deadline = time.monotonic() + 10
        while any(psutil.pid_exists(c) and psutil.Process(c).status() != psutil.STATUS_ZOMBIE for c in children):
            assert time.monotonic() < deadline, "the compile sandbox outlived the server"
            time.sleep(0.2)
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
