"""Multi-turn sessions against a real server and the tiny real model: extension into one
node, token-exactness across turns, what is kept where the template re-renders a turn
differently, prefill cost, branches, tree, streaming, limits, expiry, cache freeing.
(Contract clauses: contracts/sessions.md.)"""

from __future__ import annotations

import itertools
import json
import time

import attrs
import httpx

from support.server_thread import ServerThread
from support.sessions_api import MASK, SessionsAPI, assert_well_formed, eos_after, generated_part
from triolm.prompting.template import ChatTemplate

BLOCK = 16


def _user(i: int, tag: str) -> dict:
    return {"role": "user", "content": f"{tag}: turn {i + 1} question"}


def test_plain_multi_turn_is_one_token_exact_node_and_prefills_only_new_tokens(api, served_model):
    uid = api.create()
    conversation = [{"role": "system", "content": "You answer in five-turn chats (plain test)."}]
    previous = None
    for i in range(5):
        conversation.append(_user(i, "plain"))
        rendered = api.render(uid, conversation)
        data = api.chat(uid, conversation, max_tokens=6, seed=100 + i)
        [node] = api.nodes(uid)
        assert_well_formed(node)
        prompt = rendered["token_ids"]
        assert node["tokens"][:len(prompt)] == prompt  # what the engine consumed
        step = node["metadata"]["steps"][-1]
        assert step["num_prompt_tokens"] == len(prompt)
        if previous is not None:
            # extension: the previous node's tokens, untouched, then the new text's tokens
            assert rendered["extends_node"] == previous["id"] == node["parent_id"]
            assert prompt[:len(previous["tokens"])] == previous["tokens"]
            assert node["masked_tokens"][:len(previous["tokens"])] == previous["masked_tokens"]
            assert node["logprobs"][:len(previous["tokens"])] == previous["logprobs"]
            new_ids = prompt[len(previous["tokens"]):]
            suffix = rendered["prompt_text"][len(previous["full_text"]):]
            assert new_ids == served_model.tokenizer.encode(suffix, add_special_tokens=False)
            assert step["num_new_prompt_tokens"] == len(new_ids)
            # cost: only what step k-1 did not compute (the new text + its last sampled
            # token, whose KV no step computed) is prefilled, up to one 16-token block
            uncomputed = len(prompt) - (len(previous["tokens"]) - 1)
            assert uncomputed <= step["num_prefilled_tokens"] < uncomputed + BLOCK
            assert step["num_cached_prompt_tokens"] == len(prompt) - step["num_prefilled_tokens"]
        previous = node
        conversation.append({"role": "assistant", "content": data["choices"][0]["message"]["content"]})
    assert len(conversation) == 11  # system + 5 user + 5 assistant
    assert len(api.nodes(uid)) == 1
    final = api.nodes(uid)[0]
    assert final["metadata"]["num_steps"] == 5
    assert sum(1 for m in final["masked_tokens"] if m != MASK) == 5 * 6  # 5 turns of 6 tokens


def test_generated_tokens_that_re_encode_differently_are_kept(api, served_model):
    """About one random turn in four re-encodes to other ids than the model sampled; find
    one (deterministic seeds) and check the next turn keeps the sampled ids."""
    tok = served_model.tokenizer
    messages = [{"role": "user", "content": "drift test"}]
    for seed in range(200, 240):
        uid = api.create()
        data = api.chat(uid, messages, max_tokens=8, seed=seed)
        [node] = api.nodes(uid)
        follow = messages + [data["choices"][0]["message"], {"role": "user", "content": "and?"}]
        rendered = api.render(uid, follow)
        retokenized = tok.encode(rendered["prompt_text"], add_special_tokens=False)
        if retokenized[:len(node["tokens"])] != node["tokens"]:
            break
    else:
        raise AssertionError("no turn re-encoded differently in 40 tries")
    assert rendered["token_ids"][:len(node["tokens"])] == node["tokens"]  # kept, not re-encoded
    assert rendered["token_ids"] != retokenized
    api.chat(uid, follow, max_tokens=3, seed=1)
    [extended] = api.nodes(uid)
    assert extended["tokens"][:len(node["tokens"])] == node["tokens"]


