"""RL rollout serving through real servers: weight refresh, in-flight policies, pause and
continue, weight versions. Clause ids (RL-…) refer to contracts/rl-serving.md.

Model A is the tiny qwen2 test model (seed 0), B the same architecture with other random
weights (seed 1); the others differ from A in one way each (tests/support/rl_models.py).
"""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from support.rl_client import GREEDY, StreamReader, greedy, sse_events
from support.rl_models import model_b, model_b_gguf, relabelled_vocab_copy, wider_mlp_copy
from support.server_thread import ServerThread
from triolm.loading.served_model import load_served_model
from triolm.settings import ServerSettings

PROMPTS = [[1, 2, 3, 4, 5], [7, 7, 7], [100, 200, 300, 400], [5000, 17, 9, 3, 88, 2],
           [42], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28],
           [900, 901], [31337, 1, 31337]]


@pytest.fixture(scope="module")
def b_paths():
    return model_b()


@pytest.fixture(scope="module")
def served_b(b_paths):
    return load_served_model(ServerSettings(model=str(b_paths.hf_dir)))


@pytest.fixture(scope="module")
def fresh_b(served_b, b_paths):
    """A server started on B: the reference for everything after an update to B."""
    with ServerThread(ServerSettings(model=str(b_paths.hf_dir), weight_version="B", max_num_seqs=8),
                      served_b) as srv:
        yield srv


@pytest.fixture
def server_a(served_model):
    """A fresh server on A (its weights change during the test)."""
    with ServerThread(ServerSettings(model=served_model.path, max_num_seqs=8, weight_version="A"),
                      served_model) as srv:
        yield srv


@pytest.fixture
def http_a(server_a):
    with httpx.Client(base_url=server_a.base_url, timeout=120) as c:
        yield c


def update(http: httpx.Client, path, version: str, **extra) -> httpx.Response:
    return http.post("/update_weights_from_disk",
                     json={"model_path": str(path), "weight_version": version, **extra})


def reference(http: httpx.Client, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    return [greedy(http, p, max_tokens)[0] for p in prompts]


# -- weight refresh ------------------------------------------------------------------------

def test_rl_weights_001_update_matches_fresh_server(http_a, fresh_b, b_paths):
    with httpx.Client(base_url=fresh_b.base_url, timeout=120) as http_b:
        want = reference(http_b, PROMPTS, 24)
    before = reference(http_a, PROMPTS, 24)
    assert before != want  # A and B really differ
    r = update(http_a, b_paths.hf_dir, "B")
    assert r.status_code == 200, r.text
    assert r.json()["weight_version"] == "B" and r.json()["success"] is True
    after = []
    for p in PROMPTS:
        ids, data = greedy(http_a, p, 24)
        assert data["weight_version"] == "B"
        after.append(ids)
    assert after == want
    assert http_a.get("/v1/models").json()["data"][0]["weight_version"] == "B"
    assert http_a.get("/health").json()["weight_version"] == "B"


def test_rl_weights_002_weight_version_in_every_response(http_a, b_paths):
    assert http_a.get("/v1/models").json()["data"][0]["weight_version"] == "A"
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "ignore_eos": True}
    for version in ("A", "B"):
        r = http_a.post("/v1/chat/completions", json=chat)
        assert r.json()["weight_version"] == version
        _, data = greedy(http_a, [1, 2, 3], 5)
        assert data["weight_version"] == version
        with http_a.stream("POST", "/v1/chat/completions",
                           json={**chat, "stream": True, "stream_options": {"include_usage": True}}) as s:
            events = list(sse_events(s))
        finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
        assert [e["weight_version"] for e in finals] == [version]
        assert events[-1]["usage"] and events[-1]["weight_version"] == version  # the usage chunk
        with http_a.stream("POST", "/v1/completions",
                           json={"prompt": [5, 6], "max_tokens": 4, "ignore_eos": True, "stream": True}) as s:
            events = list(sse_events(s))
        assert [e.get("weight_version") for e in events] == [None] * (len(events) - 1) + [version]
        if version == "A":
            assert update(http_a, b_paths.hf_dir, "B").status_code == 200
    assert http_a.get("/v1/models/" + http_a.get("/v1/models").json()["data"][0]["id"]).json()[
        "weight_version"] == "B"


