"""The vLLM path of `triolm router`: a real router process in front of a STAND-IN that
speaks vLLM's documented /v1/completions, /metrics, /health and /v1/models shapes
(tests/support/vllm_standin.py; vLLM itself cannot run here). Nodes must hold exactly the
ids and logprobs the stand-in returned, through whole and streamed turns.
(Contract clause RTR.9 in contracts/router.md.)"""

from __future__ import annotations

import json

import httpx
import pytest

from support.router_fleet import start_router, wait_admitted
from support.sessions_api import MASK, SessionsAPI, assert_well_formed
from support.vllm_standin import VLLMStandIn


@pytest.fixture(scope="module")
def standin_fleet(tiny_model, tmp_path_factory):
    model_dir = str(tiny_model("qwen2").hf_dir)
    with VLLMStandIn(model_dir) as standin:
        router = start_router(model_dir, [standin.base_url], tmp_path_factory.mktemp("standin") / "router.log",
                              "--health-interval", "0.5")
        try:
            wait_admitted(router, 1)
            yield standin, router
        finally:
            router.stop()


def test_rtr9_vllm_backend_is_admitted_with_its_model_name_and_load(standin_fleet):
    standin, router = standin_fleet
    [backend] = httpx.get(router.base_url + "/admin/backends", timeout=30).json()["backends"]
    assert backend["model"] == "standin-model" and backend["healthy"]


def test_rtr9_session_nodes_hold_the_vllm_backends_ids_and_logprobs(standin_fleet):
    standin, router = standin_fleet
    api = SessionsAPI(router.base_url)
    uid = api.create()
    messages = [{"role": "user", "content": "Hello"}]
    for turn in range(3):
        body = {"max_tokens": 5, "seed": turn}
        if turn == 1:  # a streamed turn in the middle
            r = api.http.post(f"/{uid}/v1/chat/completions",
                              json={"messages": messages, "stream": True, "return_token_ids": True, **body})
            events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")]
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in events if c["choices"])
            streamed_ids = [t for c in events for ch in c["choices"] for t in ch.get("token_ids", [])]
            assert streamed_ids == standin.requests[-1].token_ids
        else:
            data = api.chat(uid, messages, return_token_ids=True, logprobs=True, **body)
            text = data["choices"][0]["message"]["content"]
            served = standin.requests[-1]
            assert data["prompt_token_ids"] == served.prompt_ids
            assert data["choices"][0]["token_ids"] == served.token_ids
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": f"more {turn}"}]
    [node] = api.nodes(uid)
    assert_well_formed(node)
    served = standin.requests[-1]
    assert node["tokens"] == served.prompt_ids + served.token_ids
    n_prompt = len(served.prompt_ids)
    assert node["logprobs"][n_prompt:] == pytest.approx(served.logprobs)
    assert node["masked_tokens"][n_prompt:] == served.token_ids
    # the earlier turns' generated tokens sit unmasked inside the prompt of the last one
    first = standin.requests[-3]
    start = len(first.prompt_ids)
    assert node["masked_tokens"][start:start + len(first.token_ids)] == first.token_ids
    assert node["masked_tokens"][:start] == [MASK] * start
    step = node["metadata"]
    assert step["num_steps"] == 3 and step["backend"] == standin.base_url
    assert step["num_cached_prompt_tokens"] == served.cached_tokens > 0
    assert step["num_prefilled_tokens"] == len(served.prompt_ids) - served.cached_tokens
    api.close()


def test_rtr9_a_stop_token_ends_the_text_and_stays_in_the_node(standin_fleet):
    standin, router = standin_fleet
    api = SessionsAPI(router.base_url)
    uid = api.create()
    stop_id = 1500
    for seed in range(40):  # the stand-in emits a stop id with probability 0.2 per token
        data = api.chat(uid, [{"role": "user", "content": f"stop {seed}"}], max_tokens=12, seed=seed,
                        stop_token_ids=[stop_id])
        if data["choices"][0]["finish_reason"] == "stop":
            break
    choice = data["choices"][0]
    assert choice["stop_reason"] == stop_id
    served = standin.requests[-1]
    assert served.token_ids[-1] == stop_id
    node = next(n for n in api.nodes(uid) if n["metadata"]["request_id"] == data["id"])
    assert node["tokens"][-1] == stop_id and node["masked_tokens"][-1] == stop_id
    assert node["full_text"].endswith(choice["message"]["content"])
    api.close()


def test_rtr9_plain_chat_and_completions_through_the_router(standin_fleet):
    standin, router = standin_fleet
    r = httpx.post(router.base_url + "/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "plain"}], "max_tokens": 4, "return_token_ids": True})
    assert r.status_code == 200 and r.json()["model"] == "hf"
    assert r.json()["choices"][0]["token_ids"] == standin.requests[-1].token_ids
    r = httpx.post(router.base_url + "/v1/completions", timeout=30, json={"prompt": "Once", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["model"] == "hf"
    assert standin.requests[-1].prompt_ids == httpx.post(router.base_url + "/tokenize", timeout=30,
                                                         json={"prompt": "Once"}).json()["tokens"]
