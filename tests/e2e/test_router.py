"""`triolm router` in front of three real `triolm serve` backends on the tiny model, all
real processes on 127.0.0.1: the seed-002 session scenarios with token-exact nodes,
pinning and prefix affinity, drain, backpressure, the backends file, the API keys, a
backend dying mid-stream and a dead backend's request retried elsewhere.
(Contract clauses: contracts/router.md; the vLLM path: tests/test_router_vllm_standin.py.)

The tests that kill a backend come last and restart it.
"""

from __future__ import annotations

import json
import signal

import httpx
import openai
import pytest
import trio

from support.router_fleet import Fleet, start_router, wait_admitted
from support.sessions_api import MASK, SessionsAPI, assert_well_formed
from triolm.cli import main

HI = [{"role": "user", "content": "Hi"}]
SEARCH = [{"type": "function", "function": {
    "name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


def raw_call(name: str, args: dict) -> str:
    """Hermes markup in the template's own spelling (so a call sent back re-renders to it)."""
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


@pytest.fixture(scope="module")
def fleet(tiny_model, tmp_path_factory):
    f = Fleet(str(tiny_model("qwen2").hf_dir), tmp_path_factory.mktemp("fleet"))
    yield f
    f.stop()


@pytest.fixture
def rapi(fleet):
    client = SessionsAPI(fleet.router.base_url)
    client.delete_all()
    yield client
    client.delete_all()
    client.close()


def steps_backends(node: dict) -> list[str]:
    return [s["backend"] for s in node["metadata"]["steps"]]


# -- RTR.1 the surface ----------------------------------------------------------------------
def test_rtr1_models_tokenize_health_and_error_shapes(fleet, rapi):
    http = rapi.http
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["hf"]
    direct = httpx.post(fleet.urls[0] + "/tokenize", json={"messages": HI}, timeout=60).json()
    assert http.post("/tokenize", json={"messages": HI}).json()["tokens"] == direct["tokens"]
    assert http.post("/detokenize", json={"tokens": direct["tokens"]}).json()["prompt"] == \
        httpx.post(fleet.urls[0] + "/detokenize", json={"tokens": direct["tokens"]}, timeout=60).json()["prompt"]
    health = http.get("/health").json()
    assert health["status"] == "ok" and len(health["backends"]) == 3
    for bad in ({"messages": []}, {"messages": HI, "max_tokens": 0}, {"messages": HI, "model": "nope"}):
        r = http.post("/v1/chat/completions", json=bad)
        assert r.status_code in (400, 404)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 5000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = http.post("/v1/chat/completions", json={"messages": HI, "tools": SEARCH, "tool_choice": "required"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"


def test_rtr1_completions_are_passed_on_as_token_ids(fleet, rapi):
    body = {"prompt": "Once upon", "max_tokens": 6, "temperature": 0, "logprobs": 0,
            "return_tokens_as_token_ids": True}
    routed = rapi.http.post("/v1/completions", json=body)
    assert routed.status_code == 200
    direct = httpx.post(fleet.urls[1] + "/v1/completions", json=body, timeout=60).json()
    assert routed.json()["choices"][0]["logprobs"]["tokens"] == direct["choices"][0]["logprobs"]["tokens"]
    assert routed.json()["model"] == "hf"


# -- RTR.2 the seed-002 session scenarios, token-exact ------------------------------------
def test_rtr2_session_lifecycle(rapi):
    data = rapi.http.post("/sessions/create", json={}).json()
    assert data["model_name"] == "hf" and data["tool_parser"] == "hermes"
    custom = rapi.http.post("/sessions/create", json={"tool_parser": "llama3_json"}).json()
    assert custom["tool_parser"] == "llama3_json"
    uuids = {data["uuid"], custom["uuid"]} | {rapi.create() for _ in range(2)}
    assert {s["uuid"] for s in rapi.http.get("/sessions").json()["sessions"]} == uuids
    assert rapi.http.get("/health").json()["sessions"] == 4
    uid = data["uuid"]
    assert rapi.http.delete(f"/{uid}").json()["status"] == "deleted"
    for r in (rapi.http.get(f"/{uid}/nodes"), rapi.http.delete("/nonexistent-uuid"),
              rapi.http.post("/nonexistent-uuid/v1/chat/completions", json={"messages": HI})):
        assert r.status_code == 404
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_rtr2_basic_completion_n_and_system_prompt(rapi):
    uid = rapi.create()
    data = rapi.chat(uid, [{"role": "user", "content": "Hello"}], max_tokens=8)
    assert data["object"] == "chat.completion" and data["model"] == "hf" and data["id"].startswith("chatcmpl-")
    assert data["choices"][0]["message"]["role"] == "assistant"
    data = rapi.chat(rapi.create(), [{"role": "user", "content": "Pick a number"}], n=3, max_tokens=4)
    assert len(data["choices"]) == 3
    uid = rapi.create()
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"}]
    data = rapi.chat(uid, messages, max_tokens=4)
    assert data["choices"][0]["message"]["content"]
    r = rapi.http.post(f"/{uid}/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_rtr2_nodes_are_the_backends_own_ids_and_logprobs(fleet, rapi):
    """The node's tokens = the response's prompt_token_ids + token_ids; replaying the same
    token ids on the backend that served it gives the same ids and logprobs."""
    uid = rapi.create()
    data = rapi.chat(uid, HI, max_tokens=8, temperature=0, logprobs=True, return_token_ids=True,
                     return_tokens_as_token_ids=True)
    [node] = rapi.nodes(uid)
    assert_well_formed(node)
    choice = data["choices"][0]
    assert node["tokens"] == data["prompt_token_ids"] + choice["token_ids"]
    n_prompt = len(data["prompt_token_ids"])
    assert all(m == MASK for m in node["masked_tokens"][:n_prompt])
    assert all(lp == 1.0 for lp in node["logprobs"][:n_prompt])
    assert [t["logprob"] for t in choice["logprobs"]["content"]] == node["logprobs"][n_prompt:]
    backend = node["metadata"]["backend"]
    direct = httpx.post(backend + "/v1/completions", timeout=60, json={
        "prompt": data["prompt_token_ids"], "max_tokens": 8, "temperature": 0, "logprobs": 0,
        "return_tokens_as_token_ids": True}).json()["choices"][0]["logprobs"]
    assert [int(t.split(":")[1]) for t in direct["tokens"]] == choice["token_ids"]
    assert direct["token_logprobs"] == pytest.approx(node["logprobs"][n_prompt:], abs=1e-5)
    rendered = rapi.render(uid, HI)
    assert rendered["token_ids"] == data["prompt_token_ids"]


def test_rtr2_render(rapi):
    uid = rapi.create()
    data = rapi.render(uid, [{"role": "user", "content": "Hello"}])
    assert data["num_tokens"] == len(data["token_ids"]) and "Hello" in data["prompt_text"]
    with_tools = rapi.render(uid, HI, tools=SEARCH)
    assert "search" in with_tools["prompt_text"]
    assert rapi.nodes(uid) == []


def test_rtr2_tool_calls_parsed_and_raw_in_nodes(rapi):
    uid = rapi.create()
    raw = raw_call("search", {"q": "cats"})
    messages = [{"role": "user", "content": "Search cats"}]
    data = rapi.chat(uid, messages, tools=SEARCH, guided_choice=[raw], max_tokens=48)
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [tc] = choice["message"]["tool_calls"]
    assert tc["function"]["name"] == "search" and json.loads(tc["function"]["arguments"]) == {"q": "cats"}
    [node] = rapi.nodes(uid)
    assert raw in node["full_text"]
    none = rapi.chat(rapi.create(), messages, tools=SEARCH, tool_choice="none", guided_choice=[raw],
                     max_tokens=48)["choices"][0]
    assert none["finish_reason"] == "stop" and not none["message"].get("tool_calls")
    assert none["message"]["content"] == raw


def _step(rapi, uid, messages, **body):
    rendered = rapi.render(uid, messages, **body)
    data = rapi.chat(uid, messages, **body)
    nodes = rapi.nodes(uid)
    assert len(nodes) == 1, f"expected one node, got {len(nodes)}"
    assert nodes[0]["tokens"][:rendered["num_tokens"]] == rendered["token_ids"]
    assert_well_formed(nodes[0])
    return data, nodes[0]


def test_rtr2_agentic_conversation_is_one_node(rapi):
    """user → call → tool result → text → user → call → result → text: one node."""
    uid = rapi.create()
    messages = [{"role": "user", "content": "Search for cats"}]
    data, _ = _step(rapi, uid, messages, tools=SEARCH, guided_choice=[raw_call("search", {"q": "cats"})],
                    max_tokens=48)
    calls = data["choices"][0]["message"]["tool_calls"]
    messages += [{"role": "assistant", "content": None, "tool_calls": calls},
                 {"role": "tool", "tool_call_id": calls[0]["id"], "content": "Found 10 cats"}]
    data, _ = _step(rapi, uid, messages, tools=SEARCH, max_tokens=6)
    messages += [{"role": "assistant", "content": data["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "Search for dogs too"}]
    data, _ = _step(rapi, uid, messages, tools=SEARCH, guided_choice=[raw_call("search", {"q": "dogs"})],
                    max_tokens=48)
    calls = data["choices"][0]["message"]["tool_calls"]
    messages += [{"role": "assistant", "content": None, "tool_calls": calls},
                 {"role": "tool", "tool_call_id": calls[0]["id"], "content": "Found 5 dogs"}]
    _, node = _step(rapi, uid, messages, tools=SEARCH, max_tokens=6)
    assert node["metadata"]["num_steps"] == 4
    assert len(set(steps_backends(node))) == 1  # pinned: every step on one backend


def test_rtr2_streamed_turn_is_recorded_and_delete_resets_nodes(rapi):
    uid = rapi.create()
    r = rapi.http.post(f"/{uid}/v1/chat/completions",
                       json={"messages": HI, "max_tokens": 6, "stream": True, "return_token_ids": True})
    events = [e[6:] for e in r.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    prompt_ids = chunks[0]["prompt_token_ids"]
    generated = [t for c in chunks for ch in c["choices"] for t in ch.get("token_ids", [])]
    [node] = rapi.nodes(uid)
    assert node["tokens"] == prompt_ids + generated
    assert rapi.http.delete(f"/{uid}").status_code == 200
    assert rapi.http.get(f"/{uid}/nodes").status_code == 404


# -- RTR.3 pinning and prefix affinity ----------------------------------------------------
def test_rtr3_five_turns_stay_on_one_backend_and_prefill_only_what_is_new(rapi):
    uid = rapi.create()
    messages = [{"role": "system", "content": "You are a terse assistant."}]
    previous = None
    for turn in range(5):
        messages.append({"role": "user", "content": f"Turn {turn + 1}: tell me something."})
        data, node = _step(rapi, uid, messages, max_tokens=6, seed=turn)
        step = node["metadata"]["steps"][-1]
        if previous is not None:
            # SES.11 through the router: the prefix step k-1 computed is a cache hit on
            # its backend (all but its last sampled token, up to a 16-token block)
            new = step["num_prompt_tokens"] - (len(previous["tokens"]) - 1)
            assert new <= step["num_prefilled_tokens"] < new + 16, step
        previous = node
        messages.append({"role": "assistant", "content": data["choices"][0]["message"]["content"]})
    assert len(set(steps_backends(previous))) == 1
    assert previous["metadata"]["num_steps"] == 5


def test_rtr3_shared_prefix_goes_to_the_backend_that_served_it(fleet, rapi):
    system = {"role": "system", "content": "Shared preamble for affinity. " * 8}
    before = rapi.http.get("/admin/backends").json()["routing"]
    served = set()
    for i in range(6):
        r = rapi.http.post("/v1/chat/completions", json={
            "messages": [system, {"role": "user", "content": f"question {i}"}], "max_tokens": 2})
        assert r.status_code == 200
        served.add(r.headers["X-Triolm-Backend"])
    after = rapi.http.get("/admin/backends").json()["routing"]
    assert len(served) == 1
    assert after["affinity_hits"] - before["affinity_hits"] == 5


# -- RTR.6 drain --------------------------------------------------------------------------
async def _stream_chat(client: httpx.AsyncClient, body: dict, started: list | None = None
                       ) -> tuple[str, list[dict], bool]:
    """(backend, the parsed events, whether [DONE] came) of one streamed chat; `started`
    gets the backend once the stream is under way (the router answers 200 with the
    backend's first token)."""
    events, done = [], False
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        backend = r.headers["X-Triolm-Backend"]
        if started is not None:
            started.append(backend)
        buffer = b""
        async for chunk in r.aiter_bytes():
            buffer += chunk
            while b"\n\n" in buffer:
                raw, buffer = buffer.split(b"\n\n", 1)
                if raw == b"data: [DONE]":
                    done = True
                elif raw.startswith(b"data: "):
                    events.append(json.loads(raw[6:]))
    return backend, events, done


def _finished(events: list[dict]) -> bool:
    return any(c.get("finish_reason") for e in events for c in e.get("choices", []))


async def test_rtr6_drained_backend_gets_no_new_work_and_in_flight_work_finishes(fleet):
    long = {"messages": HI, "max_tokens": 160, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=fleet.router.base_url, timeout=120) as client:
        result = {}
        async with trio.open_nursery() as nursery:
            async def run_long():
                result["long"] = await _stream_chat(client, long)
            nursery.start_soon(run_long)
            while not any(b["in_flight"] for b in (await client.get("/admin/backends")).json()["backends"]):
                await trio.sleep(0.02)
            busy = next(b["url"] for b in (await client.get("/admin/backends")).json()["backends"] if b["in_flight"])
            r = await client.post("/admin/backends/drain", json={"url": busy})
            assert r.status_code == 200 and r.json()["draining"]
            for _ in range(6):
                r = await client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2})
                assert r.status_code == 200 and r.headers["X-Triolm-Backend"] != busy
        backend, events, done = result["long"]
        assert backend == busy and done and _finished(events)
        assert not any("error" in e for e in events)
        await client.post("/admin/backends/undrain", json={"url": busy})
    wait_admitted(fleet.router, 3)


# -- RTR.1/7/8 API key, backpressure, backends file ----------------------------------------
@pytest.fixture(scope="module")
def keyed_router(fleet, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("keyed")
    backends_file = tmp_path / "backends.txt"
    backends_file.write_text(f"# the fleet\n{fleet.urls[0]}\n")
    router = start_router(fleet.model_dir, [], tmp_path / "keyed-router.log", "--api-key", "k",
                          "--backends-file", str(backends_file), "--backend-max-inflight", "1",
                          "--health-interval", "0.5")
    wait_admitted(router, 1, headers={"Authorization": "Bearer k"})
    yield router, backends_file
    router.stop()


async def test_rtr7_saturated_fleet_answers_429_at_once_and_rtr1_api_key(keyed_router):
    router, _ = keyed_router
    assert httpx.get(router.base_url + "/livez").status_code == 200
    for method, path in (("POST", "/v1/chat/completions"), ("POST", "/sessions/create"),
                         ("GET", "/admin/backends"), ("POST", "/admin/backends/reload")):
        r = httpx.request(method, router.base_url + path, json={"messages": HI}, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    auth = {"Authorization": "Bearer k"}
    async with httpx.AsyncClient(base_url=router.base_url, timeout=120, headers=auth) as client:
        async with client.stream("POST", "/v1/chat/completions", json={
                "messages": HI, "max_tokens": 200, "ignore_eos": True, "stream": True}) as held:
            assert held.status_code == 200
            with trio.fail_after(10):  # "at once": no queueing behind the held request
                r = await client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2})
            assert r.status_code == 429
            assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "overloaded"
        r = await client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2})
        assert r.status_code == 200


def test_rtr8_backends_file_is_reread_on_sighup_and_the_admin_route(fleet, keyed_router):
    router, backends_file = keyed_router
    auth = {"Authorization": "Bearer k"}
    backends_file.write_text(f"{fleet.urls[0]}\n{fleet.urls[1]}\n")
    router.popen.send_signal(signal.SIGHUP)
    data = wait_admitted(router, 2, timeout=30, headers=auth)
    assert {b["url"] for b in data["backends"]} == set(fleet.urls[:2])
    backends_file.write_text(f"{fleet.urls[1]}\n")
    r = httpx.post(router.base_url + "/admin/backends/reload", headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["removed"] == [fleet.urls[0]]
    listed = httpx.get(router.base_url + "/admin/backends", headers=auth, timeout=60).json()["backends"]
    assert [b["url"] for b in listed] == [fleet.urls[1]]


# -- RTR.1b the API keys, taken as `triolm serve` takes them ------------------------------
def test_rtr1b_every_key_of_flag_file_and_environment_opens_the_router_and_no_other(fleet, tmp_path):
    key_file = tmp_path / "router-keys"
    key_file.write_text("# the team's keys\n\n  k-file  \n")
    router = start_router(fleet.model_dir, [fleet.urls[0]], tmp_path / "router-keys.log",
                          "--api-key", "k-flag", "--api-key-file", str(key_file), "--health-interval", "0.5",
                          env={"TRIOLM_EXTRA_API_KEYS": "k-env"})
    try:
        wait_admitted(router, 1, headers={"Authorization": "Bearer k-flag"})
        for key in ("k-flag", "k-file", "k-env"):
            client = openai.OpenAI(base_url=router.base_url + "/v1", api_key=key, max_retries=0)
            assert [m.id for m in client.models.list().data] == ["hf"]
            chat = client.chat.completions.create(model="hf", messages=HI, max_tokens=2)
            assert chat.usage is not None and chat.usage.completion_tokens == 2
            # Anthropic's clients send the key as x-api-key
            r = httpx.post(router.base_url + "/v1/chat/completions", headers={"x-api-key": key},
                           json={"messages": HI, "max_tokens": 2}, timeout=60)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        wrong = ({}, {"Authorization": "Bearer k-fla"}, {"Authorization": "Bearer k-flag,k-file"},
                 {"Authorization": "Bearer # the team's keys"}, {"Authorization": "Basic k-flag"},
                 {"x-api-key": "k-fil"})
        for headers in wrong:
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                                 ("GET", "/admin/backends")):
                r = httpx.request(method, router.base_url + path, headers=headers,
                                  json={"messages": HI, "max_tokens": 2}, timeout=60)
                assert r.status_code == 401, (headers, path)
                error = r.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=router.base_url + "/v1", api_key="nope", max_retries=0).models.list()
        admin = httpx.get(router.base_url + "/admin/backends", headers={"x-api-key": "k-env"}, timeout=60)
        assert admin.status_code == 200 and [b["url"] for b in admin.json()["backends"]] == [fleet.urls[0]]
        assert httpx.get(router.base_url + "/livez", timeout=60).status_code == 200  # probes stay open
    finally:
        router.stop()


def test_rtr1b_a_key_file_without_a_key_stops_the_router(tiny_model, tmp_path, capsys):
    """It would leave the routes open: the router refuses to start, as serve does (an
    address no one can bind, should it not)."""
    empty = tmp_path / "empty-keys"
    empty.write_text("# nothing yet\n\n")
    router = ["router", "--tokenizer", str(tiny_model("qwen2").hf_dir), "--backend", "http://127.0.0.1:9",
              "--host", "203.0.113.1"]
    assert main([*router, "--api-key", "k", "--api-key-file", str(empty)]) == 2
    assert "holds no key" in capsys.readouterr().err
    assert main([*router, "--api-key-file", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


# -- RTR.5 retry once; RTR.4 a backend dying mid-stream (these kill a backend) --------------
def test_rtr5_a_dead_backends_request_is_retried_once_elsewhere_and_the_session_moves(fleet, tmp_path):
    """A router that has not noticed the death yet (health checks a minute apart) tries the
    pinned backend, finds its port closed, and sends the turn to another one."""
    router = start_router(fleet.model_dir, fleet.urls, tmp_path / "slow-health-router.log",
                          "--health-interval", "60")
    try:
        wait_admitted(router, 3)
        api = SessionsAPI(router.base_url)
        uid = api.create()
        data = api.chat(uid, HI, max_tokens=4)
        [node] = api.nodes(uid)
        first = node["metadata"]["backend"]
        fleet.kill_backend(fleet.index_of(first))
        messages = HI + [{"role": "assistant", "content": data["choices"][0]["message"]["content"]},
                         {"role": "user", "content": "again"}]
        api.chat(uid, messages, max_tokens=4)
        [node] = api.nodes(uid)
        step = node["metadata"]
        assert step["backend"] != first and step["moved_from"] == first
        assert step["moved_because"].startswith("down")
        assert node["metadata"]["num_steps"] == 2  # still one node, extended on the new backend
        routing = api.http.get("/admin/backends").json()["routing"]
        assert routing["retries"] == 1 and routing["moved_sessions"] == 1
        api.close()
    finally:
        router.stop()
        fleet.restart_backend(next(i for i, b in enumerate(fleet.backends) if b.popen.poll() is not None))
    wait_admitted(fleet.router, 3)


async def test_rtr4_killing_a_backend_during_32_streams(fleet):
    body = {"messages": HI, "max_tokens": 40, "ignore_eos": True}
    victim = 0
    results: list[tuple[str, list[dict], bool]] = []
    async with httpx.AsyncClient(base_url=fleet.router.base_url, timeout=240,
                                 limits=httpx.Limits(max_connections=64)) as client:
        with trio.fail_after(300):  # nothing hangs (a generous bound: the machine is shared)
            async with trio.open_nursery() as nursery:
                started: list[str] = []

                async def one():
                    results.append(await _stream_chat(client, body, started))
                for _ in range(32):
                    nursery.start_soon(one)
                while started.count(fleet.urls[victim]) < 2:  # kill it mid-stream
                    await trio.sleep(0.01)
                fleet.kill_backend(victim)
        assert len(results) == 32 and all(done for _, _, done in results)
        dead_url = fleet.urls[victim]
        for backend, events, _ in results:
            errors = [e["error"] for e in events if "error" in e]
            if backend == dead_url and errors:
                assert errors[0]["code"] == "backend_failed" and not _finished(events)
            else:
                assert not errors and _finished(events)
        assert any(backend == dead_url and any("error" in e for e in events) for backend, events, _ in results)
        # within the health interval (0.5 s x 2 failures) the dead backend is out
        await trio.sleep(1.5)
        for _ in range(6):
            r = await client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2})
            assert r.status_code == 200 and r.headers["X-Triolm-Backend"] != dead_url
        summary = (await client.get("/admin/backends")).json()["backends"]
        assert not summary[victim]["healthy"]
    fleet.restart_backend(victim)
    data = wait_admitted(fleet.router, 3, timeout=60)  # re-admitted once it answers again
    assert data["backends"][victim]["healthy"]