def test_rl_weights_003_wait_policy_finishes_in_flight_on_old_weights(server_a, http_a, fresh_b, b_paths):
    """Default policy: the stream in flight ends under A (all its tokens A's); a request
    that arrives while the swap waits runs under B after it."""
    with httpx.Client(base_url=fresh_b.base_url, timeout=120) as http_b:
        want_b = greedy(http_b, PROMPTS[1], 16)[0]
    want_a = greedy(http_a, PROMPTS[0], 40)[0]
    stream = StreamReader(server_a.base_url, PROMPTS[0], 40).start()
    assert stream.first_token.wait(60)
    assert http_a.post("/pause_generation").status_code == 200  # keeps the stream in flight
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        swap = pool.submit(update, http_a, b_paths.hf_dir, "B")  # no policy: the default
        _wait_for(lambda: http_a.get("/health").json()["weight_update_pending"] == "B")
        late = pool.submit(greedy, http_a, PROMPTS[1], 16)
        assert http_a.post("/continue_generation").status_code == 200
        r = swap.result(120)
        late_ids, late_data = late.result(120)
    assert r.status_code == 200 and r.json()["policy"] == "wait"
    assert r.json()["num_requests_affected"] == 0
    stream.join()
    assert stream.token_ids == want_a and stream.finish_reason == "length"
    assert stream.final["weight_version"] == "A"
    assert late_ids == want_b and late_data["weight_version"] == "B"


def test_rl_weights_004_abort_policy_ends_in_flight_with_abort(server_a, http_a, b_paths):
    want_a = greedy(http_a, PROMPTS[0], 200)[0]
    stream = StreamReader(server_a.base_url, PROMPTS[0], 200).start()
    assert stream.first_token.wait(60)
    assert http_a.post("/pause_generation").status_code == 200
    r = update(http_a, b_paths.hf_dir, "B", policy="abort")
    assert r.status_code == 200 and r.json()["num_requests_affected"] == 1
    stream.join()
    assert stream.finish_reason == "abort"
    assert stream.final["weight_version"] == "A"
    assert 1 <= len(stream.token_ids) < 200 and stream.token_ids == want_a[:len(stream.token_ids)]
    assert http_a.post("/continue_generation").status_code == 200
    assert greedy(http_a, PROMPTS[0], 3)[1]["weight_version"] == "B"


def test_rl_weights_005_recompute_policy_continues_on_new_weights(server_a, http_a, fresh_b, b_paths):
    """The stream in flight continues under B from its tokens so far: its first tokens
    are A's, the rest what B generates after exactly those tokens; the session node says
    which tokens came from which weights."""
    session = http_a.post("/sessions/create", json={}).json()["uuid"]
    prompt = PROMPTS[3]
    want_a = greedy(http_a, prompt, 60)[0]
    body = {"prompt_token_ids": prompt, "max_tokens": 60, "temperature": 0, "ignore_eos": True,
            "stream": True, "logprobs": True}
    got: list = []
    with httpx.Client(base_url=server_a.base_url, timeout=120) as c2:
        with c2.stream("POST", f"/{session}/v1/chat/completions", json=body) as s:
            events = sse_events(s)
            for event in events:  # until the first token
                if event["choices"] and event["choices"][0].get("logprobs"):
                    break
            assert http_a.post("/pause_generation").status_code == 200
            r = update(http_a, b_paths.hf_dir, "B", policy="recompute")
            assert r.status_code == 200 and r.json()["num_requests_affected"] == 1
            assert http_a.post("/continue_generation").status_code == 200
            got = list(events)
    assert [e["weight_version"] for e in got if e["choices"] and e["choices"][0]["finish_reason"]] == ["B"]
    node = http_a.get(f"/{session}/nodes").json()["nodes"][0]
    generated = node["tokens"][len(prompt):]
    assert len(generated) == 60
    spans = node["weight_versions"]
    assert [s["weight_version"] for s in spans] == ["A", "B"]
    split = spans[0]["end"]
    assert spans[0]["start"] == len(prompt) and spans[1] == {"weight_version": "B", "start": split,
                                                              "end": len(node["tokens"])}
    assert node["weight_version"] == "B"
    n_a = split - len(prompt)
    assert 1 <= n_a < 60
    assert generated[:n_a] == want_a[:n_a]
    with httpx.Client(base_url=fresh_b.base_url, timeout=120) as http_b:
        assert generated[n_a:] == greedy(http_b, node["tokens"][:split], 60 - n_a)[0]


