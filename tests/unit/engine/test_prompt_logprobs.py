"""Log-probabilities of the prompt's own tokens, computed in the prefill (the engine on the
tiny qwen2 model), checked against teacher-forced decoding; prefix caching loses none.

Clause ids (OAI-PLOGPROBS-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

import torch

from support.forced_decode import forced_logits
from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams

PROMPT = list(range(40, 77))  # 37 tokens: two full 16-token blocks and a tail


def _run(engine: LLMEngine, request_id: str, prompt: list[int], prompt_logprobs: int | None):
    engine.add_request(request_id, prompt, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True,
                                                          prompt_logprobs=prompt_logprobs))
    outputs = []
    with torch.inference_mode():
        while engine.has_unfinished():
            outputs += [o for o in engine.step() if o.request_id == request_id]
    return outputs


def reference_logprobs(served_model, prompt: list[int]) -> torch.Tensor:
    """log_softmax rows predicting prompt[1:], teacher-forced through the decode path (a
    computation independent of the prefill that serves prompt_logprobs)."""
    engine = LLMEngine(served_model.model, (), EngineConfig(max_num_seqs=2, max_model_len=256))
    logits = forced_logits(engine, [prompt[:1]], [prompt[1:-1]])[0]
    return torch.log_softmax(logits, dim=-1)


def test_OAI_PLOGPROBS_001_engine_prompt_logprobs_equal_teacher_forced(served_model):
    engine = LLMEngine(served_model.model, (), EngineConfig(max_num_seqs=2, max_model_len=256))
    first = _run(engine, "a", PROMPT, 3)[0]
    got = first.prompt_logprobs
    assert [p.token_id for p in got] == PROMPT[1:]
    ref = reference_logprobs(served_model, PROMPT)
    want = ref[torch.arange(len(PROMPT) - 1), torch.tensor(PROMPT[1:])]
    assert torch.allclose(torch.tensor([p.logprob for p in got]), want, atol=1e-4)
    for row, p in enumerate(got):
        assert p.rank >= 1 and (p.rank == 1) == (p.top_logprobs[0][0] == p.token_id)
        assert [i for i, _ in p.top_logprobs] == torch.topk(ref[row], 3).indices.tolist()


def test_OAI_PLOGPROBS_002_cached_prefix_does_not_lose_prompt_logprobs(served_model):
    """A prompt whose blocks are in the prefix cache is prefilled whole when its
    log-probabilities are asked for; a plain request still reads the cache."""
    engine = LLMEngine(served_model.model, (), EngineConfig(max_num_seqs=2, max_model_len=256))
    plain = _run(engine, "warm", PROMPT, None)[0]
    assert plain.prompt_logprobs is None
    again = _run(engine, "again", PROMPT, 0)[0]
    assert again.num_cached_prompt_tokens == 0
    assert len(again.prompt_logprobs) == len(PROMPT) - 1
    cold = _run(LLMEngine(served_model.model, (), EngineConfig(max_num_seqs=2, max_model_len=256)),
                "cold", PROMPT, 0)[0]
    assert [p.logprob for p in again.prompt_logprobs] == [p.logprob for p in cold.prompt_logprobs]
    assert _run(engine, "cached", PROMPT, None)[0].num_cached_prompt_tokens == 32
