"""The sliding window bounds the KV cache of local layers, not only their mask.

Gemma's local layers keep their KV in their own pool (`engine/window_blocks.py`): a
sequence holds at most ceil(window / block_size) + 1 blocks there, however long its
context, and the cache is sized by that. Logits still equal transformers' through
prefill, decode and prefix-cache hits. Clauses: contracts/model-families.md (WINDOW-*).
"""

import pytest
import torch
import transformers

from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams
from triolm.engine.window_blocks import WindowBlocks
from triolm.formats.safetensors_loader import read_safetensors
from triolm.model.build import build_model

TOLERANCE = 1e-4
BLOCK = 4  # window 8 spans several blocks


@pytest.fixture(scope="module")
def gemma3(tiny_model):
    paths = tiny_model("gemma3")
    model = build_model(paths.config, read_safetensors(paths.hf_dir))
    hf = transformers.AutoModelForCausalLM.from_pretrained(paths.hf_dir, dtype=torch.float32).eval()
    return paths.config, model, hf


def prompt(vocab, n, seed=1):
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(engine, requests, on_step=None):
    """requests: {id: (prompt, max_tokens)} -> per id (logits rows, tokens, cached prompt tokens)."""
    rows, tokens, cached = {r: [] for r in requests}, {r: [] for r in requests}, {}
    inner = engine.runner.run

    def recording(seqs, is_prefill):
        if is_prefill:
            cached.update({s.request_id: s.num_cached_tokens for s in seqs})
        out = inner(seqs, is_prefill)
        for i, s in enumerate(seqs):
            rows[s.request_id].append(out[i].clone())
        return out

    engine.runner.run = recording
    for rid, (ids, steps) in requests.items():
        engine.add_request(rid, ids, SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True))
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id].append(out.token_id)
        if on_step is not None:
            on_step(engine)
    engine.runner.run = inner
    return {r: (torch.stack(rows[r]), tokens[r], cached[r]) for r in requests}


def assert_matches(hf, ids, logits, tokens):
    with torch.no_grad():
        ref = hf(torch.tensor([ids + tokens[:-1]])).logits[0, len(ids) - 1:]
    diff = (logits - ref).abs().max().item()
    assert diff <= TOLERANCE, f"max |logit diff| {diff}"


def test_window_1_local_layers_hold_at_most_the_window(gemma3):
    """WINDOW-1: while three sequences decode far past the window, each holds at most
    ceil(8 / 4) + 1 = 3 local blocks; logits equal transformers' throughout."""
    config, model, hf = gemma3
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=3, max_model_len=256, block_size=BLOCK))
    pool = engine.block_manager.window
    limit = WindowBlocks.blocks_per_sequence(config.sliding_window, BLOCK)
    assert limit == 3
    held = []

    def check(engine):
        for seq in engine.scheduler.running:
            held.append(sum(b >= 0 for b in seq.window_table))
            assert held[-1] <= limit, (seq.request_id, len(seq), seq.window_table)
        assert pool.num_used <= limit * len(engine.scheduler.running)

    requests = {f"r{n}": (prompt(config.vocab_size, n, seed=n), 24) for n in (70, 41, 9)}
    results = run(engine, requests, check)
    assert max(held) == limit  # the bound is reached, not trivially met
    for rid, (ids, _) in requests.items():
        logits, tokens, _ = results[rid]
        assert_matches(hf, ids, logits, tokens)
    assert pool.num_used == 0 and engine.block_manager.num_used == 0  # all released


def test_window_2_cache_bytes_scale_with_the_window_not_the_context(gemma3):
    """WINDOW-2: local layers' cache is sized by the window; only global layers grow
    with max_model_len."""
    config, model, _ = gemma3
    local = sum(config.is_sliding(i) for i in range(config.num_hidden_layers))
    token_bytes = 2 * config.num_key_value_heads * config.head_dim * 4
    sizes = {}
    for max_len in (256, 2048):
        engine = LLMEngine(model, (), EngineConfig(max_num_seqs=4, max_model_len=max_len, block_size=BLOCK))
        window_slots = (2 * 3 * 4 + 1) * BLOCK  # two windows per sequence, plus the scratch block
        global_slots = 4 * max_len
        assert engine.runner.kv_cache_bytes == token_bytes * (
            local * window_slots + (config.num_hidden_layers - local) * global_slots)
        sizes[max_len] = engine.runner.kv_cache_bytes
    every_layer_full = config.num_hidden_layers * token_bytes * 4 * 2048
    assert sizes[2048] < every_layer_full / 4
    assert sizes[2048] - sizes[256] == (config.num_hidden_layers - local) * token_bytes * 4 * (2048 - 256)


def test_window_3_prefix_hit_counts_only_with_its_window_in_the_pool(gemma3):
    """WINDOW-3: a prefix hit whose window blocks the local pool still holds is taken;
    one whose window blocks were never stored (they lay before the prompt's own
    window) shrinks to none. Both give transformers' logits."""
    config, model, hf = gemma3
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=1, max_model_len=256, block_size=BLOCK))
    base = prompt(config.vocab_size, 70)
    run(engine, {"first": (base, 1)})
    results = run(engine, {"extends": (base + [5, 6, 7], 4)})
    logits, tokens, cached = results["extends"]
    assert cached == 68  # every full block of `base`, the window read from the local pool
    assert_matches(hf, base + [5, 6, 7], logits, tokens)
    # shares only 64 tokens: the local blocks before position 64 were never stored
    other = base[:64] + prompt(config.vocab_size, 10, seed=9)
    results = run(engine, {"diverges": (other, 4)})
    logits, tokens, cached = results["diverges"]
    assert cached == 0
    assert_matches(hf, other, logits, tokens)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_window_4_gemma_decode_step_is_one_native_call(tiny_model, monkeypatch, arch):
    """WINDOW-4: a Gemma decode step (sliding windows, soft-caps, both RoPE tables, the
    window pool) runs as one native call: no per-layer Python; its logits equal
    transformers' (the torch path's oracle)."""
    from triolm.kernels import native
    from triolm.model.gemma import GemmaLayer

    if not native.available():
        pytest.skip("native kernels unavailable on this machine")
    paths = tiny_model(arch)
    model = build_model(paths.config, read_safetensors(paths.hf_dir))
    assert model.native_decode
    calls = {"prefill": 0, "decode": 0}
    layer_forward = GemmaLayer.forward

    def counting(self, x, positions, cache_k, cache_v, meta):
        calls["prefill" if meta.is_prefill else "decode"] += 1
        return layer_forward(self, x, positions, cache_k, cache_v, meta)

    monkeypatch.setattr(GemmaLayer, "forward", counting)
    engine = LLMEngine(model, (), EngineConfig(max_num_seqs=2, max_model_len=256, block_size=BLOCK))
    ids = prompt(paths.config.vocab_size, 70)
    results = run(engine, {"a": (ids, 17), "b": (prompt(paths.config.vocab_size, 30, seed=3), 17)})
    assert calls == {"prefill": paths.config.num_hidden_layers, "decode": 0}
    hf = transformers.AutoModelForCausalLM.from_pretrained(paths.hf_dir, dtype=torch.float32).eval()
    logits, tokens, _ = results["a"]
    assert_matches(hf, ids, logits, tokens)
