"""Continuous batching, prefix caching, abort and preemption give the same tokens as
running each sequence alone, and free what they hold."""

import pytest
import torch

from triolm.engine.llm_engine import EngineConfig, LLMEngine, generate_greedy
from triolm.engine.sampling_params import SamplingParams
from triolm.formats.hf_config import read_hf_config
from triolm.formats.safetensors_loader import read_safetensors
from triolm.model.llama import LlamaModel


@pytest.fixture(scope="module")
def model(tiny_model):
    paths = tiny_model("llama")
    return LlamaModel(read_hf_config(paths.hf_dir), read_safetensors(paths.hf_dir))


def prompts(n, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 80, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lengths]


def test_batched_greedy_equals_one_at_a_time(model):
    ps = prompts(8, model.config.vocab_size)
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=8, max_model_len=256))
    batched = generate_greedy(engine, ps, 20)
    single = [generate_greedy(LLMEngine(model, (), EngineConfig(max_num_seqs=1, max_model_len=256)), [p], 20)[0]
              for p in ps]
    assert batched == single


def test_prefix_cached_run_equals_uncached_run(model):
    p = prompts(1, model.config.vocab_size, seed=3)[0] + list(range(100, 140))
    cold = generate_greedy(LLMEngine(model, (), EngineConfig(max_model_len=256)), [p], 12)[0]
    engine = LLMEngine(model, (), EngineConfig(max_model_len=256))
    generate_greedy(engine, [p[:50]], 4)  # leaves p's first 3 blocks in the cache
    engine.add_request("warm", p, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert outs[0].num_cached_prompt_tokens == 48
    assert outs[0].num_prefilled_tokens == len(p) - 48
    assert [o.token_id for o in outs] == cold


def test_follow_up_turn_reuses_generated_tokens(model):
    """A multi-turn follow-up (prompt = previous prompt + its output + more) hits the cache
    for the generated part too."""
    engine = LLMEngine(model, (), EngineConfig(max_model_len=256))
    first = list(range(10, 42))
    out = generate_greedy(engine, [first], 40)[0]
    follow = first + out + [7, 8, 9]
    engine.add_request("f", follow, SamplingParams(temperature=0, max_tokens=1))
    step = engine.step()[0]
    assert step.num_cached_prompt_tokens == (len(first) + 40) // 16 * 16


def test_abort_frees_cache_before_next_step(model):
    engine = LLMEngine(model, (), EngineConfig(max_model_len=256))
    for i, p in enumerate(prompts(3, model.config.vocab_size)):
        engine.add_request(f"r{i}", p, SamplingParams(max_tokens=100, ignore_eos=True))
    engine.step()
    engine.step()
    used = engine.block_manager.num_used
    assert used > 0 and engine.num_running == 3
    assert engine.abort("r1")
    assert engine.num_running == 2 and engine.block_manager.num_used < used
    engine.abort("r0")
    engine.abort("r2")
    assert engine.kv_cache_usage == 0.0 and not engine.has_unfinished()
    assert not engine.abort("r0")


def test_full_cache_preempts_and_recomputes_without_changing_tokens(model):
    ps = prompts(6, model.config.vocab_size, seed=5)
    roomy = generate_greedy(LLMEngine(model, (), EngineConfig(max_num_seqs=6, max_model_len=256)), ps, 40)
    c = model.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4
    tight = LLMEngine(model, (), EngineConfig(max_num_seqs=6, max_model_len=256,
                                              kv_cache_bytes=per_token * 16 * 20))
    assert tight.block_manager.num_blocks == 20  # far less than 6 sequences × 120 tokens need
    assert generate_greedy(tight, ps, 40) == roomy
    assert tight.kv_cache_usage == 0.0


def test_prompt_beyond_context_is_refused(model):
    engine = LLMEngine(model, (), EngineConfig(max_model_len=64))
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request("long", list(range(3, 80)), SamplingParams())
    assert not engine.has_unfinished()


def test_length_limit_by_max_model_len(model):
    engine = LLMEngine(model, (), EngineConfig(max_model_len=40))
    engine.add_request("r", list(range(3, 33)), SamplingParams(max_tokens=1000, ignore_eos=True))
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert len(outs) == 10 and outs[-1].finish.kind == "length"