def test_turn_ending_in_eos_keeps_the_eos_and_the_templates_own_terminator(api, served_model):
    """Tiny model: EOS is `</s>`, the ChatML template closes turns with `<|im_end|>` text."""
    tok = served_model.tokenizer
    eos = served_model.eos_token_ids[0]
    uid = api.create()
    messages = [{"role": "user", "content": "Say three words (eos test)."}]
    data = api.chat(uid, messages, seed=11, **eos_after(eos, 3))
    assert data["choices"][0]["finish_reason"] == "stop"
    [node] = api.nodes(uid)
    assert node["tokens"][-1] == eos and node["masked_tokens"][-1] == eos and node["logprobs"][-1] < 0
    assert "</s>" not in node["full_text"]  # the text is what the client got
    follow = messages + [data["choices"][0]["message"], {"role": "user", "content": "Again"}]
    rendered = api.render(uid, follow)
    n = len(node["tokens"])
    assert rendered["extends_node"] == node["id"]
    assert rendered["token_ids"][:n] == node["tokens"]  # the generated EOS stays
    assert tok.decode(rendered["token_ids"][n:], skip_special_tokens=False).startswith(
        "<|im_end|>\n<|im_start|>user\nAgain")
    api.chat(uid, follow, max_tokens=3, seed=12)
    [extended] = api.nodes(uid)
    assert extended["masked_tokens"][n - 1] == eos  # still a trained (unmasked) token
    assert extended["masked_tokens"][n] == MASK
    assert extended["metadata"]["steps"][1]["stop_token_stands_in"] is False


def test_eos_rendered_by_the_template_is_not_duplicated(served_model, base_settings):
    """A template that closes turns with the EOS itself (as Qwen's `<|im_end|>` is its
    EOS): the generated EOS stands for that text; it is neither dropped nor repeated."""
    eos = served_model.eos_token_ids[0]
    eos_text = served_model.tokenizer.decode([eos], skip_special_tokens=False)
    source = served_model.chat_template.source.replace("<|im_end|>", eos_text)
    served = attrs.evolve(served_model, chat_template=ChatTemplate(
        source, served_model.chat_template.bos_token, served_model.chat_template.eos_token))
    with ServerThread(base_settings, served) as srv:
        api = SessionsAPI(srv.base_url)
        uid = api.create()
        messages = [{"role": "user", "content": "Hi"}]
        data = api.chat(uid, messages, seed=13, **eos_after(eos, 4))
        [node] = api.nodes(uid)
        assert node["tokens"][-1] == eos
        follow = messages + [data["choices"][0]["message"], {"role": "user", "content": "More"}]
        rendered = api.render(uid, follow)
        n = len(node["tokens"])
        ids = rendered["token_ids"]
        assert rendered["extends_node"] == node["id"] and ids[:n] == node["tokens"]
        tail = served.tokenizer.decode(ids[n:], skip_special_tokens=False)
        assert tail.startswith("\n<|im_start|>user\nMore")  # no second EOS after the first
        assert ids.count(eos) == rendered["prompt_text"].count(eos_text) == 3
        api.chat(uid, follow, max_tokens=2, seed=14)
        [extended] = api.nodes(uid)
        assert extended["metadata"]["steps"][1]["stop_token_stands_in"] is True
        assert extended["masked_tokens"][n - 1] == eos
        api.close()


