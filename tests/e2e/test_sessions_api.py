"""The session routes against a real server and the tiny real model: health/models,
session lifecycle, completions recorded as nodes, render, masking, errors.
(Contract clauses: contracts/sessions.md.)"""

from __future__ import annotations

from support.sessions_api import MASK, assert_well_formed, eos_after, generated_part

HI = [{"role": "user", "content": "Hi"}]


# -- health / models ---------------------------------------------------------------------
def test_health_reports_sessions(api, served_model):
    data = api.http.get("/health").json()
    assert data["status"] == "ok" and data["model"] == served_model.name
    assert data["sessions"] == 0
    api.create()
    api.create()
    assert api.http.get("/health").json()["sessions"] == 2


def test_models(api, served_model):
    data = api.http.get("/v1/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == [served_model.name]


# -- session management -----------------------------------------------------------------
def test_create_session(api, served_model):
    r = api.http.post("/sessions/create", json={})
    assert r.status_code == 200
    data = r.json()
    assert len(data["uuid"]) == 36
    assert data["model_name"] == served_model.name
    assert data["tool_parser"] == "hermes"
    assert data["track_tree"] is False
    assert isinstance(data["created_at"], float)
    assert api.http.post("/sessions/create").status_code == 200  # the body is optional


def test_create_session_custom_parser(api):
    for parser in ("hermes", "llama3_json"):
        r = api.http.post("/sessions/create", json={"tool_parser": parser})
        assert r.status_code == 200 and r.json()["tool_parser"] == parser


def test_create_session_unknown_parser_is_400(api):
    r = api.http.post("/sessions/create", json={"tool_parser": "no-such-parser"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "tool_parser" and "no-such-parser" in err["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert api.http.post("/sessions/create", json={"track_tree": "yes"}).status_code == 400
    assert api.http.get("/sessions").json()["sessions"] == []


def test_list_sessions(api):
    uuids = {api.create() for _ in range(3)}
    sessions = api.http.get("/sessions").json()["sessions"]
    assert len(sessions) == 3
    assert {s["uuid"] for s in sessions} == uuids
    for s in sessions:
        assert s["num_nodes"] == 0 and s["last_accessed"] >= s["created_at"]
        assert s["tool_parser"] == "hermes"


def test_delete_session(api):
    uid = api.create()
    r = api.http.delete(f"/{uid}")
    assert r.status_code == 200 and r.json()["status"] == "deleted"
    assert api.http.get(f"/{uid}/nodes").status_code == 404
    assert api.http.post(f"/{uid}/v1/chat/completions", json={"messages": HI}).status_code == 404
    assert api.http.post(f"/{uid}/v1/chat/completions/render", json={"messages": HI}).status_code == 404
    assert api.http.delete(f"/{uid}").status_code == 404
    assert api.http.get("/sessions").json()["sessions"] == []


def test_delete_nonexistent_session(api):
    assert api.http.delete("/nonexistent-uuid").status_code == 404


def test_session_not_found(api):
    r = api.http.post("/nonexistent-uuid/v1/chat/completions", json={"messages": HI})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "session_not_found"


# -- chat completions ---------------------------------------------------------------------
def test_basic_completion(api, served_model):
    uid = api.create()
    eos = served_model.eos_token_ids[0]
    data = api.chat(uid, [{"role": "user", "content": "Hello"}], seed=1, **eos_after(eos, 5))
    assert data["object"] == "chat.completion"
    assert data["model"] == served_model.name
    assert data["id"].startswith("chatcmpl-")
    assert len(data["choices"]) == 1
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    [node] = api.nodes(uid)
    ids, _ = generated_part(node)
    assert len(ids) == 6 and ids[-1] == eos  # 5 tokens, then the EOS the model chose
    assert choice["message"]["content"] == served_model.tokenizer.decode(ids, skip_special_tokens=True)
    assert data["usage"]["completion_tokens"] == 6
    assert data["usage"]["prompt_tokens"] == len(node["tokens"]) - 6


def test_completion_with_n(api):
    uid = api.create()
    messages = [{"role": "user", "content": "Pick a number"}]
    data = api.chat(uid, messages, n=3, max_tokens=6, seed=3)
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    nodes = api.nodes(uid)
    assert len(nodes) == 3  # one node per choice: three branches
    prompt = api.render(uid, messages)["token_ids"]
    assert prompt == api.render(api.create(), messages)["token_ids"]  # (no node extended)
    contents = []
    for node, choice in zip(nodes, data["choices"], strict=False):
        assert node["tokens"][:len(prompt)] == prompt
        assert node["full_text"].endswith(choice["message"]["content"])
        contents.append(tuple(node["tokens"][len(prompt):]))
        assert_well_formed(node)
    assert len(set(contents)) == 3  # seeds differ per choice


def test_empty_messages_error(api):
    uid = api.create()
    r = api.http.post(f"/{uid}/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"
    r = api.http.post(f"/{uid}/v1/chat/completions/render", json={"messages": []})
    assert r.status_code == 400
    assert api.nodes(uid) == []


def test_completion_with_system_prompt(api):
    uid = api.create()
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"}]
    rendered = api.render(uid, messages)
    assert rendered["prompt_text"].startswith("<|im_start|>system\nYou are helpful.<|im_end|>")
    data = api.chat(uid, messages, max_tokens=5, seed=4)
    [node] = api.nodes(uid)
    assert node["tokens"][:rendered["num_tokens"]] == rendered["token_ids"]
    assert node["full_text"] == rendered["prompt_text"] + data["choices"][0]["message"]["content"]


# -- render -------------------------------------------------------------------------------
def test_render_basic(api, served_model):
    uid = api.create()
    data = api.render(uid, [{"role": "user", "content": "Hello"}])
    assert data["num_tokens"] == len(data["token_ids"])
    assert "Hello" in data["prompt_text"]
    assert data["prompt_text"].endswith("<|im_start|>assistant\n")
    assert data["extends_node"] is None
    # a fresh session's prompt is the same as the server's own chat rendering
    tok = api.http.post("/tokenize", json={"messages": [{"role": "user", "content": "Hello"}]}).json()
    assert data["token_ids"] == tok["tokens"]
    assert data["token_ids"] == served_model.tokenizer.encode(data["prompt_text"], add_special_tokens=False)


def test_render_with_tools(api):
    uid = api.create()
    tools = [{"type": "function", "function": {"name": "search"}}]
    data = api.render(uid, HI, tools=tools)
    assert '<tools>\n{"type": "function", "function": {"name": "search"}}\n</tools>' in data["prompt_text"]
    assert data["num_tokens"] > api.render(uid, HI)["num_tokens"]
    bad = api.http.post(f"/{uid}/v1/chat/completions/render", json={"messages": HI, "tools": [{"type": "x"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tools"


def test_render_does_not_create_nodes(api, server):
    uid = api.create()
    steps = server.state.serving().driver.stats.steps
    api.render(uid, HI)
    assert api.nodes(uid) == []
    assert server.state.serving().driver.stats.steps == steps  # nothing was generated


def test_render_shows_the_extension(api):
    uid = api.create()
    data = api.chat(uid, HI, max_tokens=4, seed=5)
    [node] = api.nodes(uid)
    follow = HI + [data["choices"][0]["message"], {"role": "user", "content": "More"}]
    rendered = api.render(uid, follow)
    assert rendered["extends_node"] == node["id"]
    assert rendered["token_ids"][:len(node["tokens"])] == node["tokens"]
    assert len(api.nodes(uid)) == 1 and api.nodes(uid)[0] == node


# -- nodes --------------------------------------------------------------------------------
def test_get_nodes_empty(api):
    assert api.nodes(api.create()) == []


def test_get_nodes_after_completion(api):
    uid = api.create()
    api.chat(uid, HI, max_tokens=5, seed=6)
    [node] = api.nodes(uid)
    assert {"tokens", "masked_tokens", "logprobs", "full_text", "metadata"} <= set(node)
    assert len(node["tokens"]) == len(node["masked_tokens"]) == len(node["logprobs"])
    meta = node["metadata"]
    assert meta["finish_reason"] == "length"
    assert meta["num_generated_tokens"] == 5
    assert meta["num_prefilled_tokens"] == meta["num_prompt_tokens"] - meta["num_cached_prompt_tokens"]
    assert [s["num_generated_tokens"] for s in meta["steps"]] == [5]
    assert api.http.get("/sessions").json()["sessions"][0]["num_nodes"] == 1


def test_nodes_have_proper_masking_and_the_engines_exact_tokens(api):
    uid = api.create()
    prompt = api.render(uid, HI)["token_ids"]
    data = api.chat(uid, HI, max_tokens=8, seed=7, logprobs=True, return_tokens_as_token_ids=True)
    [node] = api.nodes(uid)
    n = len(prompt)
    assert node["tokens"][:n] == prompt
    assert all(t == MASK for t in node["masked_tokens"][:n])
    assert all(lp == 1.0 for lp in node["logprobs"][:n])
    assert all(lp < 0 for lp in node["logprobs"][n:])
    assert node["masked_tokens"][n:] == node["tokens"][n:]
    # exactly the ids and log-probabilities the engine reported for this completion
    sampled = data["choices"][0]["logprobs"]["content"]
    assert [int(t["token"].removeprefix("token_id:")) for t in sampled] == node["tokens"][n:]
    assert [t["logprob"] for t in sampled] == node["logprobs"][n:]


def test_nodes_record_without_logprobs_requested(api):
    uid = api.create()
    data = api.chat(uid, HI, max_tokens=3, seed=8)
    assert data["choices"][0]["logprobs"] is None
    [node] = api.nodes(uid)
    assert_well_formed(node)


# -- cleanup / errors ---------------------------------------------------------------------
def test_delete_resets_nodes(api):
    uid = api.create()
    api.chat(uid, HI, max_tokens=3, seed=9)
    assert len(api.nodes(uid)) == 1
    assert api.http.delete(f"/{uid}").status_code == 200
    assert api.http.get(f"/{uid}/nodes").status_code == 404
    fresh = api.create()
    assert api.nodes(fresh) == []


def test_404_is_openai_format(api):
    r = api.http.get("/nonexistent-uuid/nodes")
    assert r.status_code == 404
    err = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    assert err["type"] == "not_found_error" and err["code"] == "session_not_found"
    assert "nonexistent-uuid" in err["message"]