def test_rl_weights_006_prefix_cache_invalidated(http_a, fresh_b, b_paths):
    long_prompt = list(range(10, 90))  # five full KV blocks

    def chat(http: httpx.Client) -> tuple[list[int], int]:
        """(greedy ids, prompt tokens found in the prefix cache)"""
        r = http.post("/v1/chat/completions", json={"prompt_token_ids": long_prompt, "max_tokens": 8, **GREEDY,
                                                    "logprobs": True})
        ids = [int(c["token"].removeprefix("token_id:")) for c in r.json()["choices"][0]["logprobs"]["content"]]
        return ids, r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    chat(http_a)
    assert chat(http_a)[1] > 0  # the cache works
    assert update(http_a, b_paths.hf_dir, "B", policy="abort").status_code == 200
    ids, cached = chat(http_a)
    assert cached == 0
    with httpx.Client(base_url=fresh_b.base_url, timeout=120) as http_b:
        assert ids == chat(http_b)[0]


def test_rl_weights_007_mismatch_is_400_and_old_weights_keep_serving(server_a, http_a, served_model,
                                                                     b_paths, tiny_model, tmp_path):
    want = reference(http_a, PROMPTS[:3], 12)
    cases = [
        (wider_mlp_copy(tiny_model("qwen2"), tmp_path / "wide"), "intermediate_size"),
        (tiny_model("qwen3").hf_dir, "architecture"),
        (relabelled_vocab_copy(b_paths, tmp_path / "vocab"), "tokenizer"),
        (tmp_path / "nowhere", "no such file"),
    ]
    stream = StreamReader(server_a.base_url, PROMPTS[0], 200).start()  # in flight throughout
    for path, named in cases:
        r = update(http_a, path, "C")
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert named in err["message"] and err["param"] == "model_path" and err["type"] == "invalid_request_error"
    r = http_a.post("/update_weights_from_disk", json={"model_path": str(b_paths.hf_dir), "policy": "later"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "policy"
    assert http_a.post("/update_weights_from_disk", json={}).status_code == 400
    for extra, param in (({"flush_cache": False}, "flush_cache"), ({"pin": 1}, "pin")):
        r = http_a.post("/update_weights_from_disk", json={"model_path": str(b_paths.hf_dir), **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    stream.join()
    assert stream.finish_reason == "length" and len(stream.token_ids) == 200
    assert stream.final["weight_version"] == "A"
    assert reference(http_a, PROMPTS[:3], 12) == want
    assert http_a.get("/health").json()["weight_version"] == "A"


def test_rl_weights_008_gguf_weights(http_a, fresh_b, b_paths):
    """The new weights may come as a GGUF file of the same model, quantized too."""
    r = update(http_a, b_paths.gguf_path("F32"), "B-gguf")
    assert r.status_code == 200, r.text
    with httpx.Client(base_url=fresh_b.base_url, timeout=120) as http_b:
        want = reference(http_b, PROMPTS[:3], 12)
    assert reference(http_a, PROMPTS[:3], 12) == want
    q8 = model_b_gguf("Q8_0")
    assert update(http_a, q8, "B-q8").status_code == 200
    settings = ServerSettings(model=str(q8), weight_version="B-q8")
    with ServerThread(settings, load_served_model(settings)) as fresh_q8:
        with httpx.Client(base_url=fresh_q8.base_url, timeout=120) as http_q8:
            want_q8 = reference(http_q8, PROMPTS[:3], 12)
    assert reference(http_a, PROMPTS[:3], 12) == want_q8


# -- pause and continue ----------------------------------------------------------------------

def test_rl_pause_001_eight_streams_lose_nothing(server_a, http_a):
    want = reference(http_a, PROMPTS, 160)  # long enough that none ends before the pause
    streams = [StreamReader(server_a.base_url, p, 160).start() for p in PROMPTS]
    for s in streams:
        assert s.first_token.wait(60)
    r = http_a.post("/pause_generation")
    assert r.status_code == 200 and r.json()["generation"] == "paused"
    steps = server_a.state.serving().driver.stats.steps
    health = http_a.get("/health").json()
    assert health["generation"] == "paused" and health["status"] == "ok"
    assert health["requests_running"] + health["requests_waiting"] == 8
    time.sleep(1.0)  # a running engine takes many steps in a second (a broken pause shows here)
    assert server_a.state.serving().driver.stats.steps == steps  # nothing stepped while paused
    assert http_a.post("/pause_generation").status_code == 200  # idempotent
    for _ in range(2):
        r = http_a.post("/continue_generation")
        assert r.status_code == 200 and r.json()["generation"] == "running"
    for s in streams:
        s.join()
    assert [s.token_ids for s in streams] == want
    assert all(s.finish_reason == "length" for s in streams)


def test_rl_pause_002_modes_queue_and_reject(server_a, http_a):
    want = greedy(http_a, PROMPTS[2], 8)[0]
    assert http_a.post("/pause_generation", json={"mode": "reject"}).json()["pause_mode"] == "reject"
    r = http_a.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["code"] == "generation_paused"
    r = http_a.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 503
    assert http_a.post("/pause_generation", json={"mode": "queue"}).json()["pause_mode"] == "queue"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        queued = pool.submit(greedy, http_a, PROMPTS[2], 8)
        _wait_for(lambda: http_a.get("/health").json()["requests_waiting"] == 1)
        assert not queued.done()
        assert http_a.post("/continue_generation").status_code == 200
        assert queued.result(60)[0] == want
    r = http_a.post("/pause_generation", json={"mode": "sideways"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "mode"
    assert http_a.get("/health").json()["generation"] == "running"  # the bad call changed nothing


def test_rl_pause_003_concurrent_calls_and_vllm_aliases(server_a, http_a, b_paths):
    want = reference(http_a, PROMPTS[:4], 32)
    streams = [StreamReader(server_a.base_url, p, 32).start() for p in PROMPTS[:4]]
    for s in streams:
        assert s.first_token.wait(60)
    calls = ["/pause_generation", "/pause", "/continue_generation", "/resume", "/pause", "/resume"] * 3
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda path: httpx.post(server_a.base_url + path, timeout=60).status_code,
                                 calls))
    assert statuses == [200] * len(calls)
    assert http_a.post("/resume").json()["generation"] == "running"
    assert http_a.get("/is_paused").json() == {"is_paused": False}
    for s in streams:
        s.join()
    assert [s.token_ids for s in streams] == want


def test_rl_pause_004_in_flight_modes_abort_retract_wait(server_a, http_a):
    want = greedy(http_a, PROMPTS[0], 120)[0]
    # abort (vLLM's default): the stream in flight ends now with what it has
    stream = StreamReader(server_a.base_url, PROMPTS[0], 120).start()
    assert stream.first_token.wait(60)
    r = http_a.post("/pause", params={"mode": "abort"})
    assert r.status_code == 200 and r.json()["generation"] == "paused"
    stream.join()
    assert stream.finish_reason == "abort" and stream.token_ids == want[:len(stream.token_ids)]
    assert len(stream.token_ids) < 120
    http_a.post("/continue_generation")
    # retract (SGLang): back to waiting without KV, recomputed on continue
    stream = StreamReader(server_a.base_url, PROMPTS[0], 120).start()
    assert stream.first_token.wait(60)
    assert http_a.post("/pause_generation", json={"mode": "retract"}).status_code == 200
    health = http_a.get("/health").json()
    assert health["kv_cache_usage"] == 0.0 and health["requests_waiting"] == 1
    http_a.post("/continue_generation")
    assert stream.join().token_ids == want
    # wait: the pause takes effect once the stream in flight has finished
    stream = StreamReader(server_a.base_url, PROMPTS[0], 120).start()
    assert stream.first_token.wait(60)
    assert http_a.post("/pause", params={"mode": "wait"}).json()["generation"] == "paused"
    assert http_a.get("/health").json()["requests_running"] == 0
    assert stream.join().token_ids == want and stream.finish_reason == "length"
    http_a.post("/continue_generation")
    r = http_a.post("/pause", json={"mode": ["abort"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "mode"


def test_rl_auth_001_trainer_routes_need_the_api_key(served_model, b_paths):
    settings = ServerSettings(model=served_model.path, api_key="sekrit", weight_version="A")
    with ServerThread(settings, served_model) as srv:
        with httpx.Client(base_url=srv.base_url, timeout=60) as http:
            for path in ("/update_weights_from_disk", "/pause_generation", "/continue_generation",
                         "/release_memory_occupation", "/resume_memory_occupation", "/pause", "/resume",
                         "/sleep", "/wake_up"):
                r = http.post(path, json={"model_path": str(b_paths.hf_dir)})
                assert r.status_code == 401, path
            assert http.get("/is_paused").status_code == 401
            health = http.get("/health").json()
            assert health["weight_version"] == "A" and health["generation"] == "running"
            authed = {"Authorization": "Bearer sekrit"}
            r = http.post("/update_weights_from_disk", headers=authed,
                          json={"model_path": str(b_paths.hf_dir), "weight_version": "B"})
            assert r.status_code == 200
            assert http.get("/health").json()["weight_version"] == "B"


# -- sessions and token ids ------------------------------------------------------------------

def test_rl_sessions_001_nodes_since_marker(http_a, b_paths):
    session = http_a.post("/sessions/create", json={}).json()["uuid"]
    first = http_a.get(f"/{session}/nodes").json()
    assert first == {"nodes": [], "marker": 0}
    turn = {"messages": [{"role": "user", "content": "one"}], "max_tokens": 6, "ignore_eos": True}
    other = {"messages": [{"role": "user", "content": "two"}], "max_tokens": 6, "ignore_eos": True}
    assert http_a.post(f"/{session}/v1/chat/completions", json=turn).status_code == 200
    assert http_a.post(f"/{session}/v1/chat/completions", json=other).status_code == 200
    now = http_a.get(f"/{session}/nodes").json()
    assert len(now["nodes"]) == 2 and now["marker"] == 2
    assert [n["weight_version"] for n in now["nodes"]] == ["A", "A"]
    assert http_a.get(f"/{session}/nodes", params={"since": now["marker"]}).json() == {
        "nodes": [], "replaced_node_ids": [], "marker": 2}
    assert update(http_a, b_paths.hf_dir, "B").status_code == 200
    assert http_a.post(f"/{session}/v1/chat/completions", json=turn).status_code == 200  # a new branch
    # the first node extended under the new weights: it replaces the node it extends
    first_node = now["nodes"][0]
    extend = {"prompt_token_ids": first_node["tokens"] + [9, 9], "max_tokens": 6, "ignore_eos": True}
    assert http_a.post(f"/{session}/v1/chat/completions", json=extend).status_code == 200
    changed = http_a.get(f"/{session}/nodes", params={"since": now["marker"]}).json()
    assert changed["marker"] == 4
    assert all(n["revision"] > 2 for n in changed["nodes"])
    assert {n["weight_version"] for n in changed["nodes"]} == {"B"}
    extended = [n for n in changed["nodes"] if n["parent_id"] == first_node["id"]]
    assert len(extended) == 1 and changed["replaced_node_ids"] == [first_node["id"]]
    spans = extended[0]["weight_versions"]
    assert [s["weight_version"] for s in spans] == ["A", "B"]  # which tokens came from which
    assert spans[0] == first_node["weight_versions"][0]
    r = http_a.get(f"/{session}/nodes", params={"since": "yesterday"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "since"


def test_rl_sessions_002_prompt_token_ids_in_chat(http_a):
    prompt = [1, 2, 3, 4, 5]
    want = greedy(http_a, prompt, 10)[0]
    body = {"prompt_token_ids": prompt, "max_tokens": 10, "temperature": 0, "ignore_eos": True,
            "logprobs": True, "return_tokens_as_token_ids": True, "return_token_ids": True}
    r = http_a.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    got = [int(c["token"].removeprefix("token_id:")) for c in choice["logprobs"]["content"]]
    assert got == want and choice["token_ids"] == want  # ids in and out, with logprobs
    assert r.json()["prompt_token_ids"] == prompt
    session = http_a.post("/sessions/create", json={}).json()["uuid"]
    assert http_a.post(f"/{session}/v1/chat/completions", json=body).status_code == 200
    node = http_a.get(f"/{session}/nodes").json()["nodes"][0]
    assert node["tokens"] == prompt + want
    assert node["masked_tokens"] == [-100] * len(prompt) + want
    # the next turn continues from exactly the node's ids plus new ones
    turn2 = {**body, "prompt_token_ids": node["tokens"] + [9, 9]}
    assert http_a.post(f"/{session}/v1/chat/completions", json=turn2).status_code == 200
    nodes = http_a.get(f"/{session}/nodes").json()["nodes"]
    assert len(nodes) == 1 and nodes[0]["parent_id"] == node["id"]
    assert nodes[0]["tokens"][:len(node["tokens"]) + 2] == node["tokens"] + [9, 9]
    assert nodes[0]["metadata"]["num_new_prompt_tokens"] == 2
    for bad, param in (({"prompt_token_ids": []}, "prompt_token_ids"),
                       ({"prompt_token_ids": [10 ** 9]}, "prompt_token_ids"),
                       ({"prompt_token_ids": [1], "messages": [{"role": "user", "content": "x"}]},
                        "prompt_token_ids"),
                       ({}, "messages")):
        r = http_a.post("/v1/chat/completions", json={"max_tokens": 2, **bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, bad


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)