def test_tokens_generated_past_a_stop_string_are_kept(api, served_model):
    tok = served_model.tokenizer
    probe = api.create()
    messages = [{"role": "user", "content": "stop-string test"}]
    body = dict(max_tokens=8, seed=15)
    api.chat(probe, messages, **body)
    ids, _ = generated_part(api.nodes(probe)[0])
    # a stop string made of the text of one token k, first seen in the text at that token
    k = next(k for k in range(2, 7) if tok.decode(ids[k:k + 1]).strip() and tok.decode(ids[:k + 1]).find(
        tok.decode(ids[k:k + 1])) == len(tok.decode(ids[:k])))
    stop = tok.decode(ids[k:k + 1])
    uid = api.create()
    data = api.chat(uid, messages, stop=[stop], **body)
    assert data["choices"][0]["finish_reason"] == "stop"
    content = data["choices"][0]["message"]["content"]
    assert stop not in content
    [node] = api.nodes(uid)
    kept, _ = generated_part(node)
    assert kept == ids[:len(kept)] and len(kept) >= k + 1  # the token spelling the stop string stays
    assert node["full_text"].endswith(content)
    assert node["metadata"]["stop_reason"] == stop


def test_n_branches_then_one_branch_is_extended(api):
    uid = api.create()
    messages = [{"role": "user", "content": "Branch out"}]
    data = api.chat(uid, messages, n=3, max_tokens=4, seed=16)
    before = api.nodes(uid)
    chosen = data["choices"][1]["message"]
    follow = messages + [chosen, {"role": "user", "content": "Go on"}]
    data2 = api.chat(uid, follow, max_tokens=4, seed=17)
    after = api.nodes(uid)
    assert len(after) == 3
    assert after[0] == before[0] and after[2] == before[2]  # the other branches are untouched
    assert after[1]["parent_id"] == before[1]["id"]
    assert after[1]["tokens"][:len(before[1]["tokens"])] == before[1]["tokens"]
    # n > 1 on an extension: the node is replaced by n branches
    follow2 = follow + [data2["choices"][0]["message"], {"role": "user", "content": "Two ways"}]
    api.chat(uid, follow2, n=2, max_tokens=3, seed=18)
    final = api.nodes(uid)
    assert len(final) == 4
    assert final[1]["parent_id"] == final[2]["parent_id"] == after[1]["id"]


def test_a_rewritten_history_starts_a_new_node(api):
    uid = api.create()
    messages = [{"role": "user", "content": "Original"}]
    content = api.chat(uid, messages, max_tokens=4, seed=19)["choices"][0]["message"]["content"]
    [node] = api.nodes(uid)
    # text appended after the generated text still starts with the node's text: it extends
    # the node, the added words being prompt (masked) tokens
    appended = messages + [{"role": "assistant", "content": content + " (and more)"},
                           {"role": "user", "content": "Next"}]
    assert api.render(uid, appended)["extends_node"] == node["id"]
    # an edited turn does not: a new node beside the old one
    edited = messages + [{"role": "assistant", "content": "(edited) " + content},
                         {"role": "user", "content": "Next"}]
    rendered = api.render(uid, edited)
    assert rendered["extends_node"] is None
    api.chat(uid, edited, max_tokens=4, seed=20)
    nodes = api.nodes(uid)
    assert len(nodes) == 2 and nodes[0] == node and nodes[1]["parent_id"] is None
    assert nodes[1]["tokens"][:rendered["num_tokens"]] == rendered["token_ids"]


def test_track_tree_keeps_every_node_with_parent_links(api):
    uid = api.create(track_tree=True)
    plain = api.create()
    messages = [{"role": "user", "content": "Tree"}]
    for i in range(3):
        data = api.chat(uid, messages, max_tokens=3, seed=30 + i)
        api.chat(plain, messages, max_tokens=3, seed=30 + i)
        messages = messages + [data["choices"][0]["message"], {"role": "user", "content": f"Step {i}"}]
    tree = api.http.get(f"/{uid}/nodes").json()
    assert len(tree["nodes"]) == 1
    assert [n["parent_id"] for n in tree["tree"]] == [None, 0, 1]
    assert tree["tree"][-1] == tree["nodes"][0]
    for parent, child in itertools.pairwise(tree["tree"]):
        assert child["tokens"][:len(parent["tokens"])] == parent["tokens"]
    assert "tree" not in api.http.get(f"/{plain}/nodes").json()


