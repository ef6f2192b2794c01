"""The router's choices without processes: pinning, prefix affinity against load,
saturation, health bookkeeping, fleet membership, load parsing and reading vLLM's
completion shapes. (Contract: contracts/router.md, RTR.3/4/7/8/9.)"""

from __future__ import annotations

import pytest

from triolm.router.affinity import BLOCK, block_keys
from triolm.router.backend_load import running_plus_waiting
from triolm.router.backends import BackendPool, NoBackend
from triolm.router.completion_shapes import MalformedCompletion, cached_prompt_tokens, read_choice

A, B, C = "http://a:1", "http://b:1", "http://c:1"
PROMPT = list(range(100, 164))  # four blocks


def pool(**kw) -> BackendPool:
    p = BackendPool([A, B, C], max_inflight=kw.get("max_inflight", 4), failures_to_eject=2,
                    affinity_min_tokens=32, affinity_slack=kw.get("slack", 2), affinity_entries=1000)
    for b in p.backends.values():
        p.check_passed(b, "m", 0)
    return p


def test_rtr3_least_loaded_then_affinity_within_the_slack():
    p = pool()
    p.backends[A].in_flight = 1
    first = p.choose(PROMPT)
    assert first.reason == "least_loaded" and first.backend.url == B  # A busier; B before C (ties: served)
    with p.lease(first):
        pass  # it succeeded: B caches the prompt's blocks
    p.backends[B].in_flight = 2  # within the slack (2) of the least loaded C (0)
    again = p.choose(PROMPT + [7, 8])
    assert (again.backend.url, again.reason) == (B, "affinity")
    p.backends[B].in_flight = 3  # beyond the slack: load wins
    assert p.choose(PROMPT).reason == "least_loaded"
    assert p.stats.affinity_candidates == 2 and p.stats.affinity_hits == 1


def test_rtr3_a_short_shared_prefix_is_not_affinity_and_a_failed_request_is_not_remembered():
    p = pool()
    choice = p.choose(PROMPT)
    with pytest.raises(RuntimeError), p.lease(choice):
        raise RuntimeError("backend failed")
    assert p.choose(PROMPT).reason == "least_loaded"  # nothing was remembered
    with p.lease(p.choose(PROMPT)):
        pass
    assert p.choose(PROMPT[:BLOCK]).reason == "least_loaded"  # 16 < 32 shared tokens


def test_rtr3_pinned_wins_while_admitted():
    p = pool()
    p.backends[C].in_flight = 3
    assert p.choose(PROMPT, pinned=p.backends[C]).reason == "pinned"
    p.backends[C].draining = True
    assert p.choose(PROMPT, pinned=p.backends[C]).backend.url != C


def test_rtr3_load_counts_other_clients_and_this_routers_live_requests():
    p = pool()
    b = p.backends[A]
    b.in_flight = 2
    p.check_passed(b, "m", 5)  # the backend reports 5: 2 of them ours
    assert b.load == 5
    b.in_flight = 0  # ours finished since
    assert b.load == 3


def test_rtr7_saturated_is_429_and_none_admitted_is_503():
    p = pool(max_inflight=1)
    for b in p.backends.values():
        b.in_flight = 1
    with pytest.raises(NoBackend) as exc:
        p.choose(PROMPT)
    assert exc.value.saturated
    for b in p.backends.values():
        b.healthy = False
    with pytest.raises(NoBackend) as exc:
        p.choose(PROMPT)
    assert not exc.value.saturated


def test_rtr4_out_after_n_failures_or_at_once_when_refused_and_back_after_one_pass():
    p = pool()
    a, b = p.backends[A], p.backends[B]
    p.check_failed(a, "timeout")
    assert a.healthy
    p.check_failed(a, "timeout")
    assert not a.healthy
    p.check_failed(b, "refused", eject_now=True)
    assert not b.healthy
    p.check_passed(b, "m", 0)
    assert b.healthy and b.failures == 0


def test_rtr8_the_fleet_becomes_the_listed_urls():
    p = pool()
    with p.lease(p.choose(PROMPT)) as used:
        pass
    added, removed = p.set_urls([used.url + "/v1/", "http://d:1"])
    assert added == ["http://d:1"] and set(removed) == {A, B, C} - {used.url}
    assert list(p.backends) == [used.url, "http://d:1"]
    p.set_urls(["http://d:1"])
    assert len(p.affinity) == 0  # a removed backend's prefixes are forgotten


def test_block_keys_chain_the_whole_prefix():
    keys = block_keys(PROMPT)
    assert len(keys) == 4
    changed = block_keys([0] + PROMPT[1:])
    assert all(k != c for k, c in zip(keys, changed, strict=True))  # an early change changes every key
    assert block_keys(PROMPT[:40])[:2] == keys[:2]


def test_rtr4_load_gauges_of_triolm_vllm_and_sglang():
    text = ("# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
            'vllm:num_requests_running{engine="1",model_name="m"} 1.0\n'
            "# TYPE vllm:num_requests_waiting gauge\n"
            'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0\n')
    assert running_plus_waiting(text) == 6
    assert running_plus_waiting("# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 4\n"
                                "# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs 1\n") == 5
    assert running_plus_waiting("# TYPE triolm:num_requests_waiting gauge\ntriolm:num_requests_waiting 7\n") == 7
    assert running_plus_waiting("# TYPE other gauge\nother 1\n") is None


def test_rtr9_vllm_choice_ids_from_token_ids_or_logprob_names():
    logprobs = {"tokens": ["token_id:5", "token_id:9"], "token_logprobs": [-0.5, -1.5],
                "top_logprobs": [{"token_id:5": -0.5}, {"token_id:9": -1.5, "token_id:2": -2.0}],
                "text_offset": [0, 1]}
    by_names = read_choice({"index": 0, "text": "ab", "logprobs": logprobs, "finish_reason": "stop",
                            "stop_reason": 9})
    assert [t.token_id for t in by_names.tokens] == [5, 9]
    assert [t.logprob for t in by_names.tokens] == [-0.5, -1.5]
    assert by_names.tokens[1].top_logprobs == ((9, -1.5), (2, -2.0))
    assert by_names.stop_reason == 9
    by_ids = read_choice({"index": 0, "text": "ab", "logprobs": logprobs, "token_ids": [5, 9]})
    assert [t.token_id for t in by_ids.tokens] == [5, 9]
    with pytest.raises(MalformedCompletion):  # ids without a logprob each cannot make a node
        read_choice({"index": 0, "text": "ab", "logprobs": None, "token_ids": [5, 9]})
    with pytest.raises(MalformedCompletion):
        read_choice({"index": 0, "text": "a", "logprobs": {**logprobs, "tokens": ["a", "b"]}})
    assert cached_prompt_tokens({"prompt_tokens_details": {"cached_tokens": 32}}) == 32
    assert cached_prompt_tokens({"prompt_tokens_details": None}) is None
