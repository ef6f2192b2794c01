"""Log-probabilities of the prompt's own tokens told by the API: vLLM's `prompt_logprobs`
shape and `echo` + `logprobs` on /v1/completions (the official `openai` client and httpx,
real server, tiny qwen2 model). The engine side: tests/unit/engine/test_prompt_logprobs.py.

Clause ids (OAI-PLOGPROBS-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

import json

import pytest
import torch

from support.forced_decode import forced_logits
from triolm.engine.llm_engine import EngineConfig, LLMEngine

PROMPT = list(range(40, 77))  # 37 tokens: two full 16-token blocks and a tail


def reference_logprobs(served_model, prompt: list[int]) -> torch.Tensor:
    """log_softmax rows predicting prompt[1:], teacher-forced through the decode path (a
    computation independent of the prefill that serves prompt_logprobs)."""
    engine = LLMEngine(served_model.model, (), EngineConfig(max_num_seqs=2, max_model_len=256))
    logits = forced_logits(engine, [prompt[:1]], [prompt[1:-1]])[0]
    return torch.log_softmax(logits, dim=-1)


def test_OAI_PLOGPROBS_003_completions_echo_logprobs(client, served_model):
    r = client.completions.create(model=served_model.name, prompt=PROMPT, max_tokens=3, logprobs=2,
                                  echo=True, temperature=0, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(PROMPT) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ref = reference_logprobs(served_model, PROMPT)
    want = ref[torch.arange(len(PROMPT) - 1), torch.tensor(PROMPT[1:])].tolist()
    assert lp.token_logprobs[1:len(PROMPT)] == pytest.approx(want, abs=1e-4)
    for i, top in enumerate(lp.top_logprobs[1:len(PROMPT)]):
        # the top 2 and the prompt's token itself
        assert lp.tokens[i + 1] in top and 2 <= len(top) <= 3
        assert max(top.values()) == pytest.approx(float(ref[i].max()), abs=1e-4)
    # the generated tokens follow, as without echo
    plain = client.completions.create(model=served_model.name, prompt=PROMPT, max_tokens=3, logprobs=2,
                                      temperature=0, extra_body={"ignore_eos": True})
    assert lp.tokens[len(PROMPT):] == plain.choices[0].logprobs.tokens
    # (the plain request prefilled from the cache: the same numbers up to summation order)
    assert lp.token_logprobs[len(PROMPT):] == pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=1e-4)


def test_OAI_PLOGPROBS_004_vllm_prompt_logprobs_shape(client, http, served_model):
    r = client.completions.create(model=served_model.name, prompt=PROMPT, max_tokens=1,
                                  extra_body={"prompt_logprobs": 1})
    got = r.choices[0].prompt_logprobs
    assert len(got) == len(PROMPT) and got[0] is None
    ref = reference_logprobs(served_model, PROMPT)
    for i, (token_id, entry) in enumerate(zip(PROMPT[1:], got[1:], strict=True)):
        own = entry[str(token_id)]
        assert own["logprob"] == pytest.approx(float(ref[i, token_id]), abs=1e-4)
        assert own["rank"] >= 1 and isinstance(own["decoded_token"], str)
        best = int(ref[i].argmax())
        assert entry[str(best)]["rank"] == 1
    # chat: top level, for the rendered prompt
    msgs = [{"role": "user", "content": "hello there"}]
    chat = http.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 1, "n": 2,
                                                   "prompt_logprobs": 0}).json()
    prompt_ids = http.post("/tokenize", json={"messages": msgs}).json()["tokens"]
    assert chat["prompt_logprobs"][0] is None
    assert [list(e)[0] for e in chat["prompt_logprobs"][1:]] == [str(t) for t in prompt_ids[1:]]


def test_OAI_PLOGPROBS_005_streamed_echo_carries_the_prompt_logprobs(client, http, served_model):
    body = {"prompt": ["Once upon a time", "A cat"], "max_tokens": 3, "logprobs": 1, "echo": True,
            "temperature": 0, "ignore_eos": True}
    full = http.post("/v1/completions", json=body).json()
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    for choice in full["choices"]:
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == choice["index"]]
        joined = {k: sum((c["logprobs"][k] for c in mine if c["logprobs"]), []) for k in
                  ("tokens", "token_logprobs", "top_logprobs")}
        want = choice["logprobs"]
        assert joined["tokens"] == want["tokens"]
        # equal up to summation order (the batches the two requests shared differ)
        assert joined["token_logprobs"] == pytest.approx(want["token_logprobs"], abs=1e-4)
        for got_top, want_top in zip(joined["top_logprobs"], want["top_logprobs"], strict=True):
            assert (got_top is None) == (want_top is None)
            if got_top is not None:
                assert got_top == pytest.approx(want_top, abs=1e-4)
        assert "".join(c["text"] for c in mine) == choice["text"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "hi", "prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
    ({"prompt": "hi", "prompt_logprobs": -1}, "prompt_logprobs"),
    ({"prompt": "hi", "prompt_logprobs": 21}, "prompt_logprobs"),
])
def test_OAI_PLOGPROBS_006_refused_forms(http, body, param):
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_OAI_PLOGPROBS_007_echo_with_max_tokens_0_is_the_prompt_alone(client, http, served_model):
    prompt = http.post("/tokenize", json={"prompt": "Once upon a time there was a cat"}).json()["tokens"]
    r = client.completions.create(model=served_model.name, prompt=prompt, max_tokens=0, echo=True, logprobs=1,
                                  extra_body={"return_token_ids": True})
    (choice,) = r.choices
    prompt_text = "Once upon a time there was a cat"  # the echo skips special tokens (BOS)
    assert choice.text == prompt_text and choice.finish_reason == "length"
    assert len(choice.logprobs.tokens) == len(prompt) and choice.logprobs.token_logprobs[0] is None
    assert choice.token_ids == [] and r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(prompt)
    with_one = client.completions.create(model=served_model.name, prompt=prompt, max_tokens=1, echo=True,
                                         logprobs=1, temperature=0)
    assert choice.logprobs.token_logprobs == pytest.approx(with_one.choices[0].logprobs.token_logprobs[:-1],
                                                           abs=1e-4)
    streamed = [c.choices[0] for c in client.completions.create(model=served_model.name, prompt=prompt,
                                                                max_tokens=0, echo=True, stream=True)]
    assert "".join(c.text for c in streamed) == prompt_text and streamed[-1].finish_reason == "length"
    # without echo, max_tokens must still be at least 1
    bad = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
