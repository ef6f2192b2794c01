"""vLLM's `return_token_ids`: the prompt's token ids and each choice's generated ids, in
responses and streams, through the official `openai` client (extra_body) on a real server.

Clause ids (OAI-TOKIDS-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

MSGS = [{"role": "user", "content": "Tell me a story about a cat"}]


def _logprob_ids(content) -> list[int]:
    """Token ids as named by return_tokens_as_token_ids ("token_id:N")."""
    return [int(t.token.split(":", 1)[1]) for t in content]


def test_OAI_TOKIDS_001_chat_returns_prompt_and_output_ids(client, http, served_model):
    r = client.chat.completions.create(
        model=served_model.name, messages=MSGS, max_tokens=6, n=2, seed=3, logprobs=True,
        extra_body={"ignore_eos": True, "return_token_ids": True, "return_tokens_as_token_ids": True})
    assert r.prompt_token_ids == http.post("/tokenize", json={"messages": MSGS}).json()["tokens"]
    for choice in r.choices:
        assert choice.token_ids == _logprob_ids(choice.logprobs.content)
        assert len(choice.token_ids) == 6
    assert r.usage.completion_tokens == sum(len(c.token_ids) for c in r.choices)


def test_OAI_TOKIDS_001_chat_without_the_flag_has_no_ids(http, served_model):
    r = http.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2}).json()
    assert "prompt_token_ids" not in r and "token_ids" not in r["choices"][0]


def test_OAI_TOKIDS_002_chat_stream_ids_add_up_to_the_response(client, served_model):
    kwargs = dict(model=served_model.name, messages=MSGS, max_tokens=8, n=2, seed=5, temperature=1.0)
    body = {"ignore_eos": True, "return_token_ids": True}
    full = client.chat.completions.create(**kwargs, extra_body=body)
    streamed: dict[int, list[int]] = {0: [], 1: []}
    prompt_ids = []
    for chunk in client.chat.completions.create(**kwargs, stream=True, extra_body=body):
        if chunk.model_extra.get("prompt_token_ids") is not None:
            prompt_ids.append(chunk.prompt_token_ids)
        for c in chunk.choices:
            streamed[c.index] += c.token_ids
    assert prompt_ids == [full.prompt_token_ids] * 2  # on each choice's role chunk
    assert streamed == {c.index: c.token_ids for c in full.choices}
    assert all(len(ids) == 8 for ids in streamed.values())


def test_OAI_TOKIDS_003_completion_ids_per_choice(client, served_model):
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    r = client.completions.create(model=served_model.name, prompt=prompts, max_tokens=4, logprobs=0,
                                  extra_body={"ignore_eos": True, "return_token_ids": True,
                                              "return_tokens_as_token_ids": True})
    assert [c.prompt_token_ids for c in r.choices] == prompts
    for c in r.choices:
        assert c.token_ids == [int(t.split(":", 1)[1]) for t in c.logprobs.tokens]
        assert len(c.token_ids) == 4


def test_OAI_TOKIDS_004_completion_stream_ids_add_up_to_the_response(client, served_model):
    kwargs = dict(model=served_model.name, prompt=["Once upon", "A cat"], max_tokens=7, seed=9, n=2,
                  temperature=1.0, echo=True)
    body = {"ignore_eos": True, "return_token_ids": True}
    full = client.completions.create(**kwargs, extra_body=body)
    streamed: dict[int, list[int]] = {}
    prompt_ids: dict[int, list[list[int]]] = {}
    for chunk in client.completions.create(**kwargs, stream=True, extra_body=body):
        for c in chunk.choices:
            if c.model_extra.get("prompt_token_ids") is not None:
                prompt_ids.setdefault(c.index, []).append(c.prompt_token_ids)
            streamed.setdefault(c.index, []).extend(c.token_ids)
    # the prompt's ids once per choice, on its first chunk
    assert prompt_ids == {c.index: [c.prompt_token_ids] for c in full.choices}
    assert streamed == {c.index: c.token_ids for c in full.choices}
    assert all(len(ids) == 7 for ids in streamed.values())
