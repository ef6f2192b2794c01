"""Every sampling parameter of a request reaches the sampler, and stop strings behave as
OpenAI's do — observed end to end through the real server with the official client.

The model has random weights, so expectations are scripted: first generate greedily to
learn what the model says, then ask again with a parameter that must change (or must
not change) that. Clause ids (OAI-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

import json

import pytest

PROMPT = "Stop here"  # greedy: varied text, then a repeated token (penalties have work to do)
MSGS = [{"role": "user", "content": "Say something"}]


def complete(client, model, prompt=PROMPT, **kw):
    """(text, token ids, choice) of one completion; token ids from the logprob names."""
    extra = {"return_tokens_as_token_ids": True, "ignore_eos": True, **kw.pop("extra_body", {})}
    kw.setdefault("max_tokens", 16)
    r = client.completions.create(model=model, prompt=prompt, logprobs=0, extra_body=extra, **kw)
    choice = r.choices[0]
    ids = [int(t.split(":")[1]) for t in choice.logprobs.tokens]
    return choice.text, ids, choice


def chat(client, model, **kw):
    extra = {"ignore_eos": True, "return_tokens_as_token_ids": True, **kw.pop("extra_body", {})}
    kw.setdefault("max_tokens", 12)
    r = client.chat.completions.create(model=model, messages=MSGS, logprobs=True, extra_body=extra, **kw)
    choice = r.choices[0]
    return choice.message.content, [int(t.token.split(":")[1]) for t in choice.logprobs.content], choice


def detok(http, ids) -> str:
    return http.post("/detokenize", json={"tokens": ids}).json()["prompt"]


def stream_text(http, path: str, body: dict) -> tuple[str, str | None]:
    """Concatenated streamed text and the finish reason of choice 0."""
    text, finish = "", None
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for c in json.loads(line[6:])["choices"]:
                text += c.get("text") or (c.get("delta") or {}).get("content") or ""
                finish = c.get("finish_reason") or finish
    return text, finish


# -- stop strings ---------------------------------------------------------------------------
def _first_suffix_completed_by_last_token(prefix: str, before: str) -> str:
    """The shortest suffix of `prefix` that first occurs at its very end and is not
    already complete in `before` (the text one token earlier)."""
    for length in range(1, len(prefix) + 1):
        s = prefix[-length:]
        if prefix.find(s) == len(prefix) - length and len(prefix) - len(before) > 0 and s not in before:
            return s
    raise AssertionError("no usable stop string")


@pytest.mark.parametrize("k", [3, 6])
def test_OAI_STOP_002_stop_beats_length_when_both_hit(client, http, served_model, k):
    """The token that completes the stop string is also the last one max_tokens allows:
    finish_reason is "stop" and the stop text is cut."""
    _, ids, _ = complete(client, served_model.name, temperature=0, max_tokens=k)
    prefix, before = detok(http, ids[:k]), detok(http, ids[:k - 1])
    stop = _first_suffix_completed_by_last_token(prefix, before)
    expected = prefix[: len(prefix) - len(stop)]
    body = dict(prompt=PROMPT, temperature=0, max_tokens=k, stop=[stop])
    text, _, choice = complete(client, served_model.name, **body)
    assert (text, choice.finish_reason) == (expected, "stop")
    assert choice.model_extra.get("stop_reason") == stop
    assert stream_text(http, "/v1/completions", {**body, "ignore_eos": True}) == (expected, "stop")
    # one token fewer: the stop string never completes, so nothing is held back for good
    short, _, short_choice = complete(client, served_model.name, **{**body, "max_tokens": k - 1})
    assert (short, short_choice.finish_reason) == (before, "length")
    assert stream_text(http, "/v1/completions", {**body, "max_tokens": k - 1, "ignore_eos": True}) == (before, "length")


def test_OAI_STOP_001_cut_at_earliest_match_not_first_listed(client, http, served_model):
    full, _, _ = complete(client, served_model.name, temperature=0, max_tokens=16)
    # two substrings: `late` occurs (first) later in the text than `early`
    candidates = {full[i:i + 3]: full.find(full[i:i + 3]) for i in range(1, len(full) - 3)
                  if full[i:i + 3].strip()}
    by_position = sorted(candidates, key=candidates.get)
    early, late = by_position[0], by_position[-1]
    assert candidates[early] < candidates[late]
    body = dict(temperature=0, max_tokens=16, stop=[late, early])
    text, _, choice = complete(client, served_model.name, **body)
    assert text == full[: candidates[early]]
    assert early not in text and choice.finish_reason == "stop"
    assert stream_text(http, "/v1/completions", {"prompt": PROMPT, "ignore_eos": True, **body}) == (text, "stop")


def test_OAI_STOP_003_stop_string_in_chat_string_and_list(client, http, served_model):
    full, _, _ = chat(client, served_model.name, temperature=0)
    stop = full[4:7]
    expected = full[: full.find(stop)]
    for value in (stop, [stop, "\u2603never\u2603"]):
        text, _, choice = chat(client, served_model.name, temperature=0, stop=value)
        assert (text, choice.finish_reason) == (expected, "stop")
    streamed = stream_text(http, "/v1/chat/completions", {"messages": MSGS, "temperature": 0, "max_tokens": 12,
                                                         "ignore_eos": True, "stop": stop})
    assert streamed == (expected, "stop")


# -- sampling parameters ----------------------------------------------------------------------
def test_OAI_SAMPLE_001_temperature_zero_is_deterministic(client, served_model):
    a = complete(client, served_model.name, temperature=0)[1]
    b = complete(client, served_model.name, temperature=0)[1]
    unseeded = {tuple(complete(client, served_model.name, temperature=1.0)[1]) for _ in range(2)}
    assert a == b
    assert len(unseeded) == 2  # sampling without a seed differs run to run, greedy does not
    # below 1e-5 the temperature is greedy (dividing logits by it would overflow to NaN)
    assert complete(client, served_model.name, temperature=1e-30)[1] == a


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_OAI_SAMPLE_002_same_seed_same_text(client, served_model, endpoint):
    fn = complete if endpoint == "completions" else chat
    a = fn(client, served_model.name, temperature=1.0, seed=42)[1]
    b = fn(client, served_model.name, temperature=1.0, seed=42)[1]
    c = fn(client, served_model.name, temperature=1.0, seed=43)[1]
    assert a == b
    assert a != c


@pytest.mark.parametrize("param", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}])
def test_OAI_SAMPLE_003_truncation_to_one_token_equals_greedy(client, served_model, param):
    """top_k=1, a tiny top_p, min_p=1 each leave only the argmax: sampling at
    temperature 1.5 with them is greedy (and without them, with the same seed, is not)."""
    greedy = complete(client, served_model.name, temperature=0)[1]
    free = complete(client, served_model.name, temperature=1.5, seed=7)[1]
    truncated = complete(client, served_model.name, temperature=1.5, seed=7, extra_body=param)[1]
    assert free != greedy
    assert truncated == greedy


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_OAI_SAMPLE_004_logit_bias_forces_and_forbids(client, http, served_model, endpoint):
    fn = complete if endpoint == "completions" else chat
    forced = http.post("/tokenize", json={"prompt": " cat", "add_special_tokens": False}).json()["tokens"][0]
    _, ids, _ = fn(client, served_model.name, temperature=1.0, max_tokens=6, logit_bias={str(forced): 100})
    assert ids == [forced] * 6
    greedy = fn(client, served_model.name, temperature=0, max_tokens=4)[1]
    _, banned, _ = fn(client, served_model.name, temperature=0, max_tokens=4,
                      logit_bias={str(greedy[0]): -100})
    assert banned[0] != greedy[0] and greedy[0] not in banned


@pytest.mark.parametrize("param", [{"repetition_penalty": 2.0}, {"presence_penalty": 2.0},
                                   {"frequency_penalty": 2.0}])
def test_OAI_SAMPLE_005_penalties_change_greedy_output(client, served_model, param):
    greedy = complete(client, served_model.name, temperature=0)[1]
    assert len(set(greedy)) < len(greedy), "precondition: greedy output repeats a token"
    penalized = complete(client, served_model.name, temperature=0, extra_body=param)[1]
    assert penalized != greedy
    # penalties only push repeated tokens down: the output repeats less
    assert len(set(penalized)) > len(set(greedy))


def test_OAI_SAMPLE_006_stop_token_ids(client, served_model):
    greedy = complete(client, served_model.name, temperature=0)[1]
    stop_id = greedy[3]
    first = greedy.index(stop_id)
    _, ids, choice = complete(client, served_model.name, temperature=0,
                              extra_body={"stop_token_ids": [stop_id]})
    assert ids == greedy[: first + 1]
    assert choice.finish_reason == "stop"
    assert choice.model_extra.get("stop_reason") == stop_id


def test_OAI_SAMPLE_007_eos_ignore_eos_min_tokens_skip_special(client, served_model):
    (eos,) = served_model.eos_token_ids
    bias = {str(eos): 100}
    # eos forced: generation stops at once
    _, ids, choice = complete(client, served_model.name, temperature=0, logit_bias=bias,
                              extra_body={"ignore_eos": False})
    assert ids == [eos] and choice.finish_reason == "stop"
    # ignore_eos: eos does not end it
    text, ids, choice = complete(client, served_model.name, temperature=0, logit_bias=bias, max_tokens=4)
    assert ids == [eos] * 4 and choice.finish_reason == "length"
    assert text == ""  # special tokens are skipped by default
    eos_text = served_model.tokenizer.id_to_token(eos)
    raw, _, _ = complete(client, served_model.name, temperature=0, logit_bias=bias, max_tokens=4,
                         extra_body={"skip_special_tokens": False})
    assert raw == eos_text * 4
    # min_tokens: eos is hidden until 3 tokens exist
    _, ids, choice = complete(client, served_model.name, temperature=0, logit_bias=bias,
                              extra_body={"ignore_eos": False, "min_tokens": 3})
    assert len(ids) == 4 and eos not in ids[:3] and ids[3] == eos
    assert choice.finish_reason == "stop"