def test_streamed_completion_is_recorded_too(api, served_model):
    uid = api.create()
    messages = [{"role": "user", "content": "Stream please"}]
    body = {"messages": messages, "max_tokens": 6, "seed": 21, "stream": True}
    text = ""
    with api.http.stream("POST", f"/{uid}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
    [node] = api.nodes(uid)
    assert_well_formed(node)
    ids, _ = generated_part(node)
    assert len(ids) == 6
    assert node["full_text"] == api.render(uid, messages)["prompt_text"] + text


def test_a_stream_cut_short_records_nothing(api, server):
    uid = api.create()
    body = {"messages": [{"role": "user", "content": "Long stream"}], "max_tokens": 1500,
            "seed": 24, "stream": True, "ignore_eos": True}
    with api.http.stream("POST", f"/{uid}/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # the first generated text: hang up
    deadline = time.monotonic() + 10
    while server.state.serving().driver.num_running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.state.serving().driver.num_running == 0  # the generation was aborted, not finished
    assert api.nodes(uid) == []


def test_deleting_a_session_forgets_its_cached_prefixes_but_not_shared_ones(api):
    system = {"role": "system", "content": "A shared system prompt, long enough to fill a few "
                                           "cache blocks of sixteen tokens each, for the cache test."}
    mine = [system, {"role": "user", "content": "A private question that fills another block or two "
                                                "of the prefix cache before the generation prompt."}]
    theirs = [system, {"role": "user", "content": "Somebody else's question, also long enough to "
                                                  "fill another block or two of the cache."}]
    a, b = (api.render(api.create(), m)["token_ids"] for m in (mine, theirs))
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y) // BLOCK * BLOCK
    assert shared >= BLOCK and len(a) - shared > 2 * BLOCK and len(b) - shared > 2 * BLOCK
    gone, kept = api.create(), api.create()
    api.chat(gone, mine, max_tokens=2, seed=22)
    api.chat(kept, theirs, max_tokens=2, seed=23)

    def cached(messages) -> int:
        r = api.http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
        return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    assert api.http.delete(f"/{gone}").status_code == 200
    assert cached(mine) == shared  # its own blocks are gone, the shared system prompt is not
    assert cached(theirs) == (len(b) - 1) // BLOCK * BLOCK  # a live session's prefix stays


def test_max_sessions(make_server):
    srv = make_server(max_sessions=2)
    http = httpx.Client(base_url=srv.base_url, timeout=30)
    first = http.post("/sessions/create", json={}).json()["uuid"]
    assert http.post("/sessions/create", json={}).status_code == 200
    r = http.post("/sessions/create", json={})
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "too_many_sessions" and "2" in err["message"]
    assert err["type"] == "rate_limit_error"
    assert http.delete(f"/{first}").status_code == 200
    assert http.post("/sessions/create", json={}).status_code == 200
    assert http.get("/health").json()["sessions"] == 2


def test_idle_sessions_expire(make_server):
    srv = make_server(session_idle_timeout=2.0)
    http = httpx.Client(base_url=srv.base_url, timeout=30)
    idle = http.post("/sessions/create", json={}).json()["uuid"]
    used = http.post("/sessions/create", json={}).json()["uuid"]
    time.sleep(1.2)
    assert http.get(f"/{used}/nodes").status_code == 200  # restarts its idle clock
    time.sleep(1.2)  # idle: 2.4 s > 2 s; used: 1.2 s
    r = http.get(f"/{idle}/nodes")
    assert r.status_code == 404 and "expired" in r.json()["error"]["message"]
    assert http.get(f"/{used}/nodes").status_code == 200
    assert [s["uuid"] for s in http.get("/sessions").json()["sessions"]] == [used]


def test_session_routes_need_the_api_key(make_server):
    srv = make_server(api_key="sekret")
    http = httpx.Client(base_url=srv.base_url, timeout=30)
    assert http.post("/sessions/create", json={}).status_code == 401
    assert http.get("/sessions").status_code == 401
    auth = {"Authorization": "Bearer sekret"}
    uid = http.post("/sessions/create", json={}, headers=auth).json()["uuid"]
    r = http.post(f"/{uid}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert http.get(f"/{uid}/nodes", headers=auth).status_code == 200
